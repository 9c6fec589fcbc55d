"""One load-generating process: its own event loop, channel and share of the load.

Open loop (what wrk2 does): request k is *due* at ``t0 + k / rate`` (or at
Poisson arrival times) and is fired then without waiting for earlier answers;
its latency is measured from that due time, not from when it actually left,
so a stalled server (or a stalled generator) shows as queueing instead of
silently slowing the load down ("coordinated omission"). When ``max_in_flight``
calls are outstanding a due request is not sent and is recorded as DROPPED.

Closed loop: ``clients`` coroutines each send, wait for the answer, optionally
think, and repeat; latency is from the actual send.

Requests due during warm-up are sent but only counted, not recorded.
"""

from __future__ import annotations

import asyncio
import math
from array import array
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import numpy as np

from cascade.config import GrpcConfig
from loadtest.requests import RequestFactory
from loadtest.samples import CLIENT_ERROR, DROPPED, OK, Samples, code_name
from proto.cascade.v1 import feed_pb2_grpc
from serving.context import channel_options

ARRIVALS = ("uniform", "poisson")

# Live counters shared with the parent for progress lines, per worker: these slots.
SLOT_OK, SLOT_ERRORS, SLOT_DROPPED, SLOT_IN_FLIGHT = range(4)
SLOTS = 4

_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
# Calls still outstanding this long after their deadline (by default grpc.default_deadline_s)
# at the end of a run are cancelled and recorded as CANCELLED.
_DRAIN_GRACE_S = 1.0
_MAX_MESSAGE_CHARS = 300
# The event loop wakes ~0.7 ms after the requested time on average (epoll rounds its timeout
# up to whole ms); waking this much early centres the send-time error near zero instead.
# An early send is timed from when it actually left, so it never flatters latency.
_EARLY_S = 0.0005


@dataclass
class WorkerSpec:
    """One worker's share of a run; picklable so it crosses the spawn boundary.

    ``rate`` is the *total* arrival rate: with a uniform schedule worker ``index``
    of ``processes`` takes every ``processes``-th slot, so the merged arrivals are
    evenly spaced. ``clients`` and ``max_in_flight`` are this worker's own.
    """

    index: int
    processes: int
    mode: str
    target: str
    grpc: GrpcConfig
    duration_s: float
    warmup_s: float
    factory: RequestFactory
    seed: int
    timeout_s: float | None
    connect_timeout_s: float
    rate: float = 0.0
    arrival: str = "uniform"
    max_in_flight: int = 0
    clients: int = 0
    think_time_s: float = 0.0


@dataclass
class WorkerResult:
    index: int
    samples: Samples
    warmup_requests: int
    error_messages: dict[str, str] = field(default_factory=dict)


def schedule(spec: WorkerSpec) -> Iterator[tuple[float, bool]]:
    """This worker's due times (seconds after t0) and whether each falls in the measured window."""
    end = spec.warmup_s + spec.duration_s
    if spec.arrival == "uniform":
        n_total = math.ceil(end * spec.rate - 1e-9)
        n_warm = math.ceil(spec.warmup_s * spec.rate - 1e-9)
        for k in range(spec.index, n_total, spec.processes):
            yield k / spec.rate, k >= n_warm
        return
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    mean_gap = spec.processes / spec.rate
    t = 0.0
    while True:
        for gap in rng.exponential(mean_gap, 1024).tolist():
            t += gap
            if t >= end:
                return
            yield t, t >= spec.warmup_s


