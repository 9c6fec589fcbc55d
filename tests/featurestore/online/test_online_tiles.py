"""Window tiles online: streaming adds and batch tile writes read back as hand-computed windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from featurestore.definitions import (
    Aggregation,
    AggregationFunction as F,
    Entity,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.online import FeatureStatus, OnlineStore

H = timedelta(hours=1)
DAY = datetime(2025, 3, 1, tzinfo=timezone.utc)
USER = Entity("user", ("user_id",))
EVENTS = WindowedFeatureView("user_events", (USER,), ParquetSource("events.parquet"), (
    Aggregation(F.COUNT, (2 * H, 3 * H)),
    Aggregation(F.SUM, (2 * H,), column="amount"),
    Aggregation(F.MEAN, (3 * H,), column="amount"),
    Aggregation(F.LAST_N, (2 * H, 3 * H), column="item", n=3),
), tile=H)
NAMES = ["count_2h", "count_3h", "amount_sum_2h", "amount_mean_3h", "item_last3_2h", "item_last3_3h"]


def at(hh: int, mm: int) -> datetime:
    return DAY + timedelta(hours=hh, minutes=mm)


# (user, time, amount, item); 106 arrives after 105 at the same time; 104 arrives before 103 (out of order).
# Window values as featurestore.offline.windows defines them: sum 0.0 and mean NULL without values, last-n most
# recent first (ties: the later arrival is the more recent).
EVENTS_USER1 = [
    (1, at(9, 30), 1.0, 100),
    (1, at(10, 10), 2.0, 101),
    (1, at(10, 50), None, 102),
    (1, at(11, 20), 8.0, 104),
    (1, at(11, 5), 4.0, 103),
    (1, at(12, 15), 16.0, 105),
    (1, at(12, 15), 0.5, 106),
]
EVENTS_USER2 = [(2, at(9, 30), 3.0, 200)]

EXPECTED_1240 = {  # tile_start(12:40) = 12:00; 2h = tiles 11..12, 3h = tiles 10..12 (tile 9 is in the ring, not the window)
    "count_2h": 4, "count_3h": 6, "amount_sum_2h": 28.5, "amount_mean_3h": 30.5 / 5,
    "item_last3_2h": [106, 105, 104], "item_last3_3h": [106, 105, 104],
}
EXPECTED_1310 = {  # 2h = tiles 12..13, 3h = tiles 11..13
    "count_2h": 2, "count_3h": 4, "amount_sum_2h": 16.5, "amount_mean_3h": 28.5 / 4,
    "item_last3_2h": [106, 105], "item_last3_3h": [106, 105, 104],
}
DEFAULTS = {"count_2h": 0, "count_3h": 0, "amount_sum_2h": 0.0, "amount_mean_3h": None,
            "item_last3_2h": [], "item_last3_3h": []}


def check(store: OnlineStore, now: datetime, expected: dict) -> None:
    res = store.read(EVENTS, [1, 2, 3], now=now)
    rows = res.to_rows()
    got = {n: rows[0][f"user_events:{n}"] for n in NAMES}
    assert got == expected
    assert {n: rows[1][f"user_events:{n}"] for n in NAMES} == DEFAULTS
    assert {n: rows[2][f"user_events:{n}"] for n in NAMES} == DEFAULTS
    assert (res.status[1] == FeatureStatus.DEFAULTED).all()  # known entity, nothing in the windows
    assert (res.status[2] == FeatureStatus.NOT_FOUND).all()


def add_all(store: OnlineStore, events) -> int:
    return store.add_events(EVENTS, [(u, ts, {"amount": amount, "item": item}) for u, ts, amount, item in events])


def test_streaming_adds_read_as_hand_computed_windows(store: OnlineStore) -> None:
    assert add_all(store, EVENTS_USER1 + EVENTS_USER2) == 8
    check(store, at(12, 40), EXPECTED_1240)
    check(store, at(13, 10), EXPECTED_1310)
    assert store.add_to_tiles(EVENTS, 1, at(13, 30), {"amount": None, "item": 107}) == 1
    res = store.read(EVENTS, [1], now=at(13, 45)).to_rows()[0]
    assert res["user_events:count_2h"] == 3 and res["user_events:amount_sum_2h"] == 16.5
    assert res["user_events:item_last3_2h"] == [107, 106, 105]
    # tile 13 took tile 9's ring slot: an event for tile 9 now is too late and dropped
    assert store.add_to_tiles(EVENTS, 1, at(9, 45), {"amount": 1.0, "item": 1}) == 0


def tiles_table(events, keep: int = 3) -> pa.Table:
    """What `OfflineStore.tiles` gives for `events`: per (user, hour) tile a row, per user a last-n row."""
    tiles: dict[tuple[int, datetime], list] = {}
    lasts: dict[int, list] = {}
    for u, ts, amount, item in sorted(events, key=lambda e: e[1]):  # stable: arrival order on equal times
        tiles.setdefault((u, ts.replace(minute=0)), []).append((ts, amount, item))
        lasts.setdefault(u, []).append((ts, item))
    cols: dict[str, list] = {k: [] for k in ("user_id", "hop", "tile_start", "count", "amount_sum", "amount_count",
                                             "item_last_n", "item_last_n_ts")}

    def row(**values) -> None:
        for k in cols:
            cols[k].append(values.get(k))

    for (u, start), evs in tiles.items():
        amounts = [a for _, a, _ in evs if a is not None]
        row(user_id=u, hop=H, tile_start=start, count=len(evs), amount_sum=sum(amounts) if amounts else 0.0,
            amount_count=len(amounts))
    for u, evs in lasts.items():
        evs = [e for e in evs if e[1] is not None][-keep:]
        row(user_id=u, item_last_n=[i for _, i in evs], item_last_n_ts=[t for t, _ in evs])
    return pa.table({**cols, "hop": pa.array(cols["hop"], type=pa.duration("us")),
                     "tile_start": pa.array(cols["tile_start"], type=pa.timestamp("us", "UTC")),
                     "item_last_n_ts": pa.array(cols["item_last_n_ts"], type=pa.list_(pa.timestamp("us", "UTC")))})


def test_batch_tiles_read_the_same_and_rewrite_is_idempotent(store: OnlineStore) -> None:
    tiles = tiles_table(EVENTS_USER1 + EVENTS_USER2)
    assert store.write_tiles(EVENTS, tiles) == 2  # entities whose state changed
    check(store, at(12, 40), EXPECTED_1240)
    check(store, at(13, 10), EXPECTED_1310)
    assert store.write_tiles(EVENTS, tiles) == 0
    # a streaming event on top of a batch-written tile merges into it
    assert store.add_to_tiles(EVENTS, 1, at(12, 20), {"amount": 1.5, "item": 108}) == 1
    row = store.read(EVENTS, [1], now=at(12, 40)).to_rows()[0]
    assert row["user_events:count_2h"] == 5 and row["user_events:amount_sum_2h"] == 30.0
    assert row["user_events:item_last3_3h"] == [108, 106, 105]


def test_batch_then_stream_the_stream_skips_what_the_batch_holds(store: OnlineStore) -> None:
    """Materialized through 12:30 (exclusive): the stream adds only events from 12:30 on, into the same tile."""
    batch = [(5, at(11, 50), 1.0, 1), (5, at(12, 5), 2.0, 2), (5, at(12, 29), 4.0, 3)]
    assert store.write_tiles(EVENTS, tiles_table(batch), through=at(12, 30)) == 1
    late_dup = store.add_events(EVENTS, [(5, at(12, 29), {"amount": 4.0, "item": 3})])  # the batch has it
    assert late_dup == 0
    assert store.add_events(EVENTS, [(5, at(12, 30), {"amount": 8.0, "item": 4})]) == 1
    row = store.read(EVENTS, [5], now=at(12, 55)).to_rows()[0]
    assert row["user_events:count_2h"] == 4 and row["user_events:amount_sum_2h"] == 15.0
    assert row["user_events:item_last3_2h"] == [4, 3, 2]


def test_stream_then_batch_the_stream_keeps_its_tiles(store: OnlineStore) -> None:
    """The stream started at 12:05: tile 12:00 and later are its own; the batch may only fill tiles before.

    Materialization computes the batch state as of the stream's start floored to the coarsest hop (12:00);
    a batch cut later than that (a stream starting while materializing) still leaves the stream's tiles alone.
    """
    assert store.add_events(EVENTS, [(6, at(12, 5), {"amount": 1.0, "item": 1})]) == 1
    history = [(6, at(10, 30), 5.0, 7), (6, at(11, 40), 3.0, 8), (6, at(12, 5), 1.0, 1), (6, at(12, 50), 2.0, 2)]
    before = [e for e in history if e[1] < at(12, 0)]
    assert store.write_tiles(EVENTS, tiles_table(before), through=at(12, 0)) == 1
    row = store.read(EVENTS, [6], now=at(12, 55)).to_rows()[0]
    assert (row["user_events:count_2h"], row["user_events:count_3h"]) == (2, 3)
    assert row["user_events:item_last3_3h"] == [1, 8, 7]  # batch values before 12:00, the stream's after
    assert store.add_events(EVENTS, [(6, at(11, 45), {"amount": 1.0, "item": 9})]) == 0  # the batch's now
    assert store.add_events(EVENTS, [(6, at(12, 50), {"amount": 2.0, "item": 2})]) == 1  # the stream's
    row = store.read(EVENTS, [6], now=at(12, 55)).to_rows()[0]
    assert (row["user_events:count_2h"], row["user_events:amount_sum_2h"]) == (3, 6.0)
    assert row["user_events:item_last3_3h"] == [2, 1, 8]
    # a cut past the stream's start: tiles from 12:00 stay the stream's (no double count of 12:05 / 12:50)
    assert store.write_tiles(EVENTS, tiles_table(history), through=at(13, 0)) == 0
    assert store.read(EVENTS, [6], now=at(12, 55)).to_rows()[0]["user_events:count_3h"] == 4


def test_an_older_cut_never_overwrites_a_newer_one(store: OnlineStore) -> None:
    newer = tiles_table([(7, at(11, 5), 1.0, 1), (7, at(12, 5), 2.0, 2)])
    older = tiles_table([(7, at(11, 5), 1.0, 1)])
    assert store.write_tiles(EVENTS, newer, through=at(12, 10)) == 1
    assert store.write_tiles(EVENTS, older, through=at(11, 10)) == 0
    assert store.read(EVENTS, [7], now=at(12, 20)).to_rows()[0]["user_events:count_2h"] == 2
    # a tile older than the ring keeps is dropped; the newer tile in its slot stays
    assert store.write_tiles(EVENTS, tiles_table([(7, at(8, 5), 9.0, 9), (7, at(11, 5), 1.0, 1), (7, at(12, 5), 2.0, 2)]),
                             through=at(12, 10)) == 0


def test_window_of_only_nulls_sums_to_zero_and_has_no_mean(store: OnlineStore) -> None:
    store.add_to_tiles(EVENTS, 9, at(12, 5), {"amount": None, "item": None})
    res = store.read(EVENTS, [9], now=at(12, 10))
    st = dict(zip(res.refs, res.status[0].tolist()))
    row = res.to_rows()[0]
    assert st["user_events:count_2h"] == FeatureStatus.PRESENT and row["user_events:count_2h"] == 1
    assert st["user_events:amount_sum_2h"] == FeatureStatus.PRESENT and row["user_events:amount_sum_2h"] == 0.0
    assert st["user_events:amount_mean_3h"] == FeatureStatus.NULL_VALUE and row["user_events:amount_mean_3h"] is None
    assert row["user_events:item_last3_2h"] == []


def test_string_last_n_and_unaligned_tiles_rejected(store: OnlineStore) -> None:
    view = WindowedFeatureView("clicks", (USER,), ParquetSource("c.parquet"), (
        Aggregation(F.COUNT, (2 * H,)),
        Aggregation(F.LAST_N, (2 * H,), column="query", n=2, dtype=ValueType.STRING_LIST),
    ), tile=H)
    store.add_events(view, [(1, at(10, m), {"query": q}) for m, q in ((1, "a"), (2, ""), (3, "ünï"))])
    assert store.read(view, [1], now=at(10, 30)).to_rows()[0]["clicks:query_last2_2h"] == ["ünï", ""]
    bad = pa.table({"user_id": [1], "hop": pa.array([H], type=pa.duration("us")),
                    "tile_start": pa.array([at(10, 30)], type=pa.timestamp("us", "UTC")), "count": [1]})
    with pytest.raises(ValueError, match="aligned"):
        store.write_tiles(view, bad)
