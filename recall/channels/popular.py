"""The popular / trending channel: the highest decayed counts, globally and in the user's preferred categories.

One transaction (the keys share a slot) reads the epoch ``t0``, the global
top k and the top k of each preferred category (:func:`recall.categories.preferred_categories`:
user features named in ``category_features``, else the categories of the
recent items). An item's score is its decayed count as of the request
(``stored * exp(-(now - t0) / tau)``, see :mod:`recall.trending`) times
``1 + boost * preference`` for the strongest preferred category it is in, so a
user's categories climb without pushing out the global hits entirely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from recall.categories import ItemCategories, preferred_categories
from recall.channel import ChannelResult, RecallQuery
from recall.channels.item2item import top_k
from recall.redis_io import AsyncRedis
from recall.trending import TrendingKeys


class PopularChannel:
    """Decayed-count popularity, personalised by category (see the module docstring)."""

    def __init__(self, client: AsyncRedis, namespace: str, *, half_life_hours: float,
                 categories: ItemCategories | None = None, category_features: Sequence[str] = (),
                 max_categories: int = 3, category_boost: float = 2.0, name: str = "popular") -> None:
        self.name = name
        self.client = client
        self.keys = TrendingKeys.of(namespace)
        self.tau_ms = half_life_hours * 3_600_000.0 / math.log(2)
        self.categories = categories
        self.category_features = tuple(category_features)
        self.max_categories = max_categories
        self.category_boost = category_boost

    @classmethod
    def from_config(cls, client: AsyncRedis, config: object, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "PopularChannel":
        rc = config.recall  # type: ignore[attr-defined]
        return cls(client, namespace or config.features.project, half_life_hours=rc.trending_half_life_hours,  # type: ignore[attr-defined]
                   categories=categories, category_features=rc.category_features,
                   max_categories=rc.preferred_categories, category_boost=rc.popular_category_boost)

    def preferences(self, query: RecallQuery) -> dict[str, float]:
        return preferred_categories(query.user_features, query.recent_items, category_features=self.category_features,
                                    categories=self.categories, limit=self.max_categories)

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        if k <= 0:
            return ChannelResult.empty()
        prefs = self.preferences(query) if self.category_boost > 0 else {}
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.keys.meta, "t0")
        pipe.zrevrange(self.keys.glob, 0, k - 1, withscores=True)
        for c in prefs:
            pipe.zrevrange(self.keys.cat(c), 0, k - 1, withscores=True)
        t0, glob, *per_cat = await pipe.execute()
        if t0 is None:
            return ChannelResult.empty()
        factor = math.exp(-(query.now_ms - int(t0)) / self.tau_ms)
        return self.combine(glob, list(zip(prefs.values(), per_cat)), factor, k)

    def combine(self, glob: list[tuple[bytes, float]], per_cat: list[tuple[float, list[tuple[bytes, float]]]],
                factor: float, k: int) -> ChannelResult:
        counts: dict[int, float] = {}
        boost: dict[int, float] = {}
        for member, score in glob:
            counts[int(member)] = score
        for pref, rows in per_cat:
            for member, score in rows:
                item = int(member)
                counts[item] = score
                if pref > boost.get(item, 0.0):
                    boost[item] = pref
        if not counts:
            return ChannelResult.empty()
        items = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        base = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * factor
        mult = 1.0 + self.category_boost * np.fromiter((boost.get(i, 0.0) for i in counts), dtype=np.float64, count=len(counts))
        return top_k(items, base * mult, k)


__all__ = ["PopularChannel"]
