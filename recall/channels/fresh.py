"""The fresh-item channel: the newest items published in the last ``fresh_max_age_hours``, so new content gets exposure.

One script call (packed replies, see :data:`recall.redis_io.RECENT_PACKED`) reads the newest k items published in ``[now - max_age, now]``
globally and in each preferred category (as the popular channel chooses
them). The score is the remaining freshness ``1 - age / max_age`` in [0, 1]
times ``1 + boost * preference`` for items of a preferred category.
Items dated after ``now`` (scheduled) are not returned. With ``cache_s`` the
heads are kept in-process and refreshed in the background as the popular
channel does, each read for the latest request time that asked for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recall.categories import ItemCategories, query_preferences
from recall.channel import ChannelResult, RecallQuery
from recall.channels.item2item import top_k
from recall.fresh import FreshKeys
from recall.redis_io import RECENT_PACKED, AsyncRedis, HeadCache, unpack_pairs


class FreshChannel:
    """Recently published items (see the module docstring)."""

    def __init__(self, client: AsyncRedis, namespace: str, *, max_age_hours: float,
                 categories: ItemCategories | None = None, category_features: Sequence[str] = (),
                 max_categories: int = 3, category_boost: float = 2.0, cache_s: float = 0.0,
                 name: str = "fresh") -> None:
        self.name = name
        self.client = client
        self.keys = FreshKeys.of(namespace)
        self.max_age_ms = int(max_age_hours * 3_600_000)
        self.categories = categories
        self.category_features = tuple(category_features)
        self.max_categories = max_categories
        self.category_boost = category_boost
        self._read = client.register_script(RECENT_PACKED)
        self._cache = HeadCache(cache_s, self._fetch)

    @classmethod
    def from_config(cls, client: AsyncRedis, config: object, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "FreshChannel":
        rc = config.recall  # type: ignore[attr-defined]
        return cls(client, namespace or config.features.project, max_age_hours=rc.fresh_max_age_hours,  # type: ignore[attr-defined]
                   categories=categories, category_features=rc.category_features,
                   max_categories=rc.preferred_categories, category_boost=rc.fresh_category_boost,
                   cache_s=rc.channel_cache_s)

    async def warm_up(self) -> None:
        """Open a connection before the first request (called by the server's start)."""
        await self.client.ping()

    async def _fetch(self, keys: list[str], size: int, now_ms: int) -> list[tuple[np.ndarray, np.ndarray, None]]:
        """One script call: the newest `size` items of each set published in ``[now - max_age, now]``."""
        packed = await self._read(keys=keys, args=[now_ms, now_ms - self.max_age_ms, size])
        return [(*unpack_pairs(buf), None) for buf in packed]

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        if k <= 0:
            return ChannelResult.empty()
        prefs = query_preferences(query, self.categories, self.category_features,
                                  self.max_categories) if self.category_boost > 0 else {}
        now = int(query.now_ms)
        lo = now - self.max_age_ms
        keys = [self.keys.glob, *[self.keys.cat(c) for c in prefs]]
        heads = await self._cache.heads(keys, k, now, timed=True)

        def window(key: str) -> tuple[np.ndarray, np.ndarray]:
            items, published, _ = heads[key]
            ok = (published >= lo) & (published <= now)  # a reused head was read for a slightly different now
            return items[ok][:k], published[ok][:k]

        items = [window(self.keys.glob)]
        prefs_of = [np.zeros(items[0][0].size)]
        for c, pref in prefs.items():
            items.append(window(self.keys.cat(c)))
            prefs_of.append(np.full(items[-1][0].size, pref))
        all_items = np.concatenate([i for i, _ in items])
        if all_items.size == 0:
            return ChannelResult.empty()
        uniq, inv = np.unique(all_items, return_inverse=True)
        published = np.zeros(uniq.size)
        published[inv] = np.concatenate([p for _, p in items])
        best = np.zeros(uniq.size)
        np.maximum.at(best, inv, np.concatenate(prefs_of))
        freshness = np.clip(1.0 - (now - published) / self.max_age_ms, 0.0, 1.0)
        return top_k(uniq, freshness * (1.0 + self.category_boost * best), k)

    def close(self) -> None:
        """Stop refreshing the cached heads."""
        self._cache.close()


__all__ = ["FreshChannel"]
