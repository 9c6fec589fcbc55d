"""The lean read path: MGETs packed straight from entity ids, replies parsed off the socket by hiredis.

It must read exactly what the redis-py path reads (same keys, same values, same statuses), and fall
back to redis-py when the connection misbehaves.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import redis as redis_py
from hiredis import pack_command

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    Feature,
    FeatureView,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.online.layout import EntityKeys, entity_keys, window_entity_bases

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
USER = Entity("user", ("user_id",))
PROFILE = FeatureView("lean_profile", (USER,), ParquetSource("u.parquet"), (
    Feature("score", ValueType.FLOAT64, default=-1.0),
    Feature("name", ValueType.STRING),
    Feature("tags", ValueType.STRING_LIST, default=[]),
), ttl=timedelta(days=1))
ACTIVITY = WindowedFeatureView("lean_activity", (USER,), ParquetSource("e.parquet"), (
    Aggregation(AggregationFunction.COUNT, (2 * H, 3 * H)),
    Aggregation(AggregationFunction.MEAN, (3 * H,), column="amount"),
    Aggregation(AggregationFunction.LAST_N, (3 * H,), column="item", n=2),
), tile=H)

ID_SETS = [
    list(range(1, 1200)),  # more than one chunk at step 500
    [0, 9, 10, 99, 100, 2**62, -5],
    [np.int64(5), 7, np.int32(8)],
    ["a", "b%c", "x|y", "plain"],
    ["{tag}", "t}", "ok"],
    ["é", "ascii"],
    ["x" * 300, "y"],
    [True, 1],
    [2**70, 3],
]


@pytest.mark.parametrize("ids", ID_SETS, ids=[f"set{i}" for i in range(len(ID_SETS))])
@pytest.mark.parametrize("tagged", [False, True])
def test_packed_mget_is_byte_for_byte_hiredis_packing_of_the_keys(ids: list, tagged: bool) -> None:
    prefix, tail = ("p:{v:1:", ":n") if tagged else ("p:v:1:", "")
    keys = [b + tail for b in window_entity_bases(prefix, ids)] if tagged else entity_keys(prefix, ids)
    got = list(EntityKeys(prefix, ids, 1, tail, tagged).mget_commands(500, pack_command))
    assert got == [pack_command(("MGET", *keys[i: i + 500])) for i in range(0, len(keys), 500)]
    assert list(EntityKeys(prefix, ids, 1, tail, tagged)) == keys


@pytest.mark.parametrize("ids", ID_SETS + [[3, 1, 3, 2], [5, 2**70, 5]], ids=[f"set{i}" for i in range(len(ID_SETS) + 2)])
def test_distinct_keys_pack_as_hiredis_packs_them(ids: list) -> None:
    """`unique` first (as a read does: it may keep the ids as int64 for packing), then the commands."""
    keys, inverse = EntityKeys("p:v:1:", ids).unique()
    distinct = entity_keys("p:v:1:", keys.values)
    assert len(set(distinct)) == len(distinct) and (inverse is None) == (len(distinct) == len(ids))
    if inverse is not None:
        assert [distinct[i] for i in inverse.tolist()] == entity_keys("p:v:1:", ids)
    got = list(keys.mget_commands(500, pack_command))
    assert got == [pack_command(("MGET", *distinct[i: i + 500])) for i in range(0, len(distinct), 500)]


def test_composite_keys_pack_through_hiredis() -> None:
    ids = [(1, "a|b"), (2, "c")]
    got = list(EntityKeys("p:", ids, 2).mget_commands(10, pack_command))
    assert got == [pack_command(("MGET", *entity_keys("p:", ids, 2)))]


def test_unique_keeps_row_positions() -> None:
    keys, inverse = EntityKeys("p:", ["u", "a", "u", "b", "a"]).unique()
    assert keys.values == ["u", "a", "b"] and inverse.tolist() == [0, 1, 0, 2, 1]
    keys, inverse = EntityKeys("p:", [1, True]).unique()  # 1 == True, but their keys differ
    assert inverse is None and keys.keys() == ["p:1", "p:true"]
    keys, inverse = EntityKeys("p:", [5, np.int64(5), 6]).unique()  # equal keys from different types
    assert keys.keys() == ["p:5", "p:6"] and inverse.tolist() == [0, 0, 1]


def _write(store: OnlineStore, ids: list) -> None:
    n = len(ids)
    store.write_rows(PROFILE, pa.table({
        "user_id": pa.array([str(i) for i in ids]),
        "score": pa.array([float(i) / 7 if i % 5 else None for i in range(n)]),
        "name": [f"n{i % 3}" for i in range(n)],
        "tags": [["a", "b"] if i % 2 else ["c"] for i in range(n)],
        "event_ts": pa.array([T0 - timedelta(days=2) if i % 11 == 0 else T0 for i in range(n)], type=pa.timestamp("us", "UTC")),
    }))
    # none for every 4th entity (NOT_FOUND), only one older than every window for every 9th (DEFAULTED)
    events = [(str(u), T0 - timedelta(minutes=25 * k), {"amount": float(k), "item": k})
              for j, u in enumerate(ids) if j % 9 != 6 for k in range(j % 4)]
    events += [(str(u), T0 - timedelta(minutes=165), {"amount": 1.0, "item": 1}) for j, u in enumerate(ids) if j % 9 == 6]
    store.add_events(ACTIVITY, events)


def _same(a, b) -> None:
    assert a.refs == b.refs
    assert np.array_equal(a.status, b.status)
    assert a.to_rows() == b.to_rows()
    for view, ts in a.event_ts.items():
        assert np.array_equal(ts.view(np.int64), b.event_ts[view].view(np.int64))  # NaT where no row


@pytest.mark.parametrize("pipeline", [0, 100])
def test_lean_path_reads_what_the_redispy_path_reads(redis, unique_prefix: str, pipeline: int) -> None:
    lean = OnlineStore(redis, unique_prefix, batch_keys=300, pipeline_keys=pipeline)
    plain = OnlineStore(redis, unique_prefix, batch_keys=300, lean_reads=False)
    assert lean._lean and not plain._lean
    ids = [f"{i}" for i in range(700)] + ["a|b", "c%d", "{x}", "ünï"]
    _write(lean, ids)
    # stored, missing, escaped and repeated entities (the first user once per row, as ranking reads it)
    wanted = ids[::3] + ["missing-1", "a|b", "{x}", "ünï"] + [ids[0]] * 50
    plan = lean.plan([PROFILE, ACTIVITY])
    got, ref = lean.read(plan, wanted, now=T0), plain.read(plan, wanted, now=T0)
    _same(got, ref)
    statuses = set(got.status.ravel().tolist())
    assert {FeatureStatus.PRESENT, FeatureStatus.NOT_FOUND, FeatureStatus.OUTSIDE_MAX_AGE, FeatureStatus.NULL_VALUE,
            FeatureStatus.DEFAULTED} <= statuses
    # every row of a repeated entity holds that entity's values, as a read of the entity alone
    alone = plain.read(plan, [ids[0]], now=T0).to_rows()[0]
    assert all(row == alone for row in got.to_rows()[-50:])


def test_lean_read_falls_back_to_redispy_when_the_server_stalls(stack, config, unique_prefix: str, caplog) -> None:
    """A reply later than the socket timeout: the lean path gives up, redis-py's path reads it."""
    slow = redis_py.Redis.from_url(stack.redis_url, socket_timeout=0.3)
    admin = redis_py.Redis.from_url(stack.redis_url)
    try:
        store = OnlineStore(slow, unique_prefix)
        ids = [str(i) for i in range(20)]
        _write(store, ids)
        expected = store.read(PROFILE, ids, now=T0).to_rows()
        admin.execute_command("CLIENT", "PAUSE", 450, "ALL")  # the server answers nobody for 0.45 s
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cascade.featurestore.online"):
            got = store.read(PROFILE, ids, now=T0).to_rows()
        assert time.monotonic() - t0 >= 0.3
        assert got == expected
        assert any("lean path failed" in r.getMessage() for r in caplog.records)
        assert store.read(PROFILE, ids, now=T0).to_rows() == expected  # and the next read is lean again
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        slow.close()
        admin.close()


