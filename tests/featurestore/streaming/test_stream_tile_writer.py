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
from featurestore.online.layout import entity_keys
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
    ours = [store.client.get(k) for k in entity_keys(store.info(VIEW).prefix, users)]
    theirs = [store.client.get(k) for k in entity_keys(plain.info(VIEW).prefix, users)]
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
    old = StreamEvent("t", 0, 2, 7, to_micros(T0 + 6 * H), {"rating": 1.0, "item_id": 2})  # its slot holds 10 h now
    c = w.apply([(VIEW, [new, old])])["tw_user"]
    assert (c.applied, c.late, c.duplicates) == (1, 1, 0)
    assert w.apply([(VIEW, [new, old])])["tw_user"].duplicates == 2  # late ones are consumed too


def test_offsets_hash_shares_the_rings_cluster_slot(store: OnlineStore) -> None:
    w = TileWriter(store)
    for user in (1, "plain", "ü|%", "a{b}c", "x{"):  # no '}' in the key, or a hash tag of its own
        ring = entity_keys(store.info(VIEW).prefix, [user])[0]
        okey = w.offsets_key(ring)
        assert okey.startswith(f"{store.project}:_so:") and okey != ring
        assert key_slot(okey.encode()) == key_slot(ring.encode()), user
    # a '}' without a hash tag cannot be matched: refused (counted) on a cluster, fine on a single server
    odd = [StreamEvent("t", 0, k, user, to_micros(T0), {"rating": 1.0, "item_id": 1}) for k, user in enumerate(("{}x", "}y"))]
    c = w.apply([(VIEW, odd)])["tw_user"]
    assert (c.rejected, c.applied) == ((2, 0) if store.cluster else (0, 2))


def test_noscript_after_a_flush_is_recovered(store: OnlineStore) -> None:
    w = TileWriter(store)
    assert w.apply([(VIEW, events(3))])["tw_user"].applied == 3
    store.client.script_flush()
    assert w.apply([(VIEW, events(6))])["tw_user"].applied == 3  # reloaded; the first 3 skipped
