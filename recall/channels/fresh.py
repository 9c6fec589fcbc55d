"""The fresh-item channel: the newest items published in the last ``fresh_max_age_hours``, so new content gets exposure.

One transaction reads the newest k items published in ``[now - max_age, now]``
globally and in each preferred category (as the popular channel chooses
them). The score is the remaining freshness ``1 - age / max_age`` in [0, 1]
times ``1 + boost * preference`` for items of a preferred category.
Items dated after ``now`` (scheduled) are not returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recall.categories import ItemCategories, preferred_categories
from recall.channel import ChannelResult, RecallQuery
from recall.channels.item2item import top_k
from recall.fresh import FreshKeys
from recall.redis_io import AsyncRedis


class FreshChannel:
    """Recently published items (see the module docstring)."""

    def __init__(self, client: AsyncRedis, namespace: str, *, max_age_hours: float,
                 categories: ItemCategories | None = None, category_features: Sequence[str] = (),
                 max_categories: int = 3, category_boost: float = 2.0, name: str = "fresh") -> None:
        self.name = name
        self.client = client
        self.keys = FreshKeys.of(namespace)
        self.max_age_ms = int(max_age_hours * 3_600_000)
        self.categories = categories
        self.category_features = tuple(category_features)
        self.max_categories = max_categories
        self.category_boost = category_boost

    @classmethod
    def from_config(cls, client: AsyncRedis, config: object, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "FreshChannel":
        rc = config.recall  # type: ignore[attr-defined]
        return cls(client, namespace or config.features.project, max_age_hours=rc.fresh_max_age_hours,  # type: ignore[attr-defined]
                   categories=categories, category_features=rc.category_features,
                   max_categories=rc.preferred_categories, category_boost=rc.fresh_category_boost)

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        if k <= 0:
            return ChannelResult.empty()
        prefs = preferred_categories(query.user_features, query.recent_items, category_features=self.category_features,
                                     categories=self.categories, limit=self.max_categories) if self.category_boost > 0 else {}
        now = int(query.now_ms)
        lo = now - self.max_age_ms
        pipe = self.client.pipeline(transaction=True)
        for key in [self.keys.glob, *[self.keys.cat(c) for c in prefs]]:
            pipe.zrevrangebyscore(key, now, lo, start=0, num=k, withscores=True)
        glob, *per_cat = await pipe.execute()
        published: dict[int, float] = {}
        boost: dict[int, float] = {}
        for member, ts in glob:
            published[int(member)] = ts
        for pref, rows in zip(prefs.values(), per_cat):
            for member, ts in rows:
                item = int(member)
                published[item] = ts
                if pref > boost.get(item, 0.0):
                    boost[item] = pref
        if not published:
            return ChannelResult.empty()
        n = len(published)
        items = np.fromiter(published.keys(), dtype=np.int64, count=n)
        age = now - np.fromiter(published.values(), dtype=np.float64, count=n)
        freshness = np.clip(1.0 - age / self.max_age_ms, 0.0, 1.0)
        mult = 1.0 + self.category_boost * np.fromiter((boost.get(i, 0.0) for i in published), dtype=np.float64, count=n)
        return top_k(items, freshness * mult, k)


__all__ = ["FreshChannel"]
