"""Run a load test in worker processes and merge what they measured into one :class:`LoadReport`.

Every run, even with ``processes=1``, uses spawned workers: the generator then
never shares a GIL with the caller (a bench may host the server under test in
its own process) and one process's numbers mean the same as four's. Workers
connect first, then all start on one wall-clock instant chosen by the parent.

The calls block until the run is over. From async code that hosts the server
under test in its own event loop, run them off the loop:
``report = await asyncio.to_thread(run_open_loop, address, rate, duration_s)``.
A custom request factory must be picklable by reference: a module-level
function or class in an importable module (spawned workers import it), and a
script that calls these needs the ``if __name__ == "__main__":`` guard.

One worker process sends a few thousand calls/s at most (~220 us of client
CPU per call measured on the test stub); watch ``client_lag`` in the report
and add processes when it grows.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from cascade.config import Config, get_config
from loadtest.report import LoadReport, RunSettings, build_report
from loadtest.requests import FeedRequestFactory, RequestFactory
from loadtest.samples import merge
from loadtest.worker import (
    ARRIVALS,
    SLOT_DROPPED,
    SLOT_ERRORS,
    SLOT_IN_FLIGHT,
    SLOT_OK,
    SLOTS,
    WorkerResult,
    WorkerSpec,
    worker_main,
)

Progress = Callable[[str], None]

DEFAULT_MAX_IN_FLIGHT = 1000
"""Outstanding calls allowed over all processes before due requests are dropped (open loop)."""
DEFAULT_USERS = 1000

# Lead between "everyone is connected" and the common start, so every worker gets
# the start message before its first request is due.
_START_LEAD_S = 0.1
_PROGRESS_EVERY_S = 1.0


class LoadTestError(RuntimeError):
    """A worker could not run (connection refused, crashed); the message says which and why."""


def _default_factory() -> RequestFactory:
    return FeedRequestFactory.numbered(DEFAULT_USERS)


def _split(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def run_open_loop(target: str, rate: float, duration_s: float, *, processes: int = 1, warmup_s: float = 0.0,
                  arrival: str = "uniform", max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                  timeout_s: float | None = None, factory: RequestFactory | None = None, seed: int = 0,
                  connect_timeout_s: float | None = None, config: Config | None = None,
                  progress: Progress | None = None) -> LoadReport:
    """Send GetFeed at a fixed arrival ``rate`` (req/s, all processes together) for ``duration_s`` after ``warmup_s``.

    ``arrival``: "uniform" (request k due at k / rate) or "poisson". Latency is
    measured from each request's due time. ``timeout_s`` is the per-call deadline
    (default ``grpc.default_deadline_s``); ``connect_timeout_s`` bounds the initial
    connection (same default). ``progress`` receives one line per second.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {ARRIVALS}, got {arrival!r}")
    if max_in_flight < processes:
        raise ValueError(f"max_in_flight ({max_in_flight}) must be >= processes ({processes})")
    settings = RunSettings(mode="open", target=target, duration_s=duration_s, warmup_s=warmup_s, processes=processes,
                           rate=rate, arrival=arrival, max_in_flight=max_in_flight, timeout_s=timeout_s)
    return _run(settings, factory, seed, connect_timeout_s, config, progress,
                lambda i: {"rate": rate, "arrival": arrival, "max_in_flight": _split(max_in_flight, processes, i)})


def run_closed_loop(target: str, clients: int, duration_s: float, *, processes: int = 1, warmup_s: float = 0.0,
                    think_time_s: float = 0.0, timeout_s: float | None = None, factory: RequestFactory | None = None,
                    seed: int = 0, connect_timeout_s: float | None = None, config: Config | None = None,
                    progress: Progress | None = None) -> LoadReport:
    """``clients`` concurrent callers (split over ``processes``), each: send GetFeed, await, think, repeat."""
    if clients < processes:
        raise ValueError(f"clients ({clients}) must be >= processes ({processes})")
    if think_time_s < 0:
        raise ValueError(f"think_time_s must be >= 0, got {think_time_s}")
    settings = RunSettings(mode="closed", target=target, duration_s=duration_s, warmup_s=warmup_s, processes=processes,
                           clients=clients, think_time_s=think_time_s, timeout_s=timeout_s)
    return _run(settings, factory, seed, connect_timeout_s, config, progress,
                lambda i: {"clients": _split(clients, processes, i), "think_time_s": think_time_s})


