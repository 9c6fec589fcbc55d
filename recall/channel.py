"""The contract every recall channel implements (FAISS embeddings, co-visitation, popular, fresh, …).

A channel answers one question: "which k items might this user want, and how
much?" It never filters seen/blocked items or de-duplicates across channels:
the merge does that once, for all channels (recall/merge.py). Channels are
async so the merge can run them concurrently, each under its own timeout;
CPU-bound work (FAISS search) goes to a thread inside the channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class RecallQuery:
    """What channels know about the request. Built once per request by the service."""

    user_id: int
    now_ms: int
    recent_items: Sequence[int] = ()  # most recent first (from the feature store's last-N list)
    context: Mapping[str, str] = field(default_factory=dict)
    user_features: Mapping[str, object] = field(default_factory=dict)  # online features by "view:feature" ref
    # What one channel derived from the query that another may reuse in the same request (e.g. the preferred
    # categories popular and fresh both weigh): computed once per request, never compared or hashed.
    memo: dict[object, object] = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class ChannelResult:
    """Item ids with the channel's own scores, best first (scores are comparable only within a channel)."""

    items: np.ndarray  # int64 item ids
    scores: np.ndarray  # float32, same length, descending

    def __post_init__(self) -> None:
        if len(self.items) != len(self.scores):
            raise ValueError("items and scores must have the same length")

    @staticmethod
    def empty() -> "ChannelResult":
        return ChannelResult(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


@runtime_checkable
class Channel(Protocol):
    """One source of candidates."""

    name: str

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        """Up to k items for the query, best first. May raise; the merge treats that as a failed channel."""
        ...
