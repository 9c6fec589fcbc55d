"""The closed loop: simulated users ask GetFeed for pages and click through EventService.

Paired design: at step ``i`` one hidden user ``k`` is drawn and asks for a
page in EVERY arm (one after the other, the order rotating with ``i``) (each arm is a clone of the same person under a different
user id, one that the feed's stable hash puts in the arm's experiment bucket);
each arm's clicks are drawn with the same random numbers. So arms differ only
in what the system showed them -- the comparison needs far less traffic than
two independent populations would.

Everything goes through the public APIs (gRPC GetFeed and LogEvents): the
loop is an app backend with fake people behind it, nothing more.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from proto.cascade.v1 import common_pb2, events_pb2, feed_pb2
from simulation.ctr import CtrTracker
from simulation.users import SimulatedUsers


RATING_OF_CLICK = 4.0  # what a simulated user rates a movie it chose to watch


def user_id_in_bucket(k: int, bucket: str, assign: Callable[[str], str], prefix: str = "sim") -> str:
    """A stable user id for hidden user `k` that `assign` puts in `bucket` (first matching suffix)."""
    for attempt in range(10_000):
        candidate = f"{prefix}{k}-{attempt}"
        if assign(candidate) == bucket:
            return candidate
    raise ValueError(f"no user id for bucket {bucket!r}: does the experiment assign it at all?")


@dataclass(frozen=True)
class Arm:
    """One experiment arm: a name for reports and the user id of each hidden user in it."""

    name: str
    user_ids: tuple[str, ...]


@dataclass
class LoopStats:
    """What the loop did (counts are exact)."""

    requests: int = 0
    failed: int = 0  # GetFeed errors, by code in `errors`
    degraded: int = 0
    impressions: int = 0
    clicks: int = 0
    events_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # arm -> last ranking model version seen
    degraded_reasons: dict[str, int] = field(default_factory=dict)  # "stage: fallback" -> responses
    degraded_by_arm: dict[str, int] = field(default_factory=dict)


class ClosedLoop:
    """Drives `arms` of the same hidden users at `rate` steps/s (each step: one request per arm)."""

    def __init__(self, feed: object, events: object, users: SimulatedUsers, item_categories: Mapping[str, np.ndarray],
                 arms: Sequence[Arm], *, tracker: CtrTracker, count: int = 10, rate: float = 5.0, seed: int = 0,
                 timeout_s: float = 1.0, surface: str = "home_feed", rate_clicks: bool = False) -> None:
        if any(len(a.user_ids) != users.spec.n_users for a in arms):
            raise ValueError("every arm needs one user id per hidden user")
        self.feed = feed
        self.events = events
        self.users = users
        self.item_categories = item_categories
        self.arms = list(arms)
        self.tracker = tracker
        self.count = count
        self.rate = rate
        self.seed = seed
        self.timeout_s = timeout_s
        self.surface = surface
        self.rate_clicks = rate_clicks
        self.stats = LoopStats()
        self._zero = np.zeros(users.spec.n_categories)
        self._pending: set[asyncio.Task] = set()
        self.started = time.monotonic()

    def now_s(self) -> float:
        return time.monotonic() - self.started

    async def run(self, duration_s: float, stop: asyncio.Event | None = None) -> LoopStats:
        """Steps at a fixed rate for `duration_s` (or until `stop` is set); waits for in-flight steps."""
        step = 0
        end = self.started + duration_s
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            due = self.started + step / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.step(step))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            step += 1
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        return self.stats

    async def step(self, i: int) -> None:
        """Hidden user k asks for a page in every arm; clicks use common random numbers."""
        pick = np.random.default_rng([self.seed, i])
        k = int(pick.integers(self.users.spec.n_users))
        draws = pick.random(self.count)
        # One arm after the other, in an order that rotates with the step: concurrent requests would queue
        # behind each other in the stages, and a fixed order would hand one arm the slower seat every time.
        shift = i % len(self.arms)
        for arm in self.arms[shift:] + self.arms[:shift]:
            await self._one(arm, k, draws)

    async def _one(self, arm: Arm, k: int, draws: np.ndarray) -> None:
        user_id = arm.user_ids[k]
        request = feed_pb2.GetFeedRequest(user_id=user_id, count=self.count,
                                          context=common_pb2.RequestContext(timestamp_ms=int(time.time() * 1000),
                                                                            surface=self.surface))
        t0 = time.perf_counter()
        try:
            response = await self.feed.GetFeed(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.stats.failed += 1
            self.stats.errors[exc.code().name] = self.stats.errors.get(exc.code().name, 0) + 1
            return
        finally:
            self.stats.requests += 1
        self.stats.latencies_ms.append(1000 * (time.perf_counter() - t0))
        self.stats.degraded += int(response.degraded)
        self.stats.degraded_by_arm[arm.name] = self.stats.degraded_by_arm.get(arm.name, 0) + int(response.degraded)
        for r in response.degraded_reasons:
            key = f"{common_pb2.Stage.Name(r.stage)}/{r.component or '-'}: {common_pb2.DegradationCode.Name(r.code)}"
            self.stats.degraded_reasons[key] = self.stats.degraded_reasons.get(key, 0) + 1
        if response.model_versions:  # the ranking model (or the heuristic that stood in) comes first
            mv = response.model_versions[0]
            self.stats.versions[arm.name] = f"{mv.model_name}/{mv.version}"
        items = list(response.items)
        t = self.now_s()
        cats = np.stack([self.item_categories.get(it.item_id, self._zero) for it in items]) if items else None
        if cats is None:
            return
        p = self.users.click_probability(k, cats, t, positions=np.array([it.position for it in items]))
        clicked = draws[: len(items)] < p
        self.tracker.add(arm.name, t, len(items), int(clicked.sum()), float(p.sum()))
        self.stats.impressions += len(items)
        self.stats.clicks += int(clicked.sum())
        if clicked.any():
            now_ms = int(time.time() * 1000)
            events = [events_pb2.Event(event_id=uuid.uuid4().hex, type=events_pb2.EVENT_TYPE_CLICK, user_id=user_id,
                                       item_id=it.item_id, request_id=response.request_id, timestamp_ms=now_ms)
                      for it, c in zip(items, clicked) if c]
            if self.rate_clicks:  # a watched movie is also rated: feeds rating-based features and trending
                events += [events_pb2.Event(event_id=uuid.uuid4().hex, type=events_pb2.EVENT_TYPE_RATING,
                                            user_id=user_id, item_id=e.item_id, request_id=e.request_id,
                                            timestamp_ms=now_ms, value=RATING_OF_CLICK) for e in list(events)]
            try:
                await self.events.LogEvents(events_pb2.LogEventsRequest(events=events), timeout=self.timeout_s * 5)
            except grpc.aio.AioRpcError:
                self.stats.events_failed += len(events)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..100) of `values`, NaN when empty."""
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")
