"""The Redis-backed parts against the real server: impression history (both layouts), block lists, item state,
the engine's one round trip, and failing open when Redis is slow or gone."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cascade.config import RerankConfig
from rerank.engine import RerankEngine, async_redis_client
from rerank.impressions import DAY_MS, HOUR_MS, AsyncImpressionHistory, ImpressionHistory
from rerank.rules_config import load_rules
from rerank.stores import BlockLists, ItemStateStore
from rerank.types import Candidate, ItemKind, RerankInput

NOW = 1_750_000_000_000


def _history(redis, prefix: str, backend: str, **kw) -> ImpressionHistory:
    return ImpressionHistory.from_config(redis, RerankConfig(impressions_backend=backend, **kw), prefix)


@pytest.mark.parametrize("backend", ["zset", "bloom"])
def test_history_record_and_seen(redis, unique_prefix, backend):
    h = _history(redis, unique_prefix, backend)
    h.record("u1", ["a", "b", "c"], NOW - 2 * HOUR_MS)
    h.record("u1", ["d"], NOW)
    h.record("u2", ["z"], NOW)
    ids = ["a", "b", "x", "d", "z"]
    assert h.seen("u1", ids, since_ms=NOW - 3 * HOUR_MS, now_ms=NOW) == [True, True, False, True, False]
    assert h.seen("u1", [], since_ms=0, now_ms=NOW) == []
    assert h.seen("nobody", ids, since_ms=0, now_ms=NOW) == [False] * 5
    if backend == "zset":  # exact times: a window that starts after the first impressions excludes them
        assert h.seen("u1", ids, since_ms=NOW - HOUR_MS, now_ms=NOW) == [False, False, False, True, False]
        assert h.seen_since("u1", ["a", "d"], since_ms=0, now_ms=NOW) == {"a": NOW - 2 * HOUR_MS, "d": NOW}
        assert h.seen("u1", ["d"], since_ms=NOW + 1, now_ms=NOW) == [False]


def test_zset_history_is_bounded_by_size_time_and_ttl(redis, unique_prefix):
    h = _history(redis, unique_prefix, "zset", impressions_max_items=5, impressions_retention_hours=24)
    key = h.backend.key("u1")
    h.record("u1", ["old"], NOW - 30 * HOUR_MS)
    h.record("u1", [f"i{i}" for i in range(8)], NOW)
    assert redis.zcard(key) == 5  # newest 5; "old" is past the 24h retention anyway
    assert redis.zscore(key, "old") is None
    assert 23 * HOUR_MS < redis.pttl(key) <= 24 * HOUR_MS
    h.record("u1", ["i0"], NOW - HOUR_MS)  # an older re-impression never moves the time back (ZADD GT)
    assert redis.zscore(key, "i0") in (None, float(NOW))


def test_bloom_history_days_and_false_positive_rate(redis, unique_prefix):
    h = _history(redis, unique_prefix, "bloom", impressions_retention_hours=72)
    yesterday = NOW - DAY_MS
    h.record("u1", [f"seen{i}" for i in range(1000)], yesterday)
    keys = [k.decode() for k in redis.keys(f"{unique_prefix}:u:{{u1}}:seenbf:*")]
    assert keys == [h.backend.key("u1", yesterday // DAY_MS)]
    assert redis.pttl(keys[0]) > 72 * HOUR_MS  # retention + a day
    seen = [f"seen{i}" for i in range(1000)]
    assert all(h.seen("u1", seen, since_ms=yesterday, now_ms=NOW))  # never a false negative
    unseen = [f"new{i}" for i in range(5000)]
    fp = sum(h.seen("u1", unseen, since_ms=yesterday, now_ms=NOW))
    assert fp / len(unseen) < 0.01
    # day granularity: a window starting today does not look at yesterday's filter
    assert not any(h.seen("u1", seen[:50], since_ms=(NOW // DAY_MS) * DAY_MS, now_ms=NOW))


def test_async_history_same_behaviour(stack, config, unique_prefix):
    async def scenario():
        client = async_redis_client(stack.redis_url, config)
        try:
            h = AsyncImpressionHistory.from_config(client, config.rerank, unique_prefix)
            await h.record("u9", ["a", "b"], NOW)
            return await h.seen("u9", ["a", "x", "b"], since_ms=NOW - HOUR_MS, now_ms=NOW)
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == [True, False, True]


def _inputs() -> RerankInput:
    cands = [Candidate(f"i{i}", 0.9 - i / 100, category=f"c{i % 4}", author=f"a{i % 7}") for i in range(40)]
    cands.append(Candidate("blocked_by_author", 0.95, author="troll"))
    inj = [Candidate("ad_gone", 0.9, kind=ItemKind.AD), Candidate("ad_ok", 0.8, kind=ItemKind.AD)]
    return RerankInput("u1", 12, cands, inj, now_ms=NOW, blocked_item_ids=frozenset({"i5"}))


def test_engine_reads_all_redis_signals_in_one_round_trip(stack, patient_config, redis, unique_prefix):
    config = patient_config
    ImpressionHistory.from_config(redis, config.rerank, unique_prefix).record("u1", ["i0", "i1"], NOW - HOUR_MS)
    BlockLists(redis, unique_prefix).block_items("u1", ["i2"])
    BlockLists(redis, unique_prefix).block_authors("u1", ["troll"])
    state = ItemStateStore(redis, unique_prefix)
    state.set("i3", available=False)
    state.set("i4", expires_at_ms=NOW - 1)
    state.set("ad_gone", available=False)
    state.set("i6", expires_at_ms=NOW + HOUR_MS)

    async def scenario():
        engine = RerankEngine.from_config(config, stack.redis_url, prefix=unique_prefix)
        pipelines = []
        real = engine.redis.pipeline

        def spy(*args, **kwargs):
            pipelines.append(real(*args, **kwargs))
            return pipelines[-1]

        engine.redis.pipeline = spy
        try:
            return await engine.rerank(_inputs()), pipelines
        finally:
            await engine.aclose()

    result, pipelines = asyncio.run(scenario())
    assert len(pipelines) == 1  # seen + block lists + item state: one round trip
    assert not result.degraded
    dropped = {d.item_id: (d.reason.rule, d.reason.explanation) for d in result.dropped}
    assert dropped["i0"] == ("seen_filter", "shown to the user 1.0h ago (window 3.0d)")
    assert dropped["i1"][0] == "seen_filter"
    assert dropped["i2"] == ("blocked_filter", "item blocked by the user (block list)")
    assert dropped["i5"] == ("blocked_filter", "item blocked by the user (request)")
    assert dropped["blocked_by_author"] == ("blocked_filter", "author 'troll' blocked by the user (block list)")
    assert dropped["i3"] == ("availability_filter", "out of stock (available=false)")
    assert dropped["i4"][0] == "availability_filter" and "expired" in dropped["i4"][1]
    assert dropped["ad_gone"] == ("availability_filter", "out of stock (available=false)")
    assert set(dropped) == {"i0", "i1", "i2", "i3", "i4", "i5", "blocked_by_author", "ad_gone"}
    ids = result.item_ids
    assert len(ids) == 12 and not set(ids) & set(dropped)
    assert ids[3] == "ad_ok" and result.items[3].kind == ItemKind.AD
    assert "i6" in ids
    assert set(result.timings_ms) >= {"fetch", "seen_filter", "diversity", "total"}


class _BlackHole:
    """A TCP listener that accepts and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"

    def close(self) -> None:
        self.sock.close()


