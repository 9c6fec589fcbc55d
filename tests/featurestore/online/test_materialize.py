"""Materialization: bounded chunks, watermark in Redis, idempotent reruns, crash safety, window tiles.

The offline side is a small in-memory stand-in with the offline store's interface
(`latest_rows(view, as_of, since)`, `tiles(view, start, end)` yielding Arrow batches);
the online side is the real server / cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

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
from featurestore.materialize import materialize, rechunk
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.online.codec import to_micros

T0 = datetime(2025, 3, 1, tzinfo=timezone.utc)
USER = Entity("user", ("user_id",))
PROFILE = FeatureView("profile", (USER,), ParquetSource("p.parquet"), (
    Feature("age", ValueType.INT64), Feature("score", ValueType.FLOAT64), Feature("city", ValueType.STRING),
))
H = timedelta(hours=1)
ACTIVITY = WindowedFeatureView("activity", (USER,), ParquetSource("a.parquet"), (
    Aggregation(AggregationFunction.COUNT, (2 * H,)),
    Aggregation(AggregationFunction.SUM, (2 * H,), column="amount"),
), tile=H)


def history(n_users: int, versions: int, start: datetime = T0) -> pa.Table:
    """`versions` rows per user, one hour apart; value = version number."""
    users = np.repeat(np.arange(n_users), versions)
    version = np.tile(np.arange(versions), n_users)
    ts = [start + timedelta(hours=int(v)) for v in version]
    return pa.table({
        "user_id": users, "age": version * 10 + users % 7, "score": version + users / 1000.0,
        "city": [f"c{v}" for v in version], "event_ts": pa.array(ts, type=pa.timestamp("us", "UTC")),
    })


class FakeOffline:
    """Latest row per entity as of a time, streamed in small batches; records what it was asked."""

    def __init__(self, rows: pa.Table, batch_rows: int = 37, events: list | None = None, fail_after: int | None = None):
        self.rows, self.batch_rows, self.events, self.fail_after = rows, batch_rows, events or [], fail_after
        self.calls: list[tuple] = []
        self.yielded = 0

    def latest_rows(self, view, as_of, since) -> Iterator[pa.RecordBatch]:
        self.calls.append(("latest_rows", view.name, as_of, since))
        ts = self.rows.column("event_ts")
        mask = pc.less_equal(ts, pa.scalar(as_of, type=ts.type))
        if since is not None:
            mask = pc.and_(mask, pc.greater(ts, pa.scalar(since, type=ts.type)))
        t = self.rows.filter(mask).sort_by([("user_id", "ascending"), ("event_ts", "descending")])
        users = t.column("user_id").to_numpy()
        first = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, bool)
        latest = t.filter(pa.array(first))
        for i, batch in enumerate(latest.to_batches(max_chunksize=self.batch_rows)):
            if self.fail_after is not None and i >= self.fail_after:
                raise ConnectionError("offline store went away")
            self.yielded += batch.num_rows
            yield batch

    def tiles(self, view, start, end, *, ring: bool = False) -> Iterator[pa.RecordBatch]:
        """1 h tiles of the events up to `end`: with `ring`, the 2 h window's ring (3 tiles), ordered by user."""
        self.calls.append(("tiles", view.name, start, end, ring))
        first = end.replace(minute=0, second=0, microsecond=0) - 2 * H if ring else start
        agg: dict[tuple[int, datetime], list[float]] = {}
        for user, ts, amount in self.events:
            tile = ts.replace(minute=0, second=0, microsecond=0)
            if first <= tile and ts <= end:
                agg.setdefault((user, tile), []).append(amount)
        keys = sorted(agg)
        table = pa.table({
            "user_id": [k[0] for k in keys],
            "hop": pa.array([H] * len(keys), type=pa.duration("us")),
            "tile_start": pa.array([k[1] for k in keys], type=pa.timestamp("us", "UTC")),
            "count": [len(agg[k]) for k in keys],
            "amount_sum": [float(sum(agg[k])) for k in keys],
            "amount_count": [len(agg[k]) for k in keys],
        })
        yield from table.to_batches(max_chunksize=self.batch_rows)


def test_rechunk_cuts_exact_chunks_without_copying() -> None:
    src = [pa.record_batch({"x": list(range(a, b))}) for a, b in ((0, 5), (5, 6), (6, 30), (30, 31))]
    chunks = list(rechunk(iter(src), 8))
    assert [c.num_rows for c in chunks] == [8, 8, 8, 7]
    assert pa.concat_tables(chunks).column("x").to_pylist() == list(range(31))
    assert list(rechunk(iter([]), 8)) == []
    with pytest.raises(ValueError):
        list(rechunk(iter(src), 0))


