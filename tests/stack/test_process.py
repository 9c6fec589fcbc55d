"""Processes the stack starts die with their owner, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from stack.process import pid_alive


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def _spawn_owner(tmp_path, body: str) -> tuple[subprocess.Popen, list[int]]:
    script = textwrap.dedent(
        f"""
        import sys, time
        from stack import Stack
        s = Stack().start()
        print(" ".join(map(str, s.pids)), flush=True)
        {body}
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd(), text=True)
    line = owner.stdout.readline()
    return owner, [int(p) for p in line.split()]


def test_sigkilled_owner_takes_its_servers_along(tmp_path) -> None:
    owner, pids = _spawn_owner(tmp_path, "time.sleep(60)")
    try:
        if not pids:  # external servers configured: nothing of ours to check
            return
        assert all(pid_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert all(_wait_gone(p) for p in pids), "children outlived a SIGKILLed owner"
    finally:
        owner.kill()


def test_ctrl_c_stops_servers_cleanly(tmp_path) -> None:
    owner, pids = _spawn_owner(tmp_path, "\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    s.stop(); sys.exit(0)")
    try:
        if not pids:
            return
        owner.send_signal(signal.SIGINT)
        assert owner.wait(timeout=20) == 0
        assert all(_wait_gone(p, 1.0) for p in pids)
    finally:
        owner.kill()


def test_a_taken_port_is_retried_with_another(tmp_path, monkeypatch) -> None:
    import socket

    from stack import process
    from stack.redis_server import EmbeddedRedis

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    ports = iter([taken])
    real_free_port = process.free_port
    monkeypatch.setattr(process, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
    server = EmbeddedRedis(tmp_path).start()
    try:
        assert server.port != taken
    finally:
        server.stop()
        blocker.close()