def test_cluster_clients_never_take_the_lean_path(redis_cluster, unique_prefix: str) -> None:
    client = redis_py.RedisCluster.from_url(redis_cluster.url)
    try:
        store = OnlineStore(client, unique_prefix)
        assert not store._lean
        ids = [str(i) for i in range(50)]
        _write(store, ids)
        res = store.read(PROFILE, ids + ids[:5], now=T0)
        assert res.column("score")[-5:].tolist() == res.column("score")[:5].tolist()
    finally:
        client.close()


def test_entities_without_window_state_read_as_when_beside_one_with_state(redis, unique_prefix: str) -> None:
    """A read in which no entity has window state (the shortcut) equals those rows of a mixed read."""
    store = OnlineStore(redis, unique_prefix)
    _write(store, ["1", "2"])  # "2" gets one event (the second entity), "1" none
    mixed = store.read(ACTIVITY, ["2", "x", "y"], now=T0)
    assert (mixed.status[0] != FeatureStatus.NOT_FOUND).all()
    alone = store.read(ACTIVITY, ["x", "y"], now=T0)
    assert alone.to_rows() == mixed.to_rows()[1:]
    assert np.array_equal(alone.status, mixed.status[1:])
    assert (alone.status == FeatureStatus.NOT_FOUND).all()
    for ref in alone.refs:
        a, b = alone.column(ref), mixed.column(ref)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b[1:], equal_nan=True)
    assert np.isnat(alone.event_ts["lean_activity"]).all()


