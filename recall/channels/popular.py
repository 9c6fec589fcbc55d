"""The popular / trending channel: the highest decayed counts, globally and in the user's preferred categories.

One script call (the keys share a slot; entries come back packed, see
:data:`recall.redis_io.TOP_PACKED`) reads the epoch ``t0``, the global
top k and the top k of each preferred category (:func:`recall.categories.preferred_categories`:
user features named in ``category_features``, else the categories of the
recent items). An item's score is its decayed count as of the request
(``stored * exp(-(now - t0) / tau)``, see :mod:`recall.trending`) times
``1 + boost * preference`` for the strongest preferred category it is in, so a
user's categories climb without pushing out the global hits entirely.

The heads of the sets are the same for every user: with ``cache_s`` (config
``channel_cache_s``) they are kept in-process, read again in the background
once ``cache_s / 2`` old (:class:`recall.redis_io.HeadCache`), and a request
reads Redis only for a head nobody has asked for in the last 30 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from recall.categories import ItemCategories, query_preferences
from recall.channel import ChannelResult, RecallQuery
from recall.channels.item2item import top_k
from recall.redis_io import TOP_PACKED, AsyncRedis, HeadCache, unpack_pairs
from recall.trending import TrendingKeys


class PopularChannel:
    """Decayed-count popularity, personalised by category (see the module docstring)."""

    def __init__(self, client: AsyncRedis, namespace: str, *, half_life_hours: float,
                 categories: ItemCategories | None = None, category_features: Sequence[str] = (),
                 max_categories: int = 3, category_boost: float = 2.0, cache_s: float = 0.0,
                 name: str = "popular") -> None:
        self.name = name
        self.client = client
        self.keys = TrendingKeys.of(namespace)
        self.tau_ms = half_life_hours * 3_600_000.0 / math.log(2)
        self.categories = categories
        self.category_features = tuple(category_features)
        self.max_categories = max_categories
        self.category_boost = category_boost
        self._read = client.register_script(TOP_PACKED)
        self._cache = HeadCache(cache_s, self._fetch)

    @classmethod
    def from_config(cls, client: AsyncRedis, config: object, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "PopularChannel":
        rc = config.recall  # type: ignore[attr-defined]
        return cls(client, namespace or config.features.project, half_life_hours=rc.trending_half_life_hours,  # type: ignore[attr-defined]
                   categories=categories, category_features=rc.category_features,
                   max_categories=rc.preferred_categories, category_boost=rc.popular_category_boost,
                   cache_s=rc.channel_cache_s)

    async def warm_up(self) -> None:
        """Open a connection before the first request (called by the server's start)."""
        await self.client.ping()

    def preferences(self, query: RecallQuery) -> dict[str, float]:
        return query_preferences(query, self.categories, self.category_features, self.max_categories)

    async def _fetch(self, keys: list[str], size: int, now_ms: int) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """One script call: the epoch t0 and the top `size` of each set (t0 None: no trending state yet)."""
        t0, *packed = await self._read(keys=[self.keys.meta, *keys], args=["t0", size])
        epoch = int(t0) if t0 else None
        return [(*unpack_pairs(buf), epoch) for buf in packed]

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        if k <= 0:
            return ChannelResult.empty()
        prefs = self.preferences(query) if self.category_boost > 0 else {}
        keys = [self.keys.glob, *[self.keys.cat(c) for c in prefs]]
        # counts are stored time-independently (decayed on read): the heads do not depend on the request time
        heads = await self._cache.heads(keys, k, query.now_ms)

        def counts(key: str) -> tuple[np.ndarray, np.ndarray]:
            items, stored, t0 = heads[key]
            if t0 is None:
                return items[:0], stored[:0]
            return items[:k], stored[:k] * math.exp(-(query.now_ms - t0) / self.tau_ms)

        return self.combine(counts(self.keys.glob), [(p, counts(self.keys.cat(c))) for c, p in prefs.items()], 1.0, k)

    def close(self) -> None:
        """Stop refreshing the cached heads."""
        self._cache.close()

    def combine(self, glob: tuple[np.ndarray, np.ndarray], per_cat: list[tuple[float, tuple[np.ndarray, np.ndarray]]],
                factor: float, k: int) -> ChannelResult:
        """Union of the global and per-category lists; count x factor x (1 + boost x best preference)."""
        items = [glob[0]]
        counts = [glob[1]]
        prefs = [np.zeros(glob[0].size)]
        for pref, (its, sc) in per_cat:
            items.append(its)
            counts.append(sc)
            prefs.append(np.full(its.size, pref))
        all_items = np.concatenate(items)
        if all_items.size == 0:
            return ChannelResult.empty()
        uniq, inv = np.unique(all_items, return_inverse=True)
        count = np.zeros(uniq.size)
        count[inv] = np.concatenate(counts)  # the same item has the same count in every set
        best = np.zeros(uniq.size)
        np.maximum.at(best, inv, np.concatenate(prefs))
        return top_k(uniq, count * factor * (1.0 + self.category_boost * best), k)


__all__ = ["PopularChannel"]
