"""Fresh items: the publication window, per-category sets, pruning and the fresh channel."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from recall.categories import ItemCategories, preferred_categories
from recall.channel import RecallQuery
from recall.channels.fresh import FreshChannel
from recall.fresh import FreshIndex
from recall.redis_io import async_redis
from recall_helpers import HOUR_MS, T0_MS

NOW = T0_MS + 100 * HOUR_MS


def catalogue(hours_before_now: dict[int, float], categories: dict[int, str]) -> pa.Table:
    items = sorted(hours_before_now)
    return pa.table({
        "item_id": pa.array(items, pa.int64()),
        "category": pa.array([categories[i] for i in items]),
        "published_ts": pa.array([int((NOW - hours_before_now[i] * HOUR_MS) * 1000) for i in items], pa.int64()).cast(pa.timestamp("us", "UTC")),
    })


AGES = {1: 1.0, 2: 10.0, 3: 47.0, 4: 49.0, 5: 200.0, 6: -5.0}  # hours before NOW (6: scheduled 5h ahead)
CATS = {1: "news", 2: "sport", 3: "sport", 4: "news", 5: "news", 6: "sport"}


def run_channel(stack, config, ns, query, k, **kw):
    async def scenario():
        client = async_redis(stack.redis_url, config.redis)
        try:
            return await FreshChannel(client, ns, max_age_hours=48.0, **kw).recall(query, k)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_window_order_and_freshness_scores(redis, stack, config, unique_prefix):
    cats = ItemCategories.from_table(catalogue(AGES, CATS))
    idx = FreshIndex(redis, unique_prefix, max_age_hours=48.0, categories=cats)
    assert idx.bootstrap(catalogue(AGES, CATS), NOW, lookahead_hours=6) == 4  # 1, 2, 3 and the scheduled 6
    res = run_channel(stack, config, unique_prefix, RecallQuery(user_id=1, now_ms=NOW), 10, category_boost=0.0)
    assert res.items.tolist() == [1, 2, 3]  # newest first; 4 and 5 too old, 6 not yet published
    assert res.scores.tolist() == pytest.approx([1 - 1 / 48, 1 - 10 / 48, 1 - 47 / 48], rel=1e-6)
    # later, 3 ages out of the window even before a prune, and 6 is published
    later = NOW + 6 * HOUR_MS
    res = run_channel(stack, config, unique_prefix, RecallQuery(user_id=1, now_ms=later), 10, category_boost=0.0)
    assert res.items.tolist() == [6, 1, 2]
    assert idx.prune(later) == 2  # 3 from the global set and from "sport"
    assert redis.zcard(idx.keys.glob) == 3
    # k bounds the answer
    assert run_channel(stack, config, unique_prefix, RecallQuery(user_id=1, now_ms=NOW), 1, category_boost=0.0).items.tolist() == [1]


def test_preferred_category_items_are_boosted(redis, stack, config, unique_prefix):
    cats = ItemCategories.from_table(catalogue(AGES, CATS))
    idx = FreshIndex(redis, unique_prefix, max_age_hours=48.0, categories=cats)
    idx.bootstrap(catalogue(AGES, CATS), NOW)
    idx.add([7], [NOW - 2 * HOUR_MS])  # a newly published item, no category known
    assert redis.zscore(idx.keys.glob, 7) == NOW - 2 * HOUR_MS
    q = RecallQuery(user_id=1, now_ms=NOW, recent_items=(3,))  # the user read sport recently
    res = run_channel(stack, config, unique_prefix, q, 3, categories=cats, category_boost=2.0)
    assert res.items.tolist() == [2, 1, 7]  # sport's 2 x 3 beats the newer items
    assert res.scores[0] == pytest.approx(3 * (1 - 10 / 48))


def test_preferred_categories_from_features_and_recent_items():
    cats = ItemCategories.from_table(pa.table({"item_id": [1, 2, 3], "category": [["a", "b"], ["b"], ["c"]]}))
    assert cats.of(1) == ["a", "b"] and cats.of(99) == []
    got = preferred_categories({"home": "z"}, [2, 1, 3], category_features=("home",), categories=cats, limit=3)
    # recent: b = 1 + 0.85/2, c = 0.85^2, a = 0.85/2, together weighing as much as the feature's z
    assert list(got) == ["z", "b", "c"] and got["z"] == 1.0
    assert got["b"] == pytest.approx(1.425 / (1.425 + 0.7225 + 0.425)) and 0 < got["c"] < got["b"]
    assert preferred_categories({}, [], categories=cats) == {}
    assert preferred_categories({"home": ["p", "q"]}, [], category_features=("home",), limit=1) == {"p": 1.0}


def test_cached_heads_follow_the_request_time(redis, stack, config, unique_prefix):
    idx = FreshIndex(redis, unique_prefix, max_age_hours=48.0)
    idx.bootstrap(catalogue(AGES, CATS), NOW)

    async def scenario():
        client = async_redis(stack.redis_url, config.redis)
        try:
            ch = FreshChannel(client, unique_prefix, max_age_hours=48.0, category_boost=0.0, cache_s=600.0)
            first = await ch.recall(RecallQuery(user_id=1, now_ms=NOW), 10)
            redis.delete(idx.keys.glob)
            # 100 s later: the head read at NOW is reused, its window moved on (3 is 47h + 100s old... still in)
            soon = await ch.recall(RecallQuery(user_id=1, now_ms=NOW + 100_000), 10)
            # an hour later is beyond cache_s of request time: read again (the set is gone now)
            later = await ch.recall(RecallQuery(user_id=1, now_ms=NOW + HOUR_MS), 10)
            return first, soon, later
        finally:
            await client.aclose()

    first, soon, later = asyncio.run(scenario())
    assert first.items.tolist() == soon.items.tolist() == [1, 2, 3]
    assert soon.scores[0] < first.scores[0]  # freshness at the later time
    assert len(later.items) == 0