def test_reads_return_their_connection_and_keep_it_open(redis, unique_prefix: str) -> None:
    """Replies are streamed to the decoder; the connection still goes back to the pool, connected, every time."""
    store = OnlineStore(redis, unique_prefix)
    _write(store, [str(i) for i in range(30)])
    pool = redis.connection_pool
    store.read([PROFILE, ACTIVITY], [str(i) for i in range(30)], now=T0)
    conn = pool._available_connections[-1]
    sock = conn._sock
    for _ in range(5):
        store.read([PROFILE, ACTIVITY], [str(i) for i in range(30)] + ["nope"], now=T0)
    assert not pool._in_use_connections
    assert pool._available_connections[-1] is conn and conn._sock is sock  # never dropped and reconnected


def test_a_decode_error_drops_the_connection_instead_of_reusing_it(redis, unique_prefix: str) -> None:
    """A row stored under another layout fails the decode mid-read: the unread replies must not poison the pool."""
    store = OnlineStore(redis, unique_prefix)
    _write(store, ["1", "2"])
    redis.set(store.info(PROFILE).prefix + "1", b"short")  # not a row of this layout
    with pytest.raises(ValueError):
        store.read([PROFILE, ACTIVITY], ["1", "2"], now=T0)
    assert not redis.connection_pool._in_use_connections
    assert store.read(ACTIVITY, ["1", "2"], now=T0).to_rows() == \
        OnlineStore(redis, unique_prefix, lean_reads=False).read(ACTIVITY, ["1", "2"], now=T0).to_rows()


# -- the reply reader on byte streams (featurestore.online.replies.ReplyStream.reply)

def _parse(data: bytes, count: int, chunk: int) -> list:
    import socket

    from featurestore.online.replies import ReplyStream

    a, b = socket.socketpair()
    try:
        sender = threading.Thread(target=lambda: [a.sendall(data[i: i + chunk]) for i in range(0, len(data), chunk)])
        sender.start()
        stream = ReplyStream(b, bytearray(64))
        out = [stream.reply() for _ in range(count)]
        sender.join()
        return out
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("chunk", [1, 7, 100_000])
def test_replies_are_read_in_any_pieces_resp2_and_resp3(chunk: int) -> None:
    v = bytes(range(200, 240))
    data = b"*3\r\n$40\r\n" + v + b"\r\n$-1\r\n$0\r\n\r\n" + b"*2\r\n_\r\n$40\r\n" + v + b"\r\n" + b"-ERR no\r\n"
    got = _parse(data, 3, chunk)
    assert got[:2] == [[v, None, b""], [None, v]]
    assert isinstance(got[2], redis_py.exceptions.ResponseError)


def test_a_push_message_between_replies_is_refused() -> None:
    from hiredis import ProtocolError

    with pytest.raises(ProtocolError, match="push"):
        _parse(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nx\r\n*1\r\n$1\r\na\r\n", 1, 100)
