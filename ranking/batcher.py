"""Dynamic batching of scoring requests (asyncio), after Triton's dynamic batcher.

Each Rank request brings a block of candidate rows (the encoded model inputs
of its items). :class:`DynamicBatcher` merges the blocks of concurrent
requests into one model call and hands every request its own scores back, in
its own row order::

    batcher = DynamicBatcher(scorer.score_encoded, max_batch_size=4096,
                             preferred_batch_sizes=(1024, 2048, 4096), max_queue_delay_us=2000,
                             max_queue_size=64)
    scores = await batcher.submit(encoded, deadline=time.monotonic() + 0.015)
    await batcher.close()

Rows
----
A block is a numpy array (rows on axis 0), a mapping of name -> array, or a
tuple/list of arrays, all with the same number of rows; blocks of one batcher
must have the same structure. Merging concatenates along axis 0 (in the
worker thread), results are sliced back. The score function takes one merged
block and returns one score per row (anything ``np.asarray`` turns into a
1-D array of that length).

Dispatch (when the model instance is free)
------------------------------------------
Requests join a batch in arrival order, whole (a request larger than
``max_batch_size`` is split into chunks of at most that many rows when it is
queued; its chunks are scored in order and its scores concatenated). The
candidate batch is the longest arrival-order prefix that fits in
``max_batch_size`` rows. It is sent at once when

* it is *full*: the next waiting request does not fit (or it has exactly
  ``max_batch_size`` rows);
* it has reached a *preferred size*: at least the smallest of
  ``preferred_batch_sizes``. (Triton counts requests of one row each and sends
  exactly a preferred size; with blocks of hundreds of rows an exact sum
  rarely exists, so here "can be formed" means "reached". The whole fitting
  prefix is sent: leaving a request behind buys nothing on a CPU. The preferred
  sizes are also the shapes a new model is warmed up on.)
* the oldest waiting request has waited ``max_queue_delay_us``;
* ``arrivals`` (an optional callable given by the service) says no other request
  is on its way to this batcher: waiting could not make the batch fuller.
  Triton cannot know this; the ranking service can (requests still reading
  features), which saves a lone request the whole delay.

With ``enabled=False`` every request (chunk) is scored alone, in arrival order,
on the same worker: the comparison point of the benchmark.

Queue policy
------------
* More than ``max_queue_size`` requests waiting (queued, not yet sent to the
  model) -> :class:`QueueFull` at submit (gRPC RESOURCE_EXHAUSTED).
* A request whose deadline passes while it waits is removed from the queue
  (never scored) and answered with :class:`DeadlineExceeded` (``queued=True``).
  One whose deadline passes while its batch runs is answered the same way
  (``queued=False``) and its scores are discarded when the batch ends.
* A model exception fails every request of that batch with :class:`ModelError`.

Threads
-------
The model runs on one dedicated worker thread per batcher: one inference at a
time per model instance (torch / ONNX Runtime use their own intra-op threads
inside that call), while the event loop keeps accepting and queueing requests.

Metrics (prometheus, label ``model``): ``cascade_ranking_batch_rows``,
``cascade_ranking_batch_requests``, ``cascade_ranking_queue_delay_seconds``,
``cascade_ranking_inference_seconds``, ``cascade_ranking_queue_depth``,
``cascade_ranking_batcher_rejected_total{reason}``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

_log = logging.getLogger("cascade.ranking.batcher")

ROW_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384)
DELAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)

BATCH_ROWS = Histogram("cascade_ranking_batch_rows", "Rows per model call made by the dynamic batcher.", ["model"],
                       buckets=ROW_BUCKETS)
BATCH_REQUESTS = Histogram("cascade_ranking_batch_requests", "Requests (chunks) merged into one model call.", ["model"],
                           buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
QUEUE_DELAY = Histogram("cascade_ranking_queue_delay_seconds", "Time a request (chunk) waited in the batcher queue before its model call.",
                        ["model"], buckets=DELAY_BUCKETS)
INFERENCE_SECONDS = Histogram("cascade_ranking_inference_seconds", "Duration of one batched model call (merge + score).",
                              ["model"], buckets=DELAY_BUCKETS)
QUEUE_DEPTH = Gauge("cascade_ranking_queue_depth", "Requests waiting in the batcher queues (not yet sent to the model).", ["model"])
REJECTED = Counter("cascade_ranking_batcher_rejected_total",
                   "Requests the batcher did not score: queue_full, deadline_queued, deadline_running, model_error, closed.",
                   ["model", "reason"])


# ----------------------------------------------------------------------------- errors


class BatcherError(Exception):
    """Why a request got no scores from the batcher; ``grpc_code`` is the status it maps to."""

    grpc_code = grpc.StatusCode.INTERNAL


class QueueFull(BatcherError):
    """Too many requests waiting: refused without queueing (RESOURCE_EXHAUSTED)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(BatcherError):
    """The request's deadline passed while it waited (``queued``) or while its batch ran."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, message: str, *, queued: bool) -> None:
        super().__init__(message)
        self.queued = queued


class ModelError(BatcherError):
    """The score function raised (``__cause__``) or returned the wrong shape."""

    grpc_code = grpc.StatusCode.INTERNAL


class BatcherClosed(BatcherError):
    """The batcher was closed before the request could be scored (UNAVAILABLE)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


