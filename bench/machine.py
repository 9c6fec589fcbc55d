"""What machine a figure was measured on."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def _cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_gib(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_cpu_quota(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by a cgroup v2 quota, or None when unlimited/unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else round(int(quota) / int(period), 2)
    except (OSError, ValueError):
        return None


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken: just not reported
        return None


def _cpu_times(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies over all CPUs since boot, or None off Linux."""
    try:
        fields = [int(x) for x in stat.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


def cpu_busy_pct(interval_s: float = 0.5) -> float | None:
    """How busy the whole machine is (all processes, % of all CPUs) over the next `interval_s`."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(interval_s)
    after = _cpu_times()
    if after is None or after[1] == before[1]:
        return None
    return round(100.0 * (after[0] - before[0]) / (after[1] - before[1]), 1)


class OtherLoad:
    """CPU used by everything but this process and its reaped children, between start() and stop().

    Machine-wide busy time from /proc/stat minus our own `os.times()` (user+system,
    children included once waited for), as % of all CPUs over the wall time: what
    other work on a shared machine took from the benchmark.
    """

    def __init__(self) -> None:
        self._t0 = 0.0
        self._machine0: tuple[int, int] | None = None
        self._own0 = 0.0

    @staticmethod
    def _own_cpu_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> "OtherLoad":
        self._t0 = time.monotonic()
        self._machine0 = _cpu_times()
        self._own0 = self._own_cpu_s()
        return self

    def stop(self) -> float | None:
        after = _cpu_times()
        if self._machine0 is None or after is None:
            return None
        wall = time.monotonic() - self._t0
        if wall <= 0:
            return None
        machine_busy_s = (after[0] - self._machine0[0]) / os.sysconf("SC_CLK_TCK")
        others_s = max(0.0, machine_busy_s - (self._own_cpu_s() - self._own0))
        return round(100.0 * others_s / (wall * usable_cpus()), 1)


def load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, else cpu_count)."""
    return _affinity() or os.cpu_count() or 1


def machine_info(busy_sample_s: float = 0.5) -> dict[str, Any]:
    """Cores, CPU model, memory, software versions and how busy the machine was just before, JSON-ready.

    `busy_pct_before` samples /proc/stat for `busy_sample_s` (0 skips it): other
    work on a shared machine lowers every figure, so the report says so.
    """
    return {
        "load_1m_before": load_1m(),
        "busy_pct_before": cpu_busy_pct(busy_sample_s) if busy_sample_s > 0 else None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": _affinity(),
        "cgroup_cpu_quota": _cgroup_cpu_quota(),
        "cpu_model": _cpu_model(),
        "mem_total_gib": _mem_total_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": platform.python_version(),
        "python_impl": sys.implementation.name,
        "torch": _version("torch"),
        "numpy": _version("numpy"),
    }


def describe_machine(m: dict[str, Any]) -> str:
    """One line: '2 CPUs (affinity 2) · Intel Xeon · 23.5 GiB RAM · Linux 6.8 x86_64 · Python 3.11.7 · torch 2.13.0'."""
    cpus = f"{m.get('cpu_count')} CPUs (affinity {m.get('cpu_affinity')}"
    if m.get("cgroup_cpu_quota") is not None:
        cpus += f", cgroup quota {m['cgroup_cpu_quota']}"
    cpus += ")"
    parts = [cpus, str(m.get("cpu_model") or "unknown CPU")]
    if m.get("mem_total_gib") is not None:
        parts.append(f"{m['mem_total_gib']} GiB RAM")
    parts.append(f"{m.get('os')} {m.get('arch')}")
    parts.append(f"Python {m.get('python')}")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    if m.get("numpy"):
        parts.append(f"numpy {m['numpy']}")
    return " · ".join(parts)


def describe_load(m: dict[str, Any]) -> str | None:
    """'1-min load 2.3 before, 48% of CPU busy just before start, other processes used 12% of CPU during the run'."""
    bits = []
    if m.get("load_1m_before") is not None:
        bits.append(f"1-min load {m['load_1m_before']} before")
    if m.get("busy_pct_before") is not None:
        bits.append(f"{m['busy_pct_before']}% of CPU busy just before start")
    if m.get("others_busy_pct_during") is not None:
        bits.append(f"other processes used {m['others_busy_pct_during']}% of CPU during the run")
    return ", ".join(bits) or None


BUSY_WARN_PCT = 15.0


def is_busy(m: dict[str, Any]) -> bool:
    """Was other work using a noticeable share of the CPUs before or during the run?"""
    return max(m.get("busy_pct_before") or 0.0, m.get("others_busy_pct_during") or 0.0) >= BUSY_WARN_PCT
