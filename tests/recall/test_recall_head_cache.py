"""The popular and fresh channels' shared head cache: reads on a miss only, refreshed in the background."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import pytest

from recall.categories import ItemCategories, preferred_categories, query_preferences
from recall.channel import RecallQuery
from recall.channels.popular import PopularChannel
from recall.redis_io import HeadCache, async_redis
from recall.trending import TrendingStore
from recall_helpers import HOUR_MS, T0_MS, events_table


class Source:
    """A fetch over an in-memory table of heads, recording every call (the cache's contract, no Redis)."""

    def __init__(self) -> None:
        self.sets: dict[str, list[int]] = {"g": [1, 2, 3], "c:a": [4, 5]}
        self.calls: list[tuple[list[str], int, int]] = []
        self.fail = False

    async def fetch(self, keys: list[str], size: int, now_ms: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        self.calls.append((list(keys), size, now_ms))
        if self.fail:
            raise ConnectionError("down")
        out = []
        for key in keys:
            items = np.asarray(self.sets.get(key, [])[:size], dtype=np.int64)
            out.append((items, items.astype(np.float64), now_ms))
        return out


def test_a_miss_reads_once_then_requests_are_served_in_process():
    src = Source()

    async def scenario():
        cache = HeadCache(60.0, src.fetch)
        first = await cache.heads(["g", "c:a"], 10, 1000)
        again = await cache.heads(["g", "c:a"], 10, 1000)
        bigger = await cache.heads(["g"], 500, 1000)  # the sets are smaller than the head read: still whole
        cache.close()
        return first, again, bigger, dict(cache.stats)

    first, again, bigger, stats = asyncio.run(scenario())
    assert src.calls == [(["g", "c:a"], 64, 1000)]  # one call for both missing heads
    assert first["g"][0].tolist() == again["g"][0].tolist() == bigger["g"][0].tolist() == [1, 2, 3]
    assert stats["misses"] == 2 and stats["hits"] == 3


def test_heads_looked_up_are_refreshed_in_the_background():
    src = Source()

    async def scenario():
        cache = HeadCache(0.2, src.fetch)  # refreshed once 0.1 s old, served while younger than 0.2 s
        await cache.heads(["g", "c:a"], 10, 1000)
        src.sets["g"] = [7, 8, 9]
        seen = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            got = await cache.heads(["g"], 10, 1100, timed=True)
            seen.append(got["g"][0].tolist())
            if seen[-1] == [7, 8, 9]:
                break
            await asyncio.sleep(0.01)
        cache.close()
        return seen, dict(cache.stats)

    seen, stats = asyncio.run(scenario())
    assert seen[0] == [1, 2, 3] and seen[-1] == [7, 8, 9]  # the new head arrived...
    assert stats["misses"] == 2  # ...without any request reading Redis after the first
    assert stats["refreshed"] >= 1
    refreshed = src.calls[1:]
    assert refreshed and all(len(keys) == 1 for keys, _, _ in refreshed)  # one key per refresh call
    assert any(keys == ["g"] and now == 1100 for keys, _, now in refreshed)  # at the latest request time asked


def test_refresh_reads_what_was_asked_and_skips_heads_nobody_wants():
    src = Source()
    src.sets["g"] = list(range(1000))

    async def scenario():
        cache = HeadCache(60.0, src.fetch)
        await cache.heads(["g", "c:a"], 10, 1000)
        cache.close()  # drive refresh() by hand
        assert cache.get("g", 300) is None  # more than the 64 read: a miss, and the next refresh reads more
        n1 = await cache.refresh()
        cache._heads["c:a"].wanted_at -= cache.keep_s + 1  # nobody asked for c:a for longer than keep_s
        assert cache.get("g", 10) is not None  # served from the larger head
        n2 = await cache.refresh()
        return n1, n2

    n1, n2 = asyncio.run(scenario())
    assert (n1, n2) == (2, 1)
    assert src.calls[1:3] == [(["g"], 384, 1000), (["c:a"], 64, 1000)] or src.calls[1:3] == [(["c:a"], 64, 1000), (["g"], 384, 1000)]
    assert src.calls[3:] == [(["g"], 64, 1000)]  # only small asks since: back to their size


def test_a_failed_refresh_leaves_the_head_to_expire_and_the_request_reads_it():
    src = Source()

    async def scenario():
        cache = HeadCache(0.2, src.fetch)
        await cache.heads(["g"], 10, 1000)
        cache.close()
        src.fail = True
        assert await cache.refresh() == 0
        cache._heads["g"].at -= 1.0  # older than ttl_s
        with pytest.raises(ConnectionError):
            await cache.heads(["g"], 10, 1000)  # the channel fails (the merge reports it), no stale head served
        src.fail = False
        got = await cache.heads(["g"], 10, 1000)
        cache.close()
        return got, dict(cache.stats)

    got, stats = asyncio.run(scenario())
    assert got["g"][0].tolist() == [1, 2, 3]
    assert stats["refresh_errors"] == 1 and stats["misses"] == 3


def test_the_cache_off_reads_every_time():
    src = Source()

    async def scenario():
        cache = HeadCache(0.0, src.fetch)
        for _ in range(3):
            await cache.heads(["g"], 10, 1000)
        return cache._task

    assert asyncio.run(scenario()) is None and len(src.calls) == 3


def test_popular_and_fresh_share_one_preference_computation_per_request():
    cats = ItemCategories.from_table(pa.table({"item_id": [1, 2, 3], "category": ["a", "b", "a"]}))
    q = RecallQuery(user_id=1, now_ms=0, recent_items=(1, 2, 3), user_features={"home": "c"})
    got = query_preferences(q, cats, ("home",), 3)
    assert got == preferred_categories(q.user_features, q.recent_items, category_features=("home",), categories=cats, limit=3)
    assert query_preferences(q, cats, ("home",), 3) is got  # memoised on the query
    assert query_preferences(q, cats, ("home",), 1) == {"c": 1.0}  # other arguments: computed again
    assert RecallQuery(user_id=1, now_ms=0) == RecallQuery(user_id=1, now_ms=0, memo={"x": 1})  # not compared


def test_a_popular_channel_keeps_serving_updated_heads_without_request_reads(redis, stack, config, unique_prefix):
    s = TrendingStore(redis, unique_prefix, half_life_hours=6.0, event_weights={"click": 1.0})
    s.bootstrap(events_table([(1, 10, 0), (2, 11, 1), (3, 11, 2)], ["click"] * 3), as_of=T0_MS + 3 * HOUR_MS)
    q = RecallQuery(user_id=1, now_ms=T0_MS + 3 * HOUR_MS)

    async def scenario():
        client = async_redis(stack.redis_url, config.redis)
        ch = PopularChannel(client, unique_prefix, half_life_hours=6.0, category_boost=0.0, cache_s=0.2)
        try:
            first = await ch.recall(q, 5)
            s.apply([(12, T0_MS + 3 * HOUR_MS, 5.0)], partition="p:0", first_offset=0, last_offset=0)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                latest = await ch.recall(q, 5)
                if latest.items.tolist()[:1] == [12]:
                    break
                await asyncio.sleep(0.02)
            return first, latest, dict(ch._cache.stats)
        finally:
            ch.close()
            await client.aclose()

    first, latest, stats = asyncio.run(scenario())
    assert first.items.tolist() == [11, 10]
    assert latest.items.tolist() == [12, 11, 10]
    assert stats["misses"] == 1 and stats["refreshed"] >= 1  # the update came in through the background refresh


def test_a_larger_ask_gets_the_cached_head_now_and_the_larger_one_after_the_next_refresh():
    src = Source()
    src.sets["g"] = list(range(1000))

    async def scenario():
        cache = HeadCache(60.0, src.fetch)
        await cache.heads(["g"], 10, 1000)
        cache.close()
        short = await cache.heads(["g"], 300, 1000)  # no Redis read on the request path...
        calls_before_refresh = len(src.calls)
        await cache.refresh()  # ...the refresh reads what was asked
        full = await cache.heads(["g"], 300, 1000)
        strict = await cache.heads(["g"], 700, 1000, short_ok=False)  # the old rule: read it now
        return short, calls_before_refresh, full, strict, dict(cache.stats)

    short, calls_before_refresh, full, strict, stats = asyncio.run(scenario())
    assert short["g"][0].size == 64 and calls_before_refresh == 1
    assert full["g"][0].size == 384 and strict["g"][0].size == 896
    assert src.calls[1:] == [(["g"], 384, 1000), (["g"], 896, 1000)]
    assert stats["short"] == 1 and stats["misses"] == 2

