"""The demo a new user runs: it answers end to end and leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from stack.process import pid_alive


def _stack_children(pid: int) -> list[int]:
    """Pids of processes whose parent is `pid` (the servers the demo started)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_demo_smoke_exits_zero_with_a_summary() -> None:
    try:
        proc = subprocess.run([sys.executable, "-m", "cascade.cli", "demo", "--smoke"], capture_output=True, text=True,
                              timeout=240)
    except subprocess.TimeoutExpired as exc:  # say where it stopped (it takes ~45 s; once, in a full run, it hung)
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"demo --smoke still running after 240 s; its last output:\n{err[-3000:]}") from None
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("demo ok") and "health SERVING" in last


def test_demo_ctrl_c_shuts_down_and_stops_its_servers() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", "demo"], stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "press Ctrl-C" in line or not line:
                break
        assert any("press Ctrl-C" in line for line in lines), "".join(lines)
        children = _stack_children(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130)
        assert "stopped cleanly" in proc.stderr.read()
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in children)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
