"""TileWriter: the store's tile update plus an applied-offset guard, atomically, on a server and on a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_py
from redis.crc import key_slot

from cascade.config import Config
from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.online import OnlineStore
from featurestore.online.codec import to_micros
from featurestore.online.layout import window_entity_bases
from featurestore.streaming import StreamEvent, TileWriter
from stack.redis_cluster import EmbeddedRedisCluster

H = timedelta(hours=1)
T0 = datetime(2024, 7, 1, tzinfo=timezone.utc)
NOW = T0 + 5 * H
VIEW = WindowedFeatureView(
    "tw_user", (Entity("user", ("user_id",)),), ParquetSource("e.parquet"),
    aggregations=(Aggregation(AggregationFunction.COUNT, (3 * H,), name="n"),
                  Aggregation(AggregationFunction.SUM, (3 * H,), column="rating"),
                  Aggregation(AggregationFunction.LAST_N, (3 * H,), column="item_id", n=4, dtype=ValueType.INT64_LIST)),
    stream=StreamSource("t"))


def events(n: int, partition: int = 0, users: tuple = (1, 2, "ü|%{x}")) -> list[StreamEvent]:
    return [StreamEvent("t", partition, k, users[k % len(users)], to_micros(T0 + timedelta(minutes=9 * k)),
                        {"rating": float(k), "item_id": k}) for k in range(n)]


@pytest.fixture(scope="module")
def cluster(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("stream-cluster"), masters=3,
                              startup_timeout_s=config.redis.startup_timeout_s + 10) as c:
        yield c


@pytest.fixture(params=["single", "cluster"])
def store(request: pytest.FixtureRequest, config: Config, unique_prefix: str) -> Iterator[OnlineStore]:
    if request.param == "single":
        yield OnlineStore(request.getfixturevalue("redis"), unique_prefix)
        return
    c = redis_py.RedisCluster.from_url(request.getfixturevalue("cluster").url, socket_timeout=config.redis.socket_timeout_s)
    yield OnlineStore(c, unique_prefix)
    c.close()


def test_same_tiles_as_the_stores_add_events(store: OnlineStore) -> None:
    """The guard changes nothing about the tiles: byte-identical rings to the store's own incremental API."""
    evs = events(30)
    plain = OnlineStore(store.client, store.project + "p")
    assert plain.add_events(VIEW, [(e.entity, e.ts_us, e.values) for e in evs]) == 30
    counts = TileWriter(store).apply([(VIEW, evs)])["tw_user"]
    assert (counts.applied, counts.duplicates, counts.late) == (30, 0, 0)
    users = [1, 2, "ü|%{x}"]

    def values(s: OnlineStore) -> list:
        tc = s.info(VIEW).tiles
        return [s.client.get(k) for b in window_entity_bases(s.info(VIEW).prefix, users) for k in tc.keys(b)[1:]]

    ours, theirs = values(store), values(plain)
    assert ours == theirs and all(ours)


def test_overlapping_batches_apply_each_offset_once(store: OnlineStore) -> None:
    evs = events(30)
    w = TileWriter(store)
    first = w.apply([(VIEW, evs[:20])])["tw_user"]
    second = w.apply([(VIEW, evs[10:])])["tw_user"]  # re-delivery regrouped differently
    third = w.apply([(VIEW, evs)])["tw_user"]
    assert (first.applied, second.applied, second.duplicates, third.applied, third.duplicates) == (20, 10, 10, 0, 30)
    once = OnlineStore(store.client, store.project + "once")
    TileWriter(once).apply([(VIEW, evs)])
    users = [1, 2, "ü|%{x}"]
    assert store.read(VIEW, users, now=NOW).to_rows() == once.read(VIEW, users, now=NOW).to_rows()


