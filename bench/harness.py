"""Run a benchmark, record it in BENCHMARKS.md, print its figures as one JSON line.

`main(argv)` backs `./run bench NAME [--quick]` / `python -m bench NAME [--quick]`.
Stdout carries exactly one line, the last one: ``json.dumps(result)``. Progress,
logs and anything a benchmark or its libraries print go to stderr (stdout is
redirected to stderr, at the file-descriptor level too, while a benchmark runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.machine import BUSY_WARN_PCT, OtherLoad, is_busy, machine_info
from bench.registry import UnknownBenchmark, available, register, resolve
from bench.report import append_report, latest_result
from bench.stats import percentiles, rate
from cascade.config import Config, get_config

__all__ = ["available", "baseline_figures", "command_line", "main", "percentiles", "rate", "ratio", "register",
           "run_benchmark", "step"]

_t0: float | None = None
_current: str = "bench"


def step(message: str) -> None:
    """A progress line on stderr, stamped with the seconds since the benchmark started."""
    elapsed = time.monotonic() - _t0 if _t0 is not None else 0.0
    print(f"[{_current} {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def command_line(name: str, quick: bool) -> str:
    return f"./run bench {name}{' --quick' if quick else ''}"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr for the duration: Python-level writes and, when possible, fd 1 (child processes, C code)."""
    sys.stdout.flush()
    saved_fd: int | None = None
    try:
        out_fd, err_fd = sys.__stdout__.fileno(), sys.__stderr__.fileno()  # type: ignore[union-attr]
        saved_fd = os.dup(out_fd)
        os.dup2(err_fd, out_fd)
    except (AttributeError, OSError, ValueError):
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved_fd is not None:
            os.dup2(saved_fd, sys.__stdout__.fileno())  # type: ignore[union-attr]
            os.close(saved_fd)


def _jsonable(value: Any) -> Any:
    """Plain JSON: numpy/torch scalars to Python numbers, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def run_benchmark(name: str, quick: bool, *, config: Config | None = None,
                  benchmarks_file: Path | str | None = None, write_report: bool = True) -> dict[str, Any]:
    """Run benchmark `name`, append its section to BENCHMARKS.md and print its JSON line last on stdout.

    `benchmarks_file` defaults to `config.paths.benchmarks_file`. Raises
    `UnknownBenchmark` for a name not in the registry; a benchmark's own
    exception propagates (nothing is written then).
    """
    global _t0, _current
    fn = resolve(name)
    config = config or get_config()
    path = Path(benchmarks_file) if benchmarks_file is not None else config.paths.benchmarks_file
    started = datetime.now(timezone.utc)
    _t0, _current = time.monotonic(), f"bench {name}"
    try:
        with _stdout_to_stderr():
            step(f"start ({'quick' if quick else 'full'}) at {started:%Y-%m-%d %H:%M:%S} UTC")
            machine = machine_info()
            if is_busy(machine):
                step(f"warning: the machine is {machine['busy_pct_before']}% busy with other work before start; "
                     "figures will be lower bounds")
            others = OtherLoad().start()
            figures = fn(quick, config)
            machine["others_busy_pct_during"] = others.stop()
            if not isinstance(figures, dict):
                raise TypeError(f"benchmark {name} returned {type(figures).__name__}, not a dict")
            duration = time.monotonic() - _t0
            if (machine.get("others_busy_pct_during") or 0.0) >= BUSY_WARN_PCT:
                step(f"warning: other processes used {machine['others_busy_pct_during']}% of CPU during the run")
            clash = {"bench", "quick", "machine", "utc", "duration_s"} & set(figures)
            if clash:
                step(f"warning: the harness's own keys override the benchmark's {sorted(clash)}")
            result: dict[str, Any] = _jsonable({
                "bench": name,
                "quick": bool(quick),
                **figures,
                "utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "duration_s": round(duration, 2),
                "machine": machine,
            })
            if write_report:
                append_report(result, path, command_line(name, quick))
                step(f"done in {duration:.1f}s; appended to {path}")
            else:
                step(f"done in {duration:.1f}s")
    finally:
        _t0, _current = None, "bench"
    print(json.dumps(result), flush=True)
    return result


def baseline_figures(config: Config | None = None, benchmarks_file: Path | str | None = None) -> dict[str, Any] | None:
    """The newest `baseline` result recorded on this kind of machine (a full run if any, else a quick one).

    What later benchmarks divide by: ``ratio(my_rows_per_s, base["redis_mset_rows_per_s"])``.
    None when no baseline was recorded here yet (run ``./run bench baseline``).
    """
    config = config or get_config()
    path = Path(benchmarks_file) if benchmarks_file is not None else config.paths.benchmarks_file
    here = machine_info(busy_sample_s=0)
    return (latest_result("baseline", path, machine=here, quick=False)
            or latest_result("baseline", path, machine=here, quick=True))


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """value / ceiling, or None when either is missing or the ceiling is not positive."""
    if value is None or ceiling is None or not ceiling > 0:
        return None
    return float(value) / float(ceiling)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade bench", description="Run a benchmark and append it to BENCHMARKS.md.")
    p.add_argument("name", nargs="?", help="benchmark to run (see --list)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke check, not a claim")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--output", type=Path, default=None, metavar="FILE",
                   help="markdown file to append to (default: config paths.benchmarks_file, BENCHMARKS.md)")
    p.add_argument("--no-report", action="store_true", help="print the JSON line but do not append to the file")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 on success, 1 when the benchmark fails, 2 on usage errors (unknown name)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.list:
        print("\n".join(available()))
        return 0
    if not args.name:
        print(f"usage: cascade bench NAME [--quick]; available: {', '.join(available())}", file=sys.stderr)
        return 2
    try:
        run_benchmark(args.name, args.quick, benchmarks_file=args.output, write_report=not args.no_report)
    except UnknownBenchmark as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a failed benchmark is reported, not a traceback dump only
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"error: benchmark {args.name} failed: {exc}", file=sys.stderr)
        return 1
    return 0