# ----------------------------------------------------------------------------- rows


def num_rows(rows: Any) -> int:
    """Rows of a block: an array, a mapping of arrays or a tuple/list of arrays (all equally long)."""
    if isinstance(rows, Mapping):
        lengths = {len(v) for v in rows.values()}
    elif isinstance(rows, (tuple, list)):
        lengths = {len(v) for v in rows}
    else:
        return len(rows)
    if len(lengths) != 1:
        raise ValueError(f"a row block's arrays must have one common length, got {sorted(lengths)}")
    return lengths.pop()


def slice_rows(rows: Any, start: int, stop: int) -> Any:
    if isinstance(rows, Mapping):
        return {k: v[start:stop] for k, v in rows.items()}
    if isinstance(rows, (tuple, list)):
        return type(rows)(v[start:stop] for v in rows)
    return rows[start:stop]


def concat_rows(blocks: Sequence[Any]) -> Any:
    """One block of all rows of `blocks`, in order (the single block itself when there is one)."""
    if len(blocks) == 1:
        return blocks[0]
    first = blocks[0]
    if isinstance(first, Mapping):
        return {k: np.concatenate([b[k] for b in blocks]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(np.concatenate([b[i] for b in blocks]) for i in range(len(first)))
    return np.concatenate(blocks)


# ----------------------------------------------------------------------------- queue entries


@dataclass(eq=False)
class _Request:
    n: int
    future: asyncio.Future[np.ndarray]
    deadline: float | None
    scores: np.ndarray
    queued_chunks: int = 0  # chunks still in the queue
    open_chunks: int = 0  # chunks without scores yet


@dataclass(eq=False)
class _Chunk:
    request: _Request
    rows: Any
    start: int
    n: int
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Merge concurrent requests' rows into model calls on one worker thread; see the module docstring.

    `score_fn(rows) -> scores` runs on the batcher's worker thread. `name`
    labels the metrics (the model name). `arrivals`, when given, returns how
    many requests are on their way to this batcher (not yet submitted).
    """

    def __init__(self, score_fn: Callable[[Any], Any], *, max_batch_size: int, preferred_batch_sizes: Sequence[int] = (),
                 max_queue_delay_us: int = 0, max_queue_size: int = 64, enabled: bool = True, name: str = "model",
                 arrivals: Callable[[], int] | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
        bad = [p for p in preferred_batch_sizes if not 1 <= p <= max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size ({max_batch_size})")
        self.score_fn = score_fn
        self.max_batch_size = int(max_batch_size)
        self.preferred_batch_sizes = tuple(sorted(int(p) for p in preferred_batch_sizes))
        self.max_queue_delay_s = max_queue_delay_us / 1e6
        self.max_queue_size = int(max_queue_size)
        self.enabled = bool(enabled)
        self.name = name
        self.arrivals = arrivals
        self._min_preferred = self.preferred_batch_sizes[0] if self.preferred_batch_sizes else None
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._waiting = 0  # requests with a chunk in the queue
        self._running: list[_Chunk] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._idle: asyncio.Event | None = None
        self.stats = {"batches": 0, "rows": 0, "requests": 0, "queue_full": 0, "deadline_queued": 0,
                      "deadline_running": 0, "model_errors": 0}
        self._m_rows = BATCH_ROWS.labels(name)
        self._m_reqs = BATCH_REQUESTS.labels(name)
        self._m_delay = QUEUE_DELAY.labels(name)
        self._m_infer = INFERENCE_SECONDS.labels(name)
        self._m_depth = QUEUE_DEPTH.labels(name)

    @classmethod
    def from_config(cls, score_fn: Callable[[Any], Any], ranking: Any, *, name: str = "model", enabled: bool = True,
                    arrivals: Callable[[], int] | None = None) -> DynamicBatcher:
        """A batcher with the limits of a :class:`~cascade.config.RankingConfig`."""
        return cls(score_fn, max_batch_size=ranking.max_batch_size, preferred_batch_sizes=ranking.preferred_batch_sizes,
                   max_queue_delay_us=ranking.max_queue_delay_us, max_queue_size=ranking.max_queue_size,
                   enabled=enabled, name=name, arrivals=arrivals)

    # -- state

    @property
    def queued_requests(self) -> int:
        """Requests waiting (at least one chunk not yet sent to the model)."""
        return self._waiting

    @property
    def busy(self) -> bool:
        """A model call is running or requests are waiting."""
        return bool(self._queue or self._running)

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._idle = asyncio.Event()
            self._idle.set()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batcher-{self.name}")
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    # -- submitting

    async def submit(self, rows: Any, *, deadline: float | None = None) -> np.ndarray:
        """Scores (float32, one per row, in row order) of `rows`, scored within a merged batch.

        `deadline` is an absolute ``time.monotonic()``. Raises :class:`QueueFull`,
        :class:`DeadlineExceeded`, :class:`ModelError` or :class:`BatcherClosed`.
        Cancelling the call removes the request's waiting rows from the queue.
        """
        if self._closed:
            REJECTED.labels(self.name, "closed").inc()
            raise BatcherClosed(f"batcher of {self.name} is closed")
        n = num_rows(rows)
        if n == 0:
            return np.empty(0, dtype=np.float32)
        if self._waiting >= self.max_queue_size:
            self.stats["queue_full"] += 1
            REJECTED.labels(self.name, "queue_full").inc()
            raise QueueFull(f"{self._waiting} requests are waiting for model {self.name} (max_queue_size {self.max_queue_size})")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self.stats["deadline_queued"] += 1
            REJECTED.labels(self.name, "deadline_queued").inc()
            raise DeadlineExceeded("the deadline passed before the request was queued", queued=True)
        self._ensure_started()
        assert self._wakeup is not None and self._idle is not None
        loop = asyncio.get_running_loop()
        req = _Request(n, loop.create_future(), deadline, np.empty(n, dtype=np.float32))
        step = self.max_batch_size
        for start in range(0, n, step):
            stop = min(n, start + step)
            part = rows if (start == 0 and stop == n) else slice_rows(rows, start, stop)
            self._queue.append(_Chunk(req, part, start, stop - start, now))
            req.queued_chunks += 1
            req.open_chunks += 1
        self._waiting += 1
        self._m_depth.inc()
        self._idle.clear()
        self._wakeup.set()
        try:
            if deadline is None:
                return await asyncio.shield(req.future)
            return await asyncio.wait_for(asyncio.shield(req.future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if req.future.done() and not req.future.cancelled() and req.future.exception() is None:
                return req.future.result()
            queued = req.queued_chunks > 0
            self._drop(req)
            key = "deadline_queued" if queued else "deadline_running"
            self.stats[key] += 1
            REJECTED.labels(self.name, key).inc()
            raise DeadlineExceeded(
                "the deadline passed while the request was " + ("queued (dropped from the batch)" if queued else "being scored"),
                queued=queued) from None
        except asyncio.CancelledError:
            self._drop(req)
            raise

    def _drop(self, req: _Request) -> None:
        """Take a request's waiting chunks out of the queue; its running chunks' scores are discarded later."""
        if req.queued_chunks:
            self._queue = collections.deque(c for c in self._queue if c.request is not req)
            req.queued_chunks = 0
            self._waiting -= 1
            self._m_depth.dec()
        if not req.future.done():
            req.future.cancel()
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is not None and not self._queue and not self._running:
            self._idle.set()

    # -- the batching loop

    def _fitting(self) -> tuple[int, int, bool]:
        """(chunks, rows) of the longest arrival-order prefix within max_batch_size, and whether it is full."""
        rows = 0
        count = 0
        for chunk in self._queue:
            if rows + chunk.n > self.max_batch_size:
                return count, rows, True
            rows += chunk.n
            count += 1
            if not self.enabled:
                break
        return count, rows, rows >= self.max_batch_size

    def _expire(self, now: float) -> None:
        """Answer queued requests whose deadline has passed (the waiting submitter may not have woken yet)."""
        expired = {c.request for c in self._queue if c.request.deadline is not None and c.request.deadline <= now}
        for req in expired:
            self._drop_expired(req)

    def _drop_expired(self, req: _Request) -> None:
        self._queue = collections.deque(c for c in self._queue if c.request is not req)
        if req.queued_chunks:
            req.queued_chunks = 0
            self._waiting -= 1
            self._m_depth.dec()
        if not req.future.done():
            self.stats["deadline_queued"] += 1
            REJECTED.labels(self.name, "deadline_queued").inc()
            req.future.set_exception(DeadlineExceeded("the deadline passed while the request was queued (dropped from the batch)",
                                                      queued=True))

    def _ready(self, now: float) -> tuple[bool, float | None]:
        """Whether to dispatch now; else how long to wait at most before deciding again."""
        count, rows, full = self._fitting()
        if not self.enabled or full:
            return True, None
        if self._min_preferred is not None and rows >= self._min_preferred:
            return True, None
        if self.arrivals is not None and self.arrivals() <= 0:
            return True, None
        left = self._queue[0].enqueued + self.max_queue_delay_s - now
        if left <= 0:
            return True, None
        return False, left

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave submitters hanging until their deadlines
            _log.exception("batcher of %s stopped", self.name)
            self._closed = True
            for req in {c.request for c in self._queue}:
                if not req.future.done():
                    req.future.set_exception(BatcherClosed(f"batcher of {self.name} failed: {exc!r}"))
            self._queue.clear()
            self._m_depth.dec(self._waiting)
            self._waiting = 0
            self._check_idle()
            raise

    async def _loop(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            wakeup.clear()
            self._expire(time.monotonic())
            if not self._queue:
                self._check_idle()
                if self._closed:
                    return
                await wakeup.wait()
                continue
            ready, wait_s = self._ready(time.monotonic())
            if not ready:
                try:
                    await asyncio.wait_for(wakeup.wait(), wait_s)
                except TimeoutError:
                    pass
                continue
            await self._dispatch()

    def _take(self) -> list[_Chunk]:
        count, _, _ = self._fitting()
        count = max(1, count)
        batch = [self._queue.popleft() for _ in range(count)]
        for chunk in batch:
            req = chunk.request
            req.queued_chunks -= 1
            if req.queued_chunks == 0:
                self._waiting -= 1
                self._m_depth.dec()
        return batch

    async def _dispatch(self) -> None:
        batch = self._take()
        self._running = batch
        now = time.monotonic()
        total = sum(c.n for c in batch)
        for chunk in batch:
            self._m_delay.observe(now - chunk.enqueued)
        self._m_rows.observe(total)
        self._m_reqs.observe(len(batch))
        self.stats["batches"] += 1
        self.stats["rows"] += total
        self.stats["requests"] += len(batch)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._executor, self._score, [c.rows for c in batch], total)
        except asyncio.CancelledError:
            for chunk in batch:
                if not chunk.request.future.done():
                    chunk.request.future.set_exception(BatcherClosed(f"batcher of {self.name} stopped"))
            raise
        except Exception as exc:  # noqa: BLE001 - the model's failure is every request's answer
            self.stats["model_errors"] += 1
            error = exc if isinstance(exc, ModelError) else ModelError(f"model {self.name} failed: {type(exc).__name__}: {exc}")
            if error is not exc:
                error.__cause__ = exc
            for chunk in batch:
                if not chunk.request.future.done():
                    REJECTED.labels(self.name, "model_error").inc()
                    chunk.request.future.set_exception(error)
        else:
            self._m_infer.observe(time.perf_counter() - t0)
            offset = 0
            for chunk in batch:
                req = chunk.request
                if not req.future.done():
                    req.scores[chunk.start: chunk.start + chunk.n] = scores[offset: offset + chunk.n]
                    req.open_chunks -= 1
                    if req.open_chunks == 0:
                        req.future.set_result(req.scores)
                offset += chunk.n
        finally:
            self._running = []
            self._check_idle()

    def _score(self, blocks: list[Any], total: int) -> np.ndarray:
        """Worker thread: merge, score, check the shape."""
        merged = concat_rows(blocks)
        out = np.asarray(self.score_fn(merged), dtype=np.float32).reshape(-1)
        if out.shape[0] != total:
            raise ModelError(f"model {self.name} returned {out.shape[0]} scores for {total} rows")
        return out

    # -- lifecycle

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self, *, drain: bool = True) -> None:
        """Stop accepting requests; with `drain`, score what is queued first, else fail it with BatcherClosed."""
        self._closed = True
        if self._task is None:
            return
        if drain:
            await self.drain()
        else:
            for req in {c.request for c in self._queue}:
                self._queue = collections.deque(c for c in self._queue if c.request is not req)
                req.queued_chunks = 0
                self._waiting -= 1
                self._m_depth.dec()
                if not req.future.done():
                    req.future.set_exception(BatcherClosed(f"batcher of {self.name} closed"))
        assert self._wakeup is not None
        self._wakeup.set()
        task, self._task = self._task, None
        if drain:
            await task
        else:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


__all__ = [
    "BatcherClosed",
    "BatcherError",
    "DeadlineExceeded",
    "DynamicBatcher",
    "ModelError",
    "QueueFull",
    "concat_rows",
    "num_rows",
    "slice_rows",
]