def test_partitions_and_topics_have_their_own_offsets(store: OnlineStore) -> None:
    w = TileWriter(store)
    a = events(5, partition=0, users=(1,))
    b = events(5, partition=1, users=(1,))  # the same offsets, another partition: other records
    assert w.apply([(VIEW, a)])["tw_user"].applied == 5
    assert w.apply([(VIEW, b)])["tw_user"].applied == 5
    assert w.apply([(VIEW, a + b)])["tw_user"].duplicates == 10
    fresh = TileWriter(store, offsets_namespace="@2")  # e.g. the topic was re-created
    assert fresh.apply([(VIEW, a)])["tw_user"].applied == 5
    assert store.read(VIEW, [1], now=T0 + H).to_rows()[0]["tw_user:n_3h"] == 15


def test_events_too_late_for_the_ring_are_counted_as_late(store: OnlineStore) -> None:
    w = TileWriter(store)
    new = StreamEvent("t", 0, 1, 7, to_micros(T0 + 10 * H), {"rating": 1.0, "item_id": 1})
    # 3h hops by 5 min (the default ladder): a ring of 37 slots; 37 x 5 min before 10:00 shares 10:00's slot
    assert store.info(VIEW).tiles.rings[0].slots == 37
    old = StreamEvent("t", 0, 2, 7, to_micros(T0 + 10 * H - 37 * timedelta(minutes=5)), {"rating": 1.0, "item_id": 2})
    c = w.apply([(VIEW, [new, old])])["tw_user"]
    assert (c.applied, c.late, c.duplicates) == (1, 1, 0)
    assert w.apply([(VIEW, [new, old])])["tw_user"].duplicates == 2  # late ones are consumed too


def test_events_before_the_batch_through_are_covered_by_the_batch(store: OnlineStore) -> None:
    w = TileWriter(store)
    store.set_batch_through(VIEW, to_micros(T0 + 2 * H))
    evs = [StreamEvent("t", 0, k, 8, to_micros(T0 + timedelta(minutes=50 * k)), {"rating": 1.0, "item_id": k})
           for k in range(5)]  # 00:00, 00:50, 01:40 are the batch's; 02:30, 03:20 the stream's
    c = w.apply([(VIEW, evs)])["tw_user"]
    assert (c.applied, c.covered, c.duplicates) == (2, 3, 0)
    assert store.get_stream_from(VIEW) == to_micros(T0 + timedelta(minutes=150))
    row = store.read(VIEW, [8], now=T0 + 4 * H).to_rows()[0]
    assert row["tw_user:n_3h"] == 2 and row["tw_user:item_id_last4_3h"] == [4, 3]
    # the entity's own batch-through (written with its state) applies even when the view's is not known yet
    store.client.hset(w.offsets_key(window_entity_bases(store.info(VIEW).prefix, [9])[0]), "bt", to_micros(T0 + H))
    store.set_batch_through(VIEW, 0)
    late = StreamEvent("t", 1, 0, 9, to_micros(T0 + timedelta(minutes=30)), {"rating": 1.0, "item_id": 1})
    assert w.apply([(VIEW, [late])])["tw_user"].covered == 1


def test_every_key_of_an_entity_shares_its_cluster_slot(store: OnlineStore) -> None:
    w = TileWriter(store)
    tc = store.info(VIEW).tiles
    for user in (1, "plain", "ü|%", "a{b}c", "x{", "{}x", "}y", ""):
        keys = tc.keys(window_entity_bases(store.info(VIEW).prefix, [user])[0])
        assert keys[0] == w.offsets_key(keys[0][:-2]) and len(set(keys)) == len(keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1, user
    odd = [StreamEvent("t", 0, k, user, to_micros(T0), {"rating": 1.0, "item_id": 1}) for k, user in enumerate(("{}x", "}y"))]
    c = w.apply([(VIEW, odd)])["tw_user"]
    assert (c.rejected, c.applied) == (0, 2)
    assert store.read(VIEW, ["{}x", "}y"], now=T0 + H).to_rows()[1]["tw_user:n_3h"] == 1


def test_noscript_after_a_flush_is_recovered(store: OnlineStore) -> None:
    w = TileWriter(store)
    assert w.apply([(VIEW, events(3))])["tw_user"].applied == 3
    store.client.script_flush()
    assert w.apply([(VIEW, events(6))])["tw_user"].applied == 3  # reloaded; the first 3 skipped