def test_rechunk_by_key_never_splits_an_entity() -> None:
    keys = [0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3, 4, 4]
    src = [pa.record_batch({"k": keys[a:b], "v": list(range(a, b))}) for a, b in ((0, 2), (2, 7), (7, 12), (12, 13))]
    chunks = list(rechunk(iter(src), 3, keys=["k"]))
    assert pa.concat_tables(chunks).column("v").to_pylist() == list(range(13))
    seen = [sorted(set(c.column("k").to_pylist())) for c in chunks]
    assert all(not set(a) & set(b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert [c.num_rows for c in chunks] == [4, 7, 2]  # cut at the last entity boundary of what arrived


def test_chunked_incremental_idempotent(store: OnlineStore, tmp_path, monkeypatch) -> None:
    offline = FakeOffline(history(500, 3))
    sizes: list[int] = []
    ahead: list[int] = []
    write_packed = store.write_packed

    def spy(keys, values):
        sizes.append(len(keys))
        ahead.append(offline.yielded - sum(sizes))
        return write_packed(keys, values)

    monkeypatch.setattr(store, "write_packed", spy)
    state = tmp_path / "state" / "materialize.json"
    end = T0 + timedelta(hours=1, minutes=30)  # versions 0 and 1 visible: version 1 is the latest
    rep = materialize(offline, store, [PROFILE], None, end, state, chunk_rows=64, progress=False)
    assert rep.rows_read == 500 and rep.rows_written == 500
    assert max(sizes) == 64 and sum(sizes) == 500 and rep.view("profile").chunks == len(sizes) == 8
    assert max(ahead) <= 2 * 64 + offline.batch_rows  # the source is pulled at most ~2 chunks ahead of the writes
    assert offline.calls[-1] == ("latest_rows", "profile", end, None)
    assert store.get_watermark(PROFILE) == end
    saved = json.loads(state.read_text())
    assert saved["views"]["profile"]["watermark"] == end.isoformat()
    assert saved["views"]["profile"]["last_run"]["rows_written"] == 500

    res = store.read(PROFILE, [0, 499, 500], now=end)
    assert res.column("age").tolist()[:2] == [10, 10 + 499 % 7]
    assert res.column("city")[:2] == ["c1", "c1"]
    assert res.statuses("age").tolist()[2] == FeatureStatus.NOT_FOUND

    # the same end again: the watermark says there is nothing to do
    again = materialize(offline, store, [PROFILE], None, end, state, chunk_rows=64, progress=False)
    assert again.rows_read == 0 and again.rows_written == 0 and again.view("profile").up_to_date
    # forced over the same range: everything read, nothing written
    forced = materialize(offline, store, [PROFILE], T0 - timedelta(days=1), end, state, chunk_rows=64, progress=False)
    assert forced.rows_read == 500 and forced.rows_written == 0
    # later: only rows newer than the watermark are asked for, and written
    end2 = T0 + timedelta(hours=3)
    later = materialize(offline, store, [PROFILE], None, end2, state, chunk_rows=64, progress=False)
    assert offline.calls[-1] == ("latest_rows", "profile", end2, end)
    assert later.rows_read == 500 and later.rows_written == 500
    assert store.read(PROFILE, [3], now=end2).column("age").tolist() == [20 + 3]


def test_crash_keeps_watermark_and_rerun_completes(store: OnlineStore, tmp_path) -> None:
    end = T0 + timedelta(hours=5)
    broken = FakeOffline(history(300, 2), batch_rows=50, fail_after=3)
    with pytest.raises(ConnectionError):
        materialize(broken, store, [PROFILE], None, end, tmp_path / "s.json", chunk_rows=40, progress=False)
    assert store.get_watermark(PROFILE) is None
    assert not (tmp_path / "s.json").exists()
    healthy = FakeOffline(history(300, 2), batch_rows=50)
    rep = materialize(healthy, store, [PROFILE], None, end, tmp_path / "s.json", chunk_rows=40, progress=False)
    assert rep.rows_read == 300
    assert 0 < rep.rows_written <= 300 - 120 + 40  # the chunks written before the crash are skipped
    assert store.get_watermark(PROFILE) == end
    assert (store.read(PROFILE, list(range(300)), now=end).status == FeatureStatus.PRESENT).all()


def test_windowed_views_materialize_tiles(store: OnlineStore, monkeypatch) -> None:
    events = [(u, T0 + timedelta(minutes=m), float(u + m)) for u in range(20) for m in (10, 70, 130, 150)]
    offline = FakeOffline(pa.table({"user_id": [0], "event_ts": pa.array([T0], type=pa.timestamp("us", "UTC"))}),
                          batch_rows=7, events=events)
    chunks: list[list[int]] = []
    write_tiles = store.write_tiles

    def spy(view, tiles, **kw):
        chunks.append(sorted(set(tiles.column("user_id").to_pylist())))
        return write_tiles(view, tiles, **kw)

    monkeypatch.setattr(store, "write_tiles", spy)
    end = T0 + timedelta(hours=2, minutes=40)
    rep = materialize(offline, store, [ACTIVITY], None, end, None, chunk_rows=16, progress=False)
    # the whole state as of `end` (the cut is end + 1us: no stream yet): the ring of 00:00..02:00
    assert offline.calls[-1] == ("tiles", "activity", None, end, True)
    assert rep.rows_read == 20 * 3 and rep.rows_written == 20  # entities written
    assert rep.view("activity").through == end + timedelta(microseconds=1)
    assert store.get_batch_through(ACTIVITY) == to_micros(end) + 1
    assert len(chunks) == rep.view("activity").chunks >= 3 and all(len(c) for c in chunks)
    assert sum(len(c) for c in chunks) == 20  # an entity's rows are never split over two writes
    res = store.read(ACTIVITY, list(range(20)), now=end).to_rows()
    for u, row in enumerate(res):  # 2h window at 02:40 = tiles 01:00 and 02:00: minutes 70, 130, 150
        assert row["activity:count_2h"] == 3
        assert row["activity:amount_sum_2h"] == (u + 70) + (u + 130.0) + (u + 150.0)
    again = materialize(offline, store, [ACTIVITY], T0, end, None, chunk_rows=16, progress=False)
    assert again.rows_read == 60 and again.rows_written == 0


def test_incremental_materialization_is_clamped_to_the_streams_start(store: OnlineStore) -> None:
    """Once the stream applied events from 01:20, the batch never writes a tile from 01:00 on."""
    events = [(1, T0 + timedelta(minutes=m), 1.0) for m in (10, 40, 70, 100)]
    offline = FakeOffline(pa.table({"user_id": [0], "event_ts": pa.array([T0], type=pa.timestamp("us", "UTC"))}),
                          events=events)
    store.add_events(ACTIVITY, [(1, T0 + timedelta(minutes=m), {"amount": 1.0}) for m in (80, 100)])  # stream from 01:20
    assert store.get_stream_from(ACTIVITY) == to_micros(T0 + timedelta(minutes=80))
    end = T0 + timedelta(hours=1, minutes=50)
    rep = materialize(offline, store, [ACTIVITY], None, end, None, chunk_rows=16, progress=False)
    assert offline.calls[-1][3] == T0 + H - timedelta(microseconds=1)  # the state as of the clamp, 01:00
    assert rep.view("activity").through == T0 + H
    row = store.read(ACTIVITY, [1], now=end).to_rows()[0]
    assert row["activity:count_2h"] == 4  # 00:10, 00:40 from the batch; 01:20, 01:40 from the stream (01:10 missed)
    # a later run cannot move the cut past the stream's start: nothing to write, the watermark still moves
    later = materialize(offline, store, [ACTIVITY], None, end + H, None, chunk_rows=16, progress=False)
    assert later.rows_written == 0 and later.view("activity").through == T0 + H
    assert store.get_watermark(ACTIVITY) == end + H


def test_cli_materializes_from_definitions(stack, tmp_path, capsys, unique_prefix: str) -> None:
    """`cascade features materialize` end to end: definitions file, Parquet source, Redis, state file."""
    import pyarrow.parquet as pq

    from featurestore.materialize import cli_main

    pq.write_table(history(20, 2), tmp_path / "p.parquet")
    defs = tmp_path / "defs.py"
    defs.write_text(
        "from featurestore.definitions import Entity, Feature, FeatureView, ParquetSource, ValueType\n"
        "user = Entity('user', ('user_id',))\n"
        "profile = FeatureView('profile', (user,), ParquetSource('p.parquet'), (\n"
        "    Feature('age', ValueType.INT64), Feature('score', ValueType.FLOAT64), Feature('city', ValueType.STRING)))\n")
    argv = ["--definitions", str(defs), "--offline-root", str(tmp_path), "--redis-url", stack.redis_url,
            "--project", unique_prefix,
            "--end", (T0 + timedelta(hours=5)).isoformat(), "--state", str(tmp_path / "s.json"), "--no-progress",
            "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_read"] == 20 and out["views"][0]["view"] == "profile"
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["views"][0]["up_to_date"] is True
    assert cli_main(["--definitions", str(defs), "--redis-url", stack.redis_url, "nope"]) == 1
    assert cli_main(["--end", "yesterday"]) == 2
