"""What a load test sends: GetFeedRequests for users drawn from a pool.

A request factory is any picklable callable ``factory(rng) -> GetFeedRequest``
(a module-level function or a dataclass instance): each worker process gets
its own copy and its own seeded ``numpy.random.Generator``, so a run is
reproducible and workers do not send the same user sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from proto.cascade.v1 import common_pb2, feed_pb2

RequestFactory = Callable[[np.random.Generator], feed_pb2.GetFeedRequest]
"""Builds the next request; called once per request, in the worker, just before it is sent."""

USER_DISTRIBUTIONS = ("uniform", "zipf")

_BATCH = 4096  # user indices drawn per numpy call: one call per request would dominate the cost


@dataclass
class FeedRequestFactory:
    """GetFeed for ``user_ids[k]``, k uniform or Zipf(s) over the pool (rank 0 the most frequent).

    Zipf matters for a cache-fronted gateway: a few heavy users get most requests,
    as in production traffic; uniform spreads them evenly (the cache-hostile case).
    """

    user_ids: tuple[str, ...]
    count: int = 10
    surface: str = "home_feed"
    distribution: str = "uniform"
    zipf_s: float = 1.1
    _cdf: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)
    _pending: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.user_ids:
            raise ValueError("FeedRequestFactory needs at least one user id")
        if self.distribution not in USER_DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {USER_DISTRIBUTIONS}, got {self.distribution!r}")
        if self.distribution == "zipf" and not self.zipf_s > 0:
            raise ValueError(f"zipf_s must be > 0, got {self.zipf_s}")
        self.user_ids = tuple(self.user_ids)

    @classmethod
    def numbered(cls, users: int, *, start: int = 1, prefix: str = "", **kwargs: object) -> FeedRequestFactory:
        """Users ``f"{prefix}{start}"`` .. ``f"{prefix}{start + users - 1}"`` (MovieLens ids are 1-based)."""
        if users < 1:
            raise ValueError(f"users must be >= 1, got {users}")
        return cls(tuple(f"{prefix}{i}" for i in range(start, start + users)), **kwargs)  # type: ignore[arg-type]

    def _draw(self, rng: np.random.Generator) -> int:
        if not self._pending:
            n = len(self.user_ids)
            if self.distribution == "uniform":
                batch = rng.integers(0, n, size=_BATCH)
            else:
                if self._cdf is None:
                    weights = 1.0 / np.power(np.arange(1, n + 1, dtype=np.float64), self.zipf_s)
                    self._cdf = np.cumsum(weights) / weights.sum()
                batch = np.minimum(np.searchsorted(self._cdf, rng.random(_BATCH), side="right"), n - 1)
            self._pending = batch[::-1].tolist()
        return self._pending.pop()

    def __call__(self, rng: np.random.Generator) -> feed_pb2.GetFeedRequest:
        return feed_pb2.GetFeedRequest(
            user_id=self.user_ids[self._draw(rng)],
            count=self.count,
            context=common_pb2.RequestContext(timestamp_ms=int(time.time() * 1000), surface=self.surface),
        )
