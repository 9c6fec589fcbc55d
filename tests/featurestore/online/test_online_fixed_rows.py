"""Reads of fixed-size rows taken in place off the socket (featurestore.online.replies) equal redis-py's path.

Whatever a reply holds -- every row, missing rows, explicit nulls, rows past the TTL, a row of another
size, chunks of which only some are regular, repeated entities, RESP3 -- the lean store must serve
exactly what the store reading through redis-py serves.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import redis as redis_py

from featurestore.definitions import Entity, Feature, FeatureView, ParquetSource, ValueType
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.online import store as store_module
from featurestore.online.replies import ReplyStream

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
USER = Entity("user", ("user_id",))
FIXED = FeatureView("fixed_rows", (USER,), ParquetSource("u.parquet"), (
    Feature("score", ValueType.FLOAT64, default=-1.0),
    Feature("clicks", ValueType.INT64, default=7),
    Feature("active", ValueType.BOOL),
    Feature("emb", ValueType.FLOAT_LIST, dim=3, default=[0.5, 0.5, 0.5]),
    Feature("ratio", ValueType.FLOAT64),
), ttl=timedelta(days=1))
NAMES = FeatureView("fixed_rows_names", (USER,), ParquetSource("u.parquet"), (Feature("name", ValueType.STRING),))


def _write(store: OnlineStore, ids: list[int]) -> None:
    store.write_rows(FIXED, pa.table({
        "user_id": pa.array(ids, type=pa.int64()),
        "score": pa.array([i / 4 if i % 7 else None for i in ids], type=pa.float64()),
        "clicks": pa.array([i if i % 5 else None for i in ids], type=pa.int64()),
        "active": pa.array([i % 2 == 0 for i in ids]),
        "emb": pa.array([[i, i + 1.0, i + 2.0] if i % 6 else None for i in ids], type=pa.list_(pa.float64())),
        "ratio": pa.array([i * 0.1 for i in ids]),
        "event_ts": pa.array([T0 - timedelta(days=3) if i % 11 == 0 else T0 for i in ids], type=pa.timestamp("us", "UTC")),
    }))
    store.write_rows(NAMES, pa.table({"user_id": pa.array(ids[::2], type=pa.int64()), "name": [f"n{i}" for i in ids[::2]],
                                      "event_ts": pa.array([T0] * len(ids[::2]), type=pa.timestamp("us", "UTC"))}))


def _same(a, b) -> None:
    assert a.refs == b.refs
    assert np.array_equal(a.status, b.status)
    assert a.to_rows() == b.to_rows()
    for ref in a.refs:
        x, y = a.column(ref), b.column(ref)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    for view, ts in a.event_ts.items():
        assert np.array_equal(ts.view(np.int64), b.event_ts[view].view(np.int64))


@pytest.fixture()
def fixed_hits(monkeypatch) -> list[int]:
    """How many replies the lean store took as fixed rows."""
    hits: list[int] = []

    class Counting(ReplyStream):
        __slots__ = ()

        def fixed_rows(self, count: int, size: int):
            rows = super().fixed_rows(count, size)
            hits.append(rows is not None)
            return rows

    monkeypatch.setattr(store_module, "ReplyStream", Counting)
    return hits


@pytest.mark.parametrize(("protocol", "pipeline"), [(2, 0), (3, 0), (2, 30)])
def test_fixed_rows_read_what_the_redispy_path_reads(stack, config, unique_prefix: str, fixed_hits, protocol: int,
                                                     pipeline: int) -> None:
    client = redis_py.Redis.from_url(stack.redis_url, protocol=protocol, socket_timeout=config.redis.socket_timeout_s)
    try:
        lean = OnlineStore(client, unique_prefix, batch_keys=100, pipeline_keys=pipeline)
        chunk = min(100, pipeline or 100)
        plain = OnlineStore(client, unique_prefix, batch_keys=100, lean_reads=False)
        assert lean._lean
        ids = list(range(1, 400))
        _write(lean, ids)
        cases = {
            "all stored, 4 chunks": ids[:350],
            "one chunk with a missing row": ids[:200] + [10_000] + ids[200:300],
            "nothing stored": [10_001, 10_002],
            "repeated entities": [5] * 150 + [6] + [5] * 10,
            "one entity": [42],
        }
        for name, wanted in cases.items():
            for plan in (lean.plan(FIXED), lean.plan([FIXED, NAMES]), lean.plan((FIXED, ["ratio", "active"]))):
                fixed_hits.clear()
                got, ref = lean.read(plan, wanted, now=T0), plain.read(plan, wanted, now=T0)
                _same(got, ref)
                if name == "all stored, 4 chunks":
                    assert fixed_hits == [True] * -(-350 // chunk), name
                if name == "one chunk with a missing row":  # hiredis from the chunk with the missing row on
                    assert fixed_hits[: 200 // chunk + 1] == [True] * (200 // chunk) + [False], name
        statuses = set(lean.read(FIXED, ids, now=T0).status.ravel().tolist())
        assert statuses == {FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE, FeatureStatus.OUTSIDE_MAX_AGE}
    finally:
        client.close()


def test_a_row_of_another_size_is_refused_as_before(redis, unique_prefix: str, fixed_hits) -> None:
    lean = OnlineStore(redis, unique_prefix)
    plain = OnlineStore(redis, unique_prefix, lean_reads=False)
    _write(lean, [1, 2, 3])
    redis.set(lean.info(FIXED).prefix + "2", b"\0" * (lean.info(FIXED).codec.fixed_size + 1))
    for store in (lean, plain):
        with pytest.raises(ValueError, match="unexpected size"):
            store.read(FIXED, [1, 2, 3], now=T0)
    assert fixed_hits == [False]
    assert not redis.connection_pool._in_use_connections
    assert lean.read(FIXED, [1, 3], now=T0).to_rows() == plain.read(FIXED, [1, 3], now=T0).to_rows()


@pytest.mark.parametrize("first_ids", [list(range(1, 300)), [1]], ids=["299 rows", "one row"])
def test_fixed_rows_do_not_alias_the_receive_buffer(redis, unique_prefix: str, first_ids: list[int]) -> None:
    """Columns of one read survive the next reads on the same thread (the rows were views of a reused buffer;
    a one-row field view is contiguous, so only an explicit copy keeps it apart)."""
    lean = OnlineStore(redis, unique_prefix)
    _write(lean, list(range(1, 300)))
    first = lean.read(FIXED, first_ids, now=T0)
    kept = {ref: np.array(first.column(ref)) for ref in first.refs}
    ts = first.event_ts[FIXED.name].copy()
    for other in (list(range(299, 0, -1)), [2], [3, 4]):
        lean.read(FIXED, other, now=T0)
    for ref, col in kept.items():
        assert np.array_equal(first.column(ref), col, equal_nan=col.dtype.kind == "f"), ref
    assert np.array_equal(first.event_ts[FIXED.name], ts)


def test_pipelined_reads_send_each_mget_as_it_is_packed(redis, unique_prefix: str, monkeypatch) -> None:
    """pipeline_keys: 1,000 entities go out as 4 MGETs in 4 writes, and read what one MGET reads."""
    lean = OnlineStore(redis, unique_prefix, pipeline_keys=250)
    plain = OnlineStore(redis, unique_prefix, lean_reads=False)
    ids = list(range(1, 1001))
    _write(lean, ids)
    lean.read(FIXED, ids[:10], now=T0)  # a connection in the pool
    sends: list[int] = []
    conn_cls = redis_py.connection.AbstractConnection
    original = conn_cls.send_packed_command

    def spy(self, command, check_health=True):
        sends.append(command.count(b"MGET") if isinstance(command, bytes) else sum(c.count(b"MGET") for c in command))
        return original(self, command, check_health)

    monkeypatch.setattr(conn_cls, "send_packed_command", spy)
    got = lean.read([FIXED, NAMES], ids, now=T0)
    monkeypatch.setattr(conn_cls, "send_packed_command", original)
    assert sends == [1] * 8  # two views, 4 MGETs each, one write each
    _same(got, plain.read([FIXED, NAMES], ids, now=T0))


def test_a_stalled_fixed_rows_read_falls_back_to_redispy(stack, unique_prefix: str, caplog) -> None:
    """A reply later than the socket timeout, mid fixed-rows read: redis-py's path reads it, the next read is lean."""
    slow = redis_py.Redis.from_url(stack.redis_url, socket_timeout=0.3)
    admin = redis_py.Redis.from_url(stack.redis_url)
    try:
        store = OnlineStore(slow, unique_prefix)
        ids = list(range(1, 200))
        _write(store, ids)
        expected = OnlineStore(slow, unique_prefix, lean_reads=False).read(FIXED, ids, now=T0).to_rows()
        admin.execute_command("CLIENT", "PAUSE", 450, "ALL")
        with caplog.at_level(logging.WARNING, logger="cascade.featurestore.online"):
            got = store.read(FIXED, ids, now=T0).to_rows()
        assert got == expected
        assert any("lean path failed" in r.getMessage() for r in caplog.records)
        assert store.read(FIXED, ids, now=T0).to_rows() == expected
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        slow.close()
        admin.close()
