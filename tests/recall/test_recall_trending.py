"""Trending counts: bootstrap from the log, stream batches, rebase, the Kafka updater and the popular channel."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest

from proto.cascade.v1.events_pb2 import Event
from recall.categories import ItemCategories
from recall.channel import RecallQuery
from recall.channels.popular import PopularChannel
from recall.redis_io import async_redis
from recall.trending import TrendingStore, TrendingUpdater
from recall_helpers import HOUR_MS, T0_MS, create_topic, events_table
from stack.clients import kafka_consumer, kafka_producer

WEIGHTS = {"click": 1.0, "like": 2.0, "share": 3.0}
CATS = ItemCategories.from_table(pa.table({"item_id": [10, 11, 12, 13], "category": [["x"], ["x", "y"], ["y"], ["z"]]}))
LOG = events_table(
    [(1, 10, 0), (2, 10, 6), (3, 11, 3), (4, 12, 5), (5, 10, 5), (6, 13, -200), (7, 11, 7)],
    ["click", "like", "click", "share", "view", "click", "click"],
)


def at(hours: float) -> int:
    return T0_MS + int(hours * HOUR_MS)


def decayed(events: list[tuple[float, float]], now_h: float, half_life_h: float = 6.0) -> float:
    return sum(wt * 2.0 ** (-(now_h - h) / half_life_h) for h, wt in events)


def store(redis, ns, **kw) -> TrendingStore:
    return TrendingStore(redis, ns, half_life_hours=6.0, event_weights=WEIGHTS, categories=CATS, **kw)


def test_bootstrap_counts_match_hand_computed(redis, unique_prefix):
    s = store(redis, unique_prefix)
    res = s.bootstrap(LOG, as_of=at(6.5))  # the 7h click is after as_of; the view has no weight
    assert (res.items, res.events) == (3, 4)  # 13's click is 200h old: beyond 20 half-lives, left out
    expect = {10: decayed([(0, 1), (6, 2)], 12), 11: decayed([(3, 1)], 12), 12: decayed([(5, 3)], 12)}
    top = dict(s.top(10, at(12)))
    assert top == pytest.approx(expect, rel=1e-9)
    assert [i for i, _ in s.top(10, at(12))] == sorted(expect, key=lambda i: -expect[i])
    assert dict(s.top(10, at(12), category="y")) == pytest.approx({11: expect[11], 12: expect[12]}, rel=1e-9)
    assert dict(s.top(10, at(12), category="x")) == pytest.approx({10: expect[10], 11: expect[11]}, rel=1e-9)
    assert s.meta()["watermark"] == at(6.5)


def test_stream_batches_watermark_offsets_and_rebase(redis, unique_prefix):
    s = store(redis, unique_prefix)
    s.bootstrap(LOG, as_of=at(6.5))
    r = s.apply([(11, at(7), 1.0), (10, at(4), 1.0), (12, at(8), 2.0)], partition="events:0", first_offset=0, last_offset=2)
    assert (r.applied, r.skipped_old) == (2, 1)  # the 4h event is older than the watermark: the log counted it
    again = s.apply([(11, at(7), 1.0)], partition="events:0", first_offset=2, last_offset=2)
    assert again.skipped_redelivered == 1 and again.applied == 0
    expect = {10: decayed([(0, 1), (6, 2)], 20), 11: decayed([(3, 1), (7, 1)], 20), 12: decayed([(5, 3), (8, 2)], 20)}
    assert dict(s.top(10, at(20))) == pytest.approx(expect, rel=1e-9)
    # Moving the epoch rescales every set in place; the decayed counts stay what they were.
    s.rebase(at(300))
    assert s.meta()["t0"] == at(300)
    assert dict(s.top(10, at(20))) == pytest.approx(expect, rel=1e-9)
    assert dict(s.top(10, at(20), category="y")) == pytest.approx({11: expect[11], 12: expect[12]}, rel=1e-9)
    # an event far in the future triggers the rebase by itself
    far = at(300 + 6 * 60)  # 60 half-lives past the epoch
    r = s.apply([(13, far, 1.0)])
    assert r.rebases == 1 and s.top(1, far) == [(13, pytest.approx(1.0))]
    assert s.offsets() == {"events:0": 2}


def test_sets_are_trimmed_to_their_caps(redis, unique_prefix):
    s = store(redis, unique_prefix, max_items=2, max_items_per_category=1)
    s.bootstrap(LOG, as_of=at(6.5))
    assert redis.zcard(s.keys.glob) == 2 and redis.zcard(s.keys.cat("y")) == 1
    s.apply([(20 + i, at(7), 1.0) for i in range(10)])  # grows beyond 110% of the cap: trimmed back
    assert redis.zcard(s.keys.glob) == 2


def test_popular_channel_boosts_preferred_categories(redis, stack, config, unique_prefix):
    s = store(redis, unique_prefix)
    s.bootstrap(LOG, as_of=at(6.5))
    counts = {10: decayed([(0, 1), (6, 2)], 12), 11: decayed([(3, 1)], 12), 12: decayed([(5, 3)], 12)}

    async def scenario():
        client = async_redis(stack.redis_url, config.redis)
        try:
            plain = PopularChannel(client, unique_prefix, half_life_hours=6.0, category_boost=0.0)
            boosted = PopularChannel(client, unique_prefix, half_life_hours=6.0, categories=CATS,
                                     category_features=("syn_user_profile:home_category",), category_boost=4.0)
            a = await plain.recall(RecallQuery(user_id=1, now_ms=at(12)), 10)
            b = await boosted.recall(RecallQuery(user_id=1, now_ms=at(12), user_features={"syn_user_profile:home_category": "y"}), 2)
            c = await plain.recall(RecallQuery(user_id=1, now_ms=at(12)), 0)
            return a, b, c
        finally:
            await client.aclose()

    a, b, c = asyncio.run(scenario())
    assert a.items.tolist() == sorted(counts, key=lambda i: -counts[i])
    assert a.scores.tolist() == pytest.approx(sorted(counts.values(), reverse=True), rel=1e-6)
    # category y (11, 12) gets x5: 12 first, then 11 (5 x 0.354 > 1.25, item 10's count)
    assert b.items.tolist() == [12, 11]
    assert b.scores.tolist() == pytest.approx([5 * counts[12], 5 * counts[11]], rel=1e-6)
    assert len(c.items) == 0


def _event(item: int, hours: float, type_: int = 1, user: int = 1) -> bytes:
    return Event(event_id=f"{user}-{item}-{hours}", type=type_, user_id=str(user), item_id=str(item),
                 timestamp_ms=at(hours)).SerializeToString()


def test_kafka_updater_counts_each_event_once(redis, stack, config, unique_prefix):
    topic = create_topic(stack.kafka_bootstrap, config, f"{unique_prefix}-events")
    s = store(redis, unique_prefix)
    s.bootstrap(LOG, as_of=at(6.5))
    producer = kafka_producer(stack.kafka_bootstrap, config.kafka)
    try:
        values = [
            _event(11, 7),  # click
            _event(12, 8, type_=3),  # share: weight 3
            _event(10, 9, type_=8),  # view: no weight, filtered
            b"\x00\xff not a protobuf",  # undecodable: counted and skipped
            json.dumps({"item_id": "10", "type": "like", "timestamp_ms": at(9)}).encode(),  # JSON records decode too
            _event(10, 1),  # older than the watermark: the bootstrap counted the log up to 6.5h
        ]
        for v in values:
            producer.send(topic, v, partition=0)
        producer.flush(timeout=30)

        def run() -> TrendingUpdater:
            consumer = kafka_consumer(stack.kafka_bootstrap, config.kafka, None)
            return TrendingUpdater(config, s, consumer, topic=topic, assign=True)

        upd = run()
        try:
            stats = upd.run_for(until_idle=True, timeout=30)
        finally:
            upd.consumer.close()
        assert stats.idle and stats.records == 6
        assert (stats.applied, stats.filtered, stats.skipped_old) == (3, 1, 1)
        assert stats.decode_errors >= 1
        expect = {10: decayed([(0, 1), (6, 2), (9, 2)], 12), 11: decayed([(3, 1), (7, 1)], 12),
                  12: decayed([(5, 3), (8, 3)], 12)}
        assert dict(s.top(10, at(12))) == pytest.approx(expect, rel=1e-9)
        # A restarted updater resumes after the offset the store recorded: nothing is counted twice.
        producer.send(topic, _event(12, 10), partition=0)
        producer.flush(timeout=30)
        upd = run()
        try:
            stats = upd.run_for(until_idle=True, timeout=30)
        finally:
            upd.consumer.close()
        assert stats.applied == 1
        expect[12] = decayed([(5, 3), (8, 3), (10, 1)], 12)
        assert dict(s.top(10, at(12))) == pytest.approx(expect, rel=1e-9)
    finally:
        producer.close()


def test_set_heads_are_cached_for_cache_s(redis, stack, config, unique_prefix):
    s = store(redis, unique_prefix)
    s.bootstrap(LOG, as_of=at(6.5))

    async def scenario():
        client = async_redis(stack.redis_url, config.redis)
        try:
            cached = PopularChannel(client, unique_prefix, half_life_hours=6.0, category_boost=0.0, cache_s=600.0)
            fresh = PopularChannel(client, unique_prefix, half_life_hours=6.0, category_boost=0.0)
            q = RecallQuery(user_id=1, now_ms=at(12))
            first = await cached.recall(q, 2)
            redis.delete(s.keys.glob)  # the sets change; the cached head is still served...
            again = await cached.recall(RecallQuery(user_id=2, now_ms=at(13)), 2)
            uncached = await fresh.recall(q, 2)
            bigger = await cached.recall(q, 100)  # ...unless more than the fetched head is asked for
            return first, again, uncached, bigger

        finally:
            await client.aclose()

    first, again, uncached, bigger = asyncio.run(scenario())
    assert first.items.tolist() == again.items.tolist() == [12, 10] and len(first.items) == 2
    # counts are decayed to each request's own time
    assert again.scores.tolist() == pytest.approx((first.scores * 2 ** (-1 / 6)).tolist(), rel=1e-6)
    assert len(uncached.items) == 0 and len(bigger.items) == 3  # the head held the whole set (3 < 64): reused
