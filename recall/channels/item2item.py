"""The item-to-item channel: co-visited neighbours of the user's recent items.

Per request: one MGET for the live version pointer and the packed neighbour
rows of up to ``max_seeds`` recent items (most recent first, duplicates
dropped). The p-th seed weighs ``seed_decay**p``; a neighbour's score is the
weighted sum of its similarities to the seeds::

    score(j) = sum_p decay^p * sim(seed_p, j)        (seeds themselves excluded)

and the k best come back, ties broken by the smaller item id. The scored
neighbours are kept in ``query.memo``: asked again in the same request (the
merge's top-up round, for more), the channel answers from them without a
second read. The rows are
written by :func:`recall.covisit.publish_covisit`; when it switches the live
version the pointer read in the same MGET reveals it and the rows are read
again under the new version (one extra round trip, once per switch).
"""

from __future__ import annotations

import numpy as np

from recall.channel import ChannelResult, RecallQuery
from recall.covisit import key_prefix, pointer_key, unpack_row
from recall.redis_io import AsyncRedis, amget, decode_str


def top_k(items: np.ndarray, scores: np.ndarray, k: int) -> ChannelResult:
    """The k best (score descending, then item id ascending) as a ChannelResult."""
    if k <= 0 or items.size == 0:
        return ChannelResult.empty()
    if items.size > k:
        part = np.argpartition(-scores, k - 1)[:k]
        # keep every item tied with the k-th score so the tie-break below is exact
        kth = scores[part].min()
        part = np.flatnonzero(scores >= kth)
        items, scores = items[part], scores[part]
    order = np.lexsort((items, -scores))[:k]
    return ChannelResult(items[order].astype(np.int64), scores[order].astype(np.float32))


def unique_recent(recent: object, limit: int) -> list[int]:
    """The first `limit` distinct ids of a most-recent-first sequence (None and non-integers skipped)."""
    out: list[int] = []
    seen: set[int] = set()
    for x in recent or ():  # type: ignore[union-attr]
        try:
            v = int(x)
        except (TypeError, ValueError):
            continue
        if v not in seen:
            seen.add(v)
            out.append(v)
            if len(out) >= limit:
                break
    return out


class Item2ItemChannel:
    """Co-visitation neighbours of ``query.recent_items`` (see the module docstring)."""

    def __init__(self, client: AsyncRedis, namespace: str, *, max_seeds: int = 20, seed_decay: float = 0.85,
                 neighbors: int | None = None, name: str = "item2item") -> None:
        if max_seeds <= 0 or not 0 < seed_decay <= 1:
            raise ValueError("max_seeds must be positive and 0 < seed_decay <= 1")
        self.name = name
        self.client = client
        self.namespace = namespace
        self.max_seeds = max_seeds
        self.seed_decay = seed_decay
        self.neighbors = neighbors  # neighbours stored per item (RecallConfig.covisit_neighbors), for capacity()
        self._prefix = key_prefix(namespace) + ":"
        self._pointer = pointer_key(namespace)
        self._version: str | None = None
        self._weights = seed_decay ** np.arange(max_seeds, dtype=np.float64)

    @classmethod
    def from_config(cls, client: AsyncRedis, config: object, namespace: str | None = None) -> "Item2ItemChannel":
        rc = config.recall  # type: ignore[attr-defined]
        return cls(client, namespace or config.features.project, max_seeds=rc.recent_items,  # type: ignore[attr-defined]
                   seed_decay=rc.item2item_seed_decay, neighbors=rc.covisit_neighbors)

    @property
    def version(self) -> str | None:
        """The co-visitation version the last request read (None before the first, or when none is published)."""
        return self._version

    async def warm_up(self) -> None:
        """Open a connection and read the live version before the first request (called by the server's start)."""
        self._version = decode_str(await self.client.get(self._pointer))

    def capacity(self, query: RecallQuery) -> int:
        """At most seeds x stored neighbours come back (the merge gives the rest of the quota to other channels)."""
        if self.neighbors is None:
            return 1 << 30
        return len(unique_recent(query.recent_items, self.max_seeds)) * self.neighbors

    def applicable(self, query: RecallQuery) -> bool:
        """No recent items, no seeds: the merge reports the channel SKIPPED."""
        return len(query.recent_items) > 0

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        seeds = unique_recent(query.recent_items, self.max_seeds)
        if not seeds or k <= 0:
            return ChannelResult.empty()
        memo_key = ("item2item", id(self))
        scored = query.memo.get(memo_key)
        if scored is not None:  # asked again in the same request (the merge's top-up): no second read
            return top_k(*scored, k)  # type: ignore[misc]
        version = self._version
        if version is None:
            version = decode_str(await self.client.get(self._pointer))
            if version is None:
                return ChannelResult.empty()
        values = await amget(self.client, [self._pointer, *self._keys(version, seeds)])
        live = decode_str(values[0])
        if live != version:  # a new table was published (or the pointer vanished)
            self._version = version = live
            if live is None:
                return ChannelResult.empty()
            values = await amget(self.client, [self._pointer, *self._keys(live, seeds)])
        self._version = version
        scored = query.memo[memo_key] = self.aggregate(seeds, values[1:])
        return top_k(*scored, k)

    def _keys(self, version: str, seeds: list[int]) -> list[str]:
        prefix = f"{self._prefix}{version}:"
        return [prefix + str(s) for s in seeds]

    def score(self, seeds: list[int], rows: list[bytes | None], k: int) -> ChannelResult:
        """Aggregate the seeds' neighbour rows (public for offline evaluation with rows from elsewhere)."""
        return top_k(*self.aggregate(seeds, rows), k)

    def aggregate(self, seeds: list[int], rows: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """(every neighbour, its weighted similarity sum), seeds excluded, ids ascending."""
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
        ids_parts: list[np.ndarray] = []
        score_parts: list[np.ndarray] = []
        for p, row in enumerate(rows):
            if not row:
                continue
            ids, sims = unpack_row(row)
            ids_parts.append(ids)
            score_parts.append(sims.astype(np.float64) * self._weights[p])
        if not ids_parts:
            return empty
        ids = np.concatenate(ids_parts)
        sc = np.concatenate(score_parts)
        keep = ~np.isin(ids, np.asarray(seeds, dtype=np.int64))
        ids, sc = ids[keep], sc[keep]
        if ids.size == 0:
            return empty
        uniq, inv = np.unique(ids, return_inverse=True)
        return uniq, np.bincount(inv, weights=sc, minlength=uniq.size)


__all__ = ["Item2ItemChannel", "top_k", "unique_recent"]
