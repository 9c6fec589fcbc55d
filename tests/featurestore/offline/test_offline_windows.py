"""Window aggregations offline, hand-checked across tile boundaries, and the tiles the online side keeps.

The view: 1 h tiles; count over 1 h and 3 h, sum and mean of `rating` over 3 h,
the last 2 `item_id`s over 3 h. As of t the window holds the events with
tile_start(t) - window + 1h <= ts <= t: for t = 10:30 and 3 h, [08:00, 10:30].

User 1's events (2024-01-01, UTC):

    08:10 item 1 rating 1.0
    09:00 item 2 rating 2.0     (exactly on a tile boundary)
    09:59:59 item 3 rating NULL (counted, not summed)
    10:00 item 4 rating 4.0
    10:20 item 5 rating 5.0
    10:20 item 6 rating 6.0     (same time, later row: the more recent)
    10:45 item 7 rating 7.0
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from offline_helpers import at, labels, write

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.offline import OfflineStore, combine_tiles, tile_start

USER = Entity("user", ("user_id",))
H = timedelta(hours=1)
EVENTS = [
    {"user_id": 1, "event_ts": at(8, 10), "item_id": 1, "rating": 1.0},
    {"user_id": 1, "event_ts": at(9), "item_id": 2, "rating": 2.0},
    {"user_id": 1, "event_ts": at(9, 59, 59), "item_id": 3, "rating": None},
    {"user_id": 1, "event_ts": at(10), "item_id": 4, "rating": 4.0},
    {"user_id": 1, "event_ts": at(10, 20), "item_id": 5, "rating": 5.0},
    {"user_id": 1, "event_ts": at(10, 20), "item_id": 6, "rating": 6.0},
    {"user_id": 1, "event_ts": at(10, 45), "item_id": 7, "rating": 7.0},
]
OUTPUTS = ["count_1h", "count_3h", "rating_sum_3h", "rating_mean_3h", "item_id_last2_3h"]


def activity(path: str) -> WindowedFeatureView:
    return WindowedFeatureView("act", (USER,), ParquetSource(path), (
        Aggregation(AggregationFunction.COUNT, (H, 3 * H)),
        Aggregation(AggregationFunction.SUM, (3 * H,), column="rating"),
        Aggregation(AggregationFunction.MEAN, (3 * H,), column="rating"),
        Aggregation(AggregationFunction.LAST_N, (3 * H,), column="item_id", n=2),
    ), tile=H)


@pytest.fixture()
def view(tmp_path: Path) -> WindowedFeatureView:
    return activity(write(tmp_path, "events.parquet", EVENTS))


def windows_at(store: OfflineStore, view: WindowedFeatureView, rows: list[dict]) -> list[dict]:
    out = store.get_training_set(labels(rows), [view], name_format="{feature}")
    return [{k: r[k] for k in OUTPUTS} for r in out.to_pylist()]


def expect(count_1h, count_3h, rating_sum_3h, rating_mean_3h, item_id_last2_3h) -> dict:  # noqa: ANN001
    return dict(zip(OUTPUTS, [count_1h, count_3h, rating_sum_3h, rating_mean_3h, item_id_last2_3h]))


def test_windows_hop_by_tile_at_their_old_end_and_are_exact_at_t(store: OfflineStore, view: WindowedFeatureView) -> None:
    got = windows_at(store, view, [
        {"user_id": 1, "event_ts": at(10, 30)},  # 1h: [10:00, 10:30]; 3h: [08:00, 10:30]
        {"user_id": 1, "event_ts": at(10, 19, 59)},  # the 10:20 events are in its future
        {"user_id": 1, "event_ts": at(10, 20)},  # both 10:20 events count at 10:20
        {"user_id": 1, "event_ts": at(11)},  # a new tile: 1h holds [11:00, 11:00]; 3h drops the 08:xx tile
        {"user_id": 1, "event_ts": at(9)},  # the event at exactly 09:00 counts
        {"user_id": 1, "event_ts": at(8, 5)},  # nothing yet
    ])
    assert got[0] == expect(3, 6, 18.0, pytest.approx(3.6), [6, 5])
    assert got[1] == expect(1, 4, 7.0, pytest.approx(7 / 3), [4, 3])
    assert got[2] == expect(3, 6, 18.0, pytest.approx(3.6), [6, 5])
    assert got[3] == expect(0, 6, 24.0, pytest.approx(4.8), [7, 6])
    assert got[4] == expect(1, 2, 3.0, pytest.approx(1.5), [2, 1])
    assert got[5] == expect(0, 0, 0.0, None, [])


def test_entities_without_events_get_zero_counts_and_null_means(store: OfflineStore, view: WindowedFeatureView) -> None:
    got = windows_at(store, view, [
        {"user_id": 2, "event_ts": at(10, 30)},  # no events at all
        {"user_id": None, "event_ts": at(10, 30)},  # no key
        {"user_id": 1, "event_ts": at(14, 0)},  # all of user 1's events are older than 3h (window [12:00, 14:00])
    ])
    assert got == [expect(0, 0, 0.0, None, [])] * 3


def test_a_label_without_a_timestamp_gets_nulls_and_keeps_its_place(store: OfflineStore, view: WindowedFeatureView) -> None:
    rows = [{"user_id": 1, "event_ts": at(10, 30)}, {"user_id": 1, "event_ts": None}, {"user_id": 1, "event_ts": at(11)}]
    got = windows_at(store, view, rows)
    assert got[1] == expect(None, None, None, None, None)
    assert [g["count_3h"] for g in got] == [6, None, 6]


def test_only_requested_outputs_are_computed_and_named(store: OfflineStore, view: WindowedFeatureView) -> None:
    out = store.get_training_set(labels([{"user_id": 1, "event_ts": at(10, 30)}]),
                                 [(view, ["item_id_last2_3h", "count_1h"])])
    assert out.column_names == ["user_id", "event_ts", "act__item_id_last2_3h", "act__count_1h"]
    assert out.schema.field("act__item_id_last2_3h").type == pa.list_(pa.int64())
    assert out.to_pylist()[0]["act__item_id_last2_3h"] == [6, 5]


def test_tiles_hold_each_tiles_partial_state_in_the_online_layout(store: OfflineStore, view: WindowedFeatureView) -> None:
    table = store.tiles(view)
    assert table.schema.field("hop").type == pa.duration("us")
    rows = table.to_pylist()  # ordered by keys, then hop (the last-n row first), then tile
    last, tiles = rows[0], rows[1:]
    assert [(r["hop"], r["tile_start"], r["count"], r["rating_sum"], r["rating_count"]) for r in tiles] == [
        (H, at(8), 1, 1.0, 1),
        (H, at(9), 2, 2.0, 1),  # the NULL rating is counted as an event, not as a value
        (H, at(10), 4, 22.0, 4),
    ]
    assert all(r["item_id_last_n"] is None for r in tiles)
    # last-N is not tiled: one row per entity with its 2 most recent values, oldest first (the online order)
    assert (last["hop"], last["tile_start"], last["count"]) == (None, None, None)
    assert last["item_id_last_n"] == [6, 7] and last["item_id_last_n_ts"] == [at(10, 20), at(10, 45)]


def test_tiles_up_to_end_leave_the_current_tile_partial_and_start_rounds_down(store: OfflineStore,
                                                                             view: WindowedFeatureView) -> None:
    rows = store.tiles(view, start=at(9, 30), end=at(10, 20)).to_pylist()
    assert [(r["tile_start"], r["count"]) for r in rows[1:]] == [
        (at(9), 2),  # start 09:30 -> the whole 09:00 tile
        (at(10), 3),  # up to 10:20 included
    ]
    assert rows[0]["item_id_last_n"] == [5, 6]  # the last-n values are cut at start and end exactly
    batches = list(store.iter_tiles(view, chunk_rows=2))
    assert sum(b.num_rows for b in batches) == 4 and max(b.num_rows for b in batches) <= 2


def test_ring_tiles_are_what_the_online_rings_keep(store: OfflineStore, tmp_path: Path) -> None:
    """ring=True: per hop the newest longest-window/hop + 1 tiles as of end; last-n within its window of end."""
    day = timedelta(days=1)
    path = write(tmp_path, "ring.parquet", [
        {"user_id": 1, "event_ts": at(0) - timedelta(days=d, hours=hh), "item_id": 100 * d + hh, "rating": 1.0}
        for d in range(0, 12) for hh in (0, 7, 13)])
    view = WindowedFeatureView("ring", (USER,), ParquetSource(path), (
        Aggregation(AggregationFunction.COUNT, (day, 7 * day)),  # hops 1h (24 + 1 tiles) and 6h (28 + 1)
        Aggregation(AggregationFunction.LAST_N, (2 * day,), column="item_id", n=50),
    ))
    assert view.hops == (H, 6 * H)
    end = at(0) + timedelta(hours=2)
    rows = store.tiles(view, end=end, ring=True).to_pylist()
    by_hop = {}
    for r in rows[1:]:
        by_hop.setdefault(r["hop"], []).append(r["tile_start"])
    # 24 + 1 one-hour tiles up to the one holding `end` (02:00): from 02:00 the day before; its oldest event is 11:00
    assert min(by_hop[H]) == at(0) - 13 * H and max(by_hop[H]) == at(0)
    assert min(by_hop[6 * H]) == at(0) - 7 * day  # 28 + 1 six-hour tiles
    assert all(t >= end - 2 * day for t in rows[0]["item_id_last_n_ts"])
    assert rows[0]["item_id_last_n"][-1] == 0  # the newest (at 00:00) last
    full = store.tiles(view, end=end).to_pylist()
    assert len(full) > len(rows)


def test_tile_start_is_epoch_aligned_utc() -> None:
    assert tile_start(at(10, 59, 59), H) == at(10)
    assert tile_start(at(10, 59, 59), timedelta(days=1)) == at(0)


def test_combining_tiles_gives_what_the_training_set_gives(store: OfflineStore, tmp_path: Path) -> None:
    """Online reads combine tiles; the training set scans events: both must agree for any history."""
    rng = random.Random(3)
    events = [{"user_id": rng.randrange(3), "event_ts": at(rng.randrange(6, 12), rng.randrange(0, 60, 15)),
               "item_id": i, "rating": rng.choice([None, 0.5, 1.0, 2.25, 3.0])} for i in range(120)]
    view = activity(write(tmp_path, "random.parquet", events))
    label_rows = [{"user_id": rng.randrange(3), "event_ts": at(rng.randrange(6, 13), rng.randrange(0, 60, 15))}
                  for _ in range(25)]
    trained = windows_at(store, view, label_rows)
    for lab, got in zip(label_rows, trained):
        tiles = [t for t in store.tiles(view, end=lab["event_ts"]).to_pylist() if t["user_id"] == lab["user_id"]]
        online = combine_tiles(view, tiles, lab["event_ts"])
        assert {**online, "rating_sum_3h": pytest.approx(online["rating_sum_3h"]),
                "rating_mean_3h": pytest.approx(online["rating_mean_3h"])} == got

        # and both equal the definition, evaluated by brute force
        lo = tile_start(lab["event_ts"], H) - 3 * H + H
        inside = [(e["event_ts"], i, e) for i, e in enumerate(events)
                  if e["user_id"] == lab["user_id"] and lo <= e["event_ts"] <= lab["event_ts"]]
        values = [e["rating"] for _, _, e in inside if e["rating"] is not None]
        assert got["count_3h"] == len(inside)
        assert got["rating_sum_3h"] == pytest.approx(sum(values))
        assert got["item_id_last2_3h"] == [e["item_id"] for _, _, e in sorted(inside, key=lambda x: x[:2], reverse=True)][:2]


def test_string_last_n_and_composite_keys(store: OfflineStore, tmp_path: Path) -> None:
    path = write(tmp_path, "pages.parquet", [
        {"user_id": 1, "device": "ios", "event_ts": at(10), "page": "home"},
        {"user_id": 1, "device": "web", "event_ts": at(10, 5), "page": "cart"},
        {"user_id": 1, "device": "ios", "event_ts": at(10, 10), "page": "search"},
    ])
    view = WindowedFeatureView("pages", (USER, Entity("device", ("device",))), ParquetSource(path), (
        Aggregation(AggregationFunction.LAST_N, (H,), column="page", n=5, dtype=ValueType.STRING_LIST),), tile=H)
    out = store.get_training_set(labels([{"user_id": 1, "device": "ios", "event_ts": at(10, 30)},
                                         {"user_id": 1, "device": "web", "event_ts": at(10, 30)}]), [view])
    assert out.column("pages__page_last5_1h").to_pylist() == [["search", "home"], ["cart"]]
