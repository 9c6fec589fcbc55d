"""Child processes that never outlive their owner.

Each server the stack starts runs in its own session (so a terminal's Ctrl-C
reaches only the owner, which then stops it in order) and carries
PR_SET_PDEATHSIG, so the kernel kills it if the owner dies without cleaning up
(SIGKILL, crash). Stopping is by pid: SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec hook: ask Linux to SIGKILL the child when its parent exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it, so two stacks never collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] != b"Z"
    except OSError:
        return False


class PortInUse(RuntimeError):
    """The server exited at start because its port was taken in the meantime."""


def start_on_free_port(start: Callable[[int], None], host: str = "127.0.0.1", attempts: int = 5) -> int:
    """Call start(port) with fresh free ports until it does not lose the race for one."""
    for attempt in range(attempts):
        port = free_port(host)
        try:
            start(port)
            return port
        except PortInUse:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class ManagedProcess:
    """One server binary started by the stack, with its log file and pid file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, pid_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.pid_path = pid_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.write_text(str(self._proc.pid))

    def exited(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return self._proc.poll() if self._proc else None

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `probe` until it is true; fail fast if the process died, with its log tail."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                self.pid_path.unlink(missing_ok=True)
                if "in use" in self.log_tail().lower():
                    raise PortInUse(f"{self.name}: {self.log_tail(3)}")
                raise RuntimeError(f"{self.name} exited with code {code} before becoming ready:\n{self.log_tail()}")
            try:
                if probe():
                    return
            except Exception:  # noqa: BLE001 - any failure of the probe means "not ready yet"
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        self.stop()
        raise TimeoutError(f"{self.name} not ready ({what}) after {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL; always reaps and removes the pid file."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=grace_s)
            except ProcessLookupError:
                pass
        self.pid_path.unlink(missing_ok=True)
