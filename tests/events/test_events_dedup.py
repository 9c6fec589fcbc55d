"""The claim / done / release protocol on a real Redis: one script per step on a single node, pipelines on a cluster."""

from __future__ import annotations

import asyncio

import pytest

from cascade.config import Config
from events.dedup import CLAIM_PREFIX, DONE, Dedup, async_redis_client
from stack.redis_cluster import EmbeddedRedisCluster


def scenario(config: Config, url: str, prefix: str, cluster: bool) -> dict:
    cfg = config.model_copy(update={"redis": config.redis.model_copy(update={"cluster": cluster})})

    async def run() -> dict:
        dedup = Dedup(async_redis_client(url, cfg), cfg, prefix)
        ids = [f"evt-{i}" for i in range(40)]  # 40 keys: spread over every node of a cluster
        try:
            first = await dedup.claim(ids[:30], "t1")
            await dedup.mark_done(ids[:20])  # t1 published 0-19; 20-29 still in flight
            second = await dedup.claim(ids, "t2")
            claimed_by_t1 = await dedup.redis.get(dedup.key("evt-25"))
            done_ttl = await dedup.redis.pttl(dedup.key("evt-3"))
            pending_ttl = await dedup.redis.pttl(dedup.key("evt-35"))
            await dedup.release(ids[20:30])  # t1's publish failed
            third = await dedup.claim(ids[20:30], "t3")
            nothing = await dedup.claim([], "t4")
            assert await dedup.mark_done([]) and await dedup.release([])
            return {"first": first, "second": second, "third": third, "nothing": nothing, "claimed_by_t1": claimed_by_t1,
                    "done_ttl": done_ttl, "pending_ttl": pending_ttl, "cluster": dedup.cluster}
        finally:
            await dedup.aclose()

    return asyncio.run(run())


def check(out: dict, config: Config) -> None:
    assert out["first"].owned == list(range(30)) and not out["first"].done and not out["first"].busy
    second = out["second"]
    assert second.done == list(range(20))  # acked before: duplicates
    assert second.busy == list(range(20, 30))  # another call is publishing them
    assert second.owned == list(range(30, 40))
    assert out["claimed_by_t1"] == CLAIM_PREFIX + b"t1"
    assert 0.9 * config.events.dedup_ttl_s * 1000 < out["done_ttl"] <= config.events.dedup_ttl_s * 1000
    assert 0 < out["pending_ttl"] <= config.events.dedup_pending_ttl_s * 1000
    assert out["third"].owned == list(range(10))  # released: the retry publishes them
    assert out["nothing"].owned == [] and not out["nothing"].degraded


def test_dedup_on_a_single_redis(config: Config, stack, redis, unique_prefix: str) -> None:
    out = scenario(config, stack.redis_url, unique_prefix, cluster=False)
    assert out["cluster"] is False
    check(out, config)
    assert redis.get(f"{unique_prefix}:eid:evt-0") == DONE


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("events-cluster"), masters=3).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_dedup_on_a_redis_cluster(config: Config, redis_cluster, unique_prefix: str) -> None:
    out = scenario(config, redis_cluster.url, unique_prefix, cluster=True)
    assert out["cluster"] is True
    check(out, config)


def test_redis_down_degrades_to_no_dedup(config: Config) -> None:
    cfg = config.model_copy(update={"events": config.events.model_copy(update={"dedup_timeout_s": 0.5})})

    async def run():
        dedup = Dedup(async_redis_client("redis://127.0.0.1:9/0", cfg), cfg, "x")  # port 9: nothing listens
        try:
            return await dedup.claim(["a", "b"], "t"), await dedup.mark_done(["a"]), await dedup.release(["b"])
        finally:
            await dedup.aclose()

    claim, marked, released = asyncio.run(run())
    assert claim.degraded and claim.owned == [0, 1] and not claim.done and not claim.busy
    assert marked is False and released is False
