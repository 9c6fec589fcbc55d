"""What the gateway serves when recall fails: the user's last good feed, else the popular items.

``LastGoodFeeds`` keeps, per user, the last feed that went through the whole
pipeline (no gateway fallback used): the served page followed by the rest of
the ranked list, ``feed.last_good_items`` items in all, as a serialized
``GetFeedResponse`` under ``{feed.key_prefix}:u:{<user>}:last_good`` with a TTL
of ``feed.last_good_ttl_s``. Keeping more than a page matters: the page itself
was just recorded as seen, so a fallback a minute later serves the next items.

``PopularItems`` reads the head of the popular channel's global trending set
(``recall.trending.TrendingKeys``, namespace ``features.project``) directly
from Redis: it works when the RecallService itself is down.

Both fallbacks drop the request's ``exclude_item_ids`` and, through the
impression history (:class:`rerank.impressions.AsyncImpressionHistory`), what
the user was shown within ``feed.fallback_seen_window_hours``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proto.cascade.v1 import common_pb2, feed_pb2
from recall.trending import TrendingKeys
from rerank.impressions import user_key


@dataclass(frozen=True)
class FallbackItem:
    """One item a fallback may serve, with what it knows about it."""

    item_id: str
    score: float  # finite; the order of a fallback list is its display order
    channels: tuple[common_pb2.ChannelScore, ...] = ()
    ranking_score: float | None = None
    reasons: tuple[common_pb2.RerankReason, ...] = ()


class LastGoodFeeds:
    """The per-user last good feed in Redis (see the module docstring)."""

    def __init__(self, client: Any, prefix: str, ttl_s: float, max_items: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_items = max_items

    def key(self, user_id: str) -> str:
        return user_key(self.prefix, user_id, "last_good")

    @staticmethod
    def record(response: feed_pb2.GetFeedResponse, more: Sequence[feed_pb2.FeedItem], max_items: int) -> bytes:
        """The stored form: `response`'s items then `more` (ids not already in it), at most `max_items`."""
        keep = feed_pb2.GetFeedResponse(request_id=response.request_id, model_versions=response.model_versions,
                                        experiment=response.experiment, served_at_ms=response.served_at_ms)
        seen: set[str] = set()
        for item in (*response.items, *more):
            if len(keep.items) >= max_items:
                break
            if item.item_id in seen:
                continue
            seen.add(item.item_id)
            keep.items.append(item)
        return keep.SerializeToString()

    async def store(self, user_id: str, response: feed_pb2.GetFeedResponse, more: Sequence[feed_pb2.FeedItem] = ()) -> None:
        await self.client.set(self.key(user_id), self.record(response, more, self.max_items), px=self.ttl_ms)

    async def load(self, user_id: str) -> list[FallbackItem]:
        raw = await self.client.get(self.key(user_id))
        if not raw:
            return []
        stored = feed_pb2.GetFeedResponse.FromString(raw)
        return [FallbackItem(it.item_id, float(it.score), tuple(it.recall_channels),
                             it.ranking_score if it.HasField("ranking_score") else None, tuple(it.reasons))
                for it in stored.items]


class PopularItems:
    """The head of the global trending set (the popular channel's table), read straight from Redis.

    The list read is reused for ``ttl_s`` (it changes slowly, and a fallback
    should not wait on Redis); :meth:`peek` gives the last one read, however
    old, for when there is no time left to read at all.
    """

    def __init__(self, client: Any, namespace: str, limit: int, ttl_s: float = 0.0, clock: Any = time.monotonic) -> None:
        self.client = client
        self.key = TrendingKeys.of(namespace).glob
        self.limit = limit
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: list[FallbackItem] = []
        self._read_at: float | None = None

    def peek(self) -> list[FallbackItem]:
        return self._items

    async def load(self) -> list[FallbackItem]:
        if self._read_at is not None and self.clock() - self._read_at < self.ttl_s:
            return self._items
        rows = await self.client.zrevrange(self.key, 0, self.limit - 1, withscores=True)
        out = []
        if rows:
            top = float(rows[0][1]) or 1.0
            for rank, (member, score) in enumerate(rows):
                item = member.decode() if isinstance(member, bytes) else str(member)
                out.append(FallbackItem(item, min(1.0, max(0.0, float(score) / top)),
                                        (common_pb2.ChannelScore(channel="popular", score=float(score), rank=rank),)))
        self._items, self._read_at = out, self.clock()
        return out


async def unseen(history: Any, user_id: str, items: list[FallbackItem], since_ms: int) -> list[FallbackItem]:
    """`items` without those the impression history saw shown to the user since `since_ms` (one round trip)."""
    if not items or history is None:
        return items
    seen = await history.seen_since(user_id, [i.item_id for i in items], since_ms)
    return [i for i in items if i.item_id not in seen]


__all__ = ["FallbackItem", "LastGoodFeeds", "PopularItems", "unseen"]