def _free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{s.getsockname()[1]}/0"


@pytest.mark.parametrize("where", ["hangs", "down"])
def test_engine_fails_open_when_redis_hangs_or_is_down(config, where):
    hole = _BlackHole() if where == "hangs" else None
    url = hole.url if hole else _free_port_url()
    settings = config.rerank.model_copy(update={"fetch_timeout_ms": 50.0})

    async def scenario():
        engine = RerankEngine(load_rules(None, settings), settings, redis=async_redis_client(url, config))
        try:
            return await asyncio.wait_for(engine.rerank(_inputs()), 5)
        finally:
            await engine.aclose()

    try:
        result = asyncio.run(scenario())
    finally:
        if hole:
            hole.close()
    assert result.degraded
    code = "TIMEOUT" if where == "hangs" else "UNAVAILABLE"
    assert {(d.rule, d.code) for d in result.degradations} == {
        ("seen_filter", code), ("blocked_filter", code), ("availability_filter", code)}
    assert len(result.items) == 12  # still a full page, from the pure rules
    assert [d.item_id for d in result.dropped] == ["i5"]  # the request's own block list still applies
    assert {d.rule: d.fallback for d in result.degradations}["blocked_filter"] == "request_data_only"


def test_engine_on_a_redis_cluster(patient_config, tmp_path):
    """User keys share a slot (hash tag); the catalogue's item state lives elsewhere: the cluster pipeline splits it."""
    from stack.clients import redis_client
    from stack.redis_cluster import EmbeddedRedisCluster

    config = patient_config
    cluster_config = config.model_copy(update={"redis": config.redis.model_copy(update={"cluster": True})})
    with EmbeddedRedisCluster(tmp_path, masters=3, startup_timeout_s=config.redis.startup_timeout_s) as cluster:
        client = redis_client(cluster.url, config.redis, cluster=True)
        ImpressionHistory.from_config(client, config.rerank, "rc").record("u1", ["i0"], NOW - HOUR_MS)
        BlockLists(client, "rc").block_items("u1", ["i1"])
        ItemStateStore(client, "rc").set("i2", available=False)
        client.close()

        async def scenario():
            engine = RerankEngine.from_config(cluster_config, cluster.url, prefix="rc")
            try:
                assert await engine.warm_up()
                return await engine.rerank(_inputs())
            finally:
                await engine.aclose()

        result = asyncio.run(scenario())
    assert not result.degraded, result.degradations
    assert {d.item_id: d.reason.rule for d in result.dropped} == {
        "i0": "seen_filter", "i1": "blocked_filter", "i5": "blocked_filter", "i2": "availability_filter"}