class _Worker:
    def __init__(self, spec: WorkerSpec, stub: Any, counters: Any, mono_t0: float) -> None:
        self.spec = spec
        self.stub = stub
        self.counters = counters
        self.base = spec.index * SLOTS
        self.t0 = mono_t0
        self.rng = np.random.default_rng([spec.seed, spec.index])
        self.in_flight = 0
        self.timeout_s = spec.timeout_s if spec.timeout_s is not None else spec.grpc.default_deadline_s
        self.warmup_requests = 0
        self.messages: dict[str, str] = {}
        # Typed arrays, not lists: 27 bytes a request instead of ~200 as Python objects.
        self.cols = (array("d"), array("d"), array("f"), array("h"), array("b"), array("i"))

    def _record(self, measured: bool, sched_rel: float, latency: float, lag: float, code: int,
                degraded: bool, items: int) -> None:
        slot = SLOT_OK if code == OK else SLOT_DROPPED if code == DROPPED else SLOT_ERRORS
        self.counters[self.base + slot] += 1
        if not measured:
            self.warmup_requests += 1
            return
        for col, v in zip(self.cols, (sched_rel, latency, lag, code, degraded, items)):
            col.append(v)

    async def _call(self, due: float, measured: bool) -> None:
        """Send one request due at monotonic ``due``; record latency from ``due`` (or from the send, if early). Never raises."""
        code, degraded, items = OK, False, 0
        sent = time.monotonic()
        try:
            request = self.spec.factory(self.rng)
            reply = await self.stub.GetFeed(request, timeout=self.timeout_s)
            degraded, items = bool(reply.degraded), len(reply.items)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().value[0]
            self.messages.setdefault(code_name(code), (exc.details() or "")[:_MAX_MESSAGE_CHARS])
        except asyncio.CancelledError:  # only our own drain cancels a call
            code = _CANCELLED
            self.messages.setdefault("CANCELLED", "still outstanding after the deadline at the end of the run")
        except Exception as exc:  # noqa: BLE001 - a broken factory is counted and shown, not a dead worker
            code = CLIENT_ERROR
            self.messages.setdefault("CLIENT_ERROR", f"{type(exc).__name__}: {exc}"[:_MAX_MESSAGE_CHARS])
        finally:
            self.in_flight -= 1
            self.counters[self.base + SLOT_IN_FLIGHT] -= 1
        self._record(measured, due - self.t0 - self.spec.warmup_s, time.monotonic() - max(due, sent), sent - due,
                     code, degraded, items)

    def _start(self, due: float, measured: bool) -> Any:
        self.in_flight += 1
        self.counters[self.base + SLOT_IN_FLIGHT] += 1
        return self._call(due, measured)

    async def open_loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        for sched, measured in schedule(self.spec):
            due = self.t0 + sched
            # sleep(0) when behind: answers still get processed between overdue sends.
            await asyncio.sleep(max(0.0, due - time.monotonic() - _EARLY_S))
            if self.in_flight >= self.spec.max_in_flight:
                self._record(measured, sched - self.spec.warmup_s, math.nan, time.monotonic() - due,
                             DROPPED, False, 0)
                continue
            task = asyncio.ensure_future(self._start(due, measured))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._drain(tasks)

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(set(tasks), timeout=self.timeout_s + _DRAIN_GRACE_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _client(self, end: float) -> None:
        while (start := time.monotonic()) < end:
            await self._start(start, start - self.t0 >= self.spec.warmup_s)
            if self.spec.think_time_s > 0:
                await asyncio.sleep(self.spec.think_time_s)

    async def closed_loop(self) -> None:
        end = self.t0 + self.spec.warmup_s + self.spec.duration_s
        delay = self.t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        clients = {asyncio.ensure_future(self._client(end)) for _ in range(self.spec.clients)}
        await asyncio.wait(set(clients), timeout=max(0.0, end - time.monotonic()))
        await self._drain(clients)  # each client finishes its last call (or is cancelled past the deadline)

    def result(self) -> WorkerResult:
        sched, lat, lag, code, degraded, items = self.cols
        return WorkerResult(self.spec.index, Samples.from_columns(sched, lat, lag, code, degraded, items, self.spec.index),
                            self.warmup_requests, self.messages)


async def _run(spec: WorkerSpec, conn: Any, counters: Any) -> WorkerResult | None:
    # A plain channel with the project's options, not serving.make_channel: a load generator is an edge
    # client with no request id or deadline to propagate, and the interceptor costs client CPU per call
    # (measured against the test stub, 32 calls in flight: ~220 vs ~255 us/call).
    channel = grpc.aio.insecure_channel(spec.target, options=channel_options(spec.grpc))
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), spec.connect_timeout_s)
        except asyncio.TimeoutError:
            raise ConnectionError(f"cannot connect to {spec.target} within {spec.connect_timeout_s:g} s") from None
        conn.send(("ready", None))
        kind, t0_wall = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        if kind != "start":
            return None
        # One wall-clock start for every process, turned into this process's monotonic clock.
        worker = _Worker(spec, feed_pb2_grpc.FeedServiceStub(channel), counters, time.monotonic() + (t0_wall - time.time()))
        if spec.mode == "open":
            await worker.open_loop()
        else:
            await worker.closed_loop()
        return worker.result()
    finally:
        await channel.close()


def worker_main(spec: WorkerSpec, conn: Any, counters: Any) -> None:
    """Process entry point: ("ready"), wait for ("start", t0), run, send ("done", WorkerResult) or ("error", text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it terminates us
    try:
        result = asyncio.run(_run(spec, conn, counters))
        if result is not None:
            conn.send(("done", result))
    except BaseException as exc:  # noqa: BLE001 - always tell the parent why, never leave it waiting
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if not isinstance(exc, ConnectionError):
            detail += "\n" + traceback.format_exc()
        try:
            conn.send(("error", f"worker {spec.index}: {detail}"))
        except (OSError, ValueError):
            pass
    finally:
        conn.close()
