"""Slicing one request deadline into per-stage budgets.

The gateway has one budget for the whole GetFeed call: the caller's gRPC
deadline when it set one, else ``feed.deadline_ms``. ``feed.stage_budget``
gives each stage a *share*; a stage's slice is its share of what is **left**
when it starts, among the stages still to run::

    slice(stage) = (remaining - reserve) * share[stage] / sum(share[s] for s in pending)

so time an early stage did not use flows to the later ones, and the last
stage gets everything but the reserve (kept for the fallbacks and the
response). Pure functions: the unit tests pin the arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

STAGES: tuple[str, ...] = ("recall", "features", "ranking", "rerank")
"""Stages the gateway budgets (features runs beside ranking: both are pending until either starts)."""


def stage_slice(stage: str, remaining_s: float, pending: Sequence[str], shares: Mapping[str, float],
                reserve_s: float = 0.0) -> float:
    """Seconds `stage` may use: its share of ``remaining_s - reserve_s`` among the `pending` stages (itself included).

    A stage without a configured share, or with every pending share zero,
    splits the time evenly. Never negative; 0 means "no time: serve the fallback".
    """
    if stage not in pending:
        pending = (*pending, stage)
    usable = max(0.0, remaining_s - max(0.0, reserve_s))
    weights = {s: max(0.0, float(shares.get(s, 0.0))) for s in pending}
    total = sum(weights.values())
    if total <= 0.0:
        return usable / len(pending)
    if weights[stage] <= 0.0:
        return 0.0
    return usable * weights[stage] / total


class Budget:
    """One request's clock: the absolute end, and the slice of each stage when it starts."""

    __slots__ = ("end", "shares", "reserve_s", "total_s", "_clock")

    def __init__(self, total_s: float, shares: Mapping[str, float], reserve_s: float = 0.0, *,
                 clock: object = time.monotonic) -> None:
        self._clock = clock
        self.total_s = max(0.0, float(total_s))
        self.end = self._clock() + self.total_s  # type: ignore[operator]
        self.shares = dict(shares)
        self.reserve_s = reserve_s

    def remaining(self) -> float:
        """Seconds left before the request deadline (never negative)."""
        return max(0.0, self.end - self._clock())  # type: ignore[operator]

    def slice(self, stage: str, pending: Sequence[str]) -> float:
        """The slice of `stage` now, `pending` being it and the stages after it."""
        return stage_slice(stage, self.remaining(), pending, self.shares, self.reserve_s)


__all__ = ["STAGES", "Budget", "stage_slice"]