def _run(settings: RunSettings, factory: RequestFactory | None, seed: int, connect_timeout_s: float | None,
         config: Config | None, progress: Progress | None, per_worker: Callable[[int], dict[str, Any]]) -> LoadReport:
    if settings.processes < 1:
        raise ValueError(f"processes must be >= 1, got {settings.processes}")
    if not settings.duration_s > 0 or settings.warmup_s < 0:
        raise ValueError(f"need duration_s > 0 and warmup_s >= 0, got {settings.duration_s}, {settings.warmup_s}")
    grpc_config = (config or get_config()).grpc
    specs = [
        WorkerSpec(index=i, processes=settings.processes, mode=settings.mode, target=settings.target, grpc=grpc_config,
                   duration_s=settings.duration_s, warmup_s=settings.warmup_s, factory=factory or _default_factory(),
                   seed=seed, timeout_s=settings.timeout_s,
                   connect_timeout_s=connect_timeout_s if connect_timeout_s is not None else grpc_config.default_deadline_s,
                   **per_worker(i))
        for i in range(settings.processes)
    ]
    started = time.monotonic()
    t0, results = _run_workers(specs, settings, progress)
    parts = [r.samples for r in results]
    messages: dict[str, str] = {}
    for r in results:
        for code, msg in r.error_messages.items():
            messages.setdefault(code, msg)
    return build_report(merge(parts), settings, processes_samples=parts, error_messages=messages,
                        started_at=datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        wall_s=time.monotonic() - started)


def _receive(conn: mpc.Connection, index: int) -> tuple[str, Any]:
    try:
        kind, payload = conn.recv()
    except EOFError:
        raise LoadTestError(f"worker {index} exited without a result") from None
    if kind == "error":
        raise LoadTestError(str(payload))
    return kind, payload


def _run_workers(specs: list[WorkerSpec], settings: RunSettings,
                 progress: Progress | None) -> tuple[float, list[WorkerResult]]:
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", len(specs) * SLOTS, lock=False)
    procs: list[Any] = []
    conns: dict[mpc.Connection, int] = {}
    try:
        for spec in specs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, child_end, counters), daemon=True,
                               name=f"loadtest-{spec.index}")
            proc.start()
            child_end.close()
            procs.append(proc)
            conns[parent_end] = spec.index
        waiting = dict(conns)
        while waiting:  # every worker connected (or one failed: then stop the others at once)
            for conn in mpc.wait(list(waiting)):
                _receive(conn, waiting.pop(conn))  # type: ignore[arg-type]
        t0 = time.time() + _START_LEAD_S
        for conn in conns:
            conn.send(("start", t0))
        results: dict[int, WorkerResult] = {}
        waiting = dict(conns)
        ticker = _Ticker(settings, counters, len(specs), t0, progress)
        while waiting:
            for conn in mpc.wait(list(waiting), timeout=ticker.until_next()):
                index = waiting.pop(conn)  # type: ignore[index]
                _, result = _receive(conn, index)  # type: ignore[arg-type]
                results[index] = result
            ticker.maybe_tick()
        ticker.done()
        return t0, [results[i] for i in sorted(results)]
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


class _Ticker:
    """A progress line per second from the workers' live counters (warm-up included)."""

    def __init__(self, settings: RunSettings, counters: Any, workers: int, t0: float, progress: Progress | None) -> None:
        self.s, self.counters, self.workers, self.t0, self.progress = settings, counters, workers, t0, progress
        self.next = t0 + _PROGRESS_EVERY_S
        self.last = (t0, 0)
        self.total_s = settings.warmup_s + settings.duration_s

    def until_next(self) -> float | None:
        return None if self.progress is None else max(0.0, self.next - time.time())

    def _sum(self, slot: int) -> int:
        return sum(self.counters[i * SLOTS + slot] for i in range(self.workers))

    def _line(self, now: float, phase: str | None = None) -> str:
        ok, err, drop, fly = (self._sum(x) for x in (SLOT_OK, SLOT_ERRORS, SLOT_DROPPED, SLOT_IN_FLIGHT))
        then, answered_then = self.last
        rate = (ok + err - answered_then) / max(now - then, 1e-9)
        self.last = (now, ok + err)
        elapsed = now - self.t0
        if phase is None:
            phase = "warm-up" if elapsed < self.s.warmup_s else "draining" if elapsed >= self.total_s else "measuring"
        return (f"[loadtest {self.s.mode} {min(elapsed, self.total_s):5.1f}/{self.total_s:g}s {phase}] "
                f"answered/s {rate:7.1f}  ok {ok}  errors {err}  dropped {drop}  in flight {fly}")

    def maybe_tick(self) -> None:
        now = time.time()
        if self.progress is None or now < self.next:
            return
        self.progress(self._line(now))
        while self.next <= now:
            self.next += _PROGRESS_EVERY_S

    def done(self) -> None:
        if self.progress is not None:
            self.progress(self._line(time.time(), "done"))
