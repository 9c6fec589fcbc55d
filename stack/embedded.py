"""One embedded server binary on a free loopback port: the shape Redis and Kafka share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from stack.process import ManagedProcess, start_on_free_port


class EmbeddedServer(ABC):
    """Start on a free port (retrying a lost port race), wait until ready, stop by pid."""

    name: str  # process and log-file name

    def __init__(self, run_dir: Path, startup_timeout_s: float, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.run_dir = run_dir
        self.startup_timeout_s = startup_timeout_s
        self._process: ManagedProcess | None = None

    @abstractmethod
    def argv(self, port: int) -> list[str]:
        """The command line that serves on `port`."""

    @abstractmethod
    def ready(self, process: ManagedProcess, port: int) -> bool:
        """True once the server on `port` answers."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _start_on(self, port: int) -> None:
        process = ManagedProcess(
            name=self.name,
            argv=self.argv(port),
            log_path=self.run_dir / f"{self.name}.log",
            pid_path=self.run_dir / f"{self.name}.pid",
            cwd=self.run_dir,
        )
        self._process = process
        process.start()
        process.wait_ready(lambda: self.ready(process, port), self.startup_timeout_s, f"{self.host}:{port}")

    def start(self) -> "EmbeddedServer":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = start_on_free_port(self._start_on, self.host)
        return self

    def stop(self) -> None:
        if self._process:
            self._process.stop()
