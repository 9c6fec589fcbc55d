"""Each window hops by its own hop (the default ladder): hand-checked values, and tiles == training set.

The view: COUNT over 1 d (hop 1 h) and 7 d (hop 6 h), the last 3 items over 7 d (hop 6 h). As of t a
window holds the events with hop_start(t) - window + hop <= ts <= t.

User 1's events (2024-01, UTC):

    01 05:59 item 1
    01 06:00 item 2     (exactly on a 6 h boundary)
    07 23:00 item 3
    08 10:20 item 4
    08 11:00 item 5
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from offline_helpers import at, labels, write

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    WindowedFeatureView,
    default_hop,
)
from featurestore.offline import OfflineStore, combine_tiles, tile_start

USER = Entity("user", ("user_id",))
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
EVENTS = [
    {"user_id": 1, "event_ts": at(5, 59, day=1), "item_id": 1},
    {"user_id": 1, "event_ts": at(6, day=1), "item_id": 2},
    {"user_id": 1, "event_ts": at(23, day=7), "item_id": 3},
    {"user_id": 1, "event_ts": at(10, 20, day=8), "item_id": 4},
    {"user_id": 1, "event_ts": at(11, day=8), "item_id": 5},
]


def test_the_default_ladder() -> None:
    assert [default_hop(w) for w in (H, 6 * H, D, 7 * D, 30 * D, 90 * D)] == [5 * M, H, H, 6 * H, D, D]
    assert default_hop(2 * H) == 5 * M and default_hop(3 * H) == 5 * M  # 24 and 36 hops
    with pytest.raises(ValueError, match="set the view's `tile`"):
        default_hop(7 * M)


def test_each_window_hops_by_its_own_hop(store: OfflineStore, tmp_path: Path) -> None:
    view = WindowedFeatureView("hops", (USER,), ParquetSource(write(tmp_path, "e.parquet", EVENTS)), (
        Aggregation(AggregationFunction.COUNT, (D, 7 * D)),
        Aggregation(AggregationFunction.LAST_N, (7 * D,), column="item_id", n=3),
    ))
    assert (view.hop(D), view.hop(7 * D), view.hops) == (H, 6 * H, (H, 6 * H))
    out = store.get_training_set(labels([
        {"user_id": 1, "event_ts": at(11, 30, day=8)},  # 1d: [07 12:00, ..]; 7d: [01 12:00, ..]
        {"user_id": 1, "event_ts": at(12, day=7)},  # 1d: [06 13:00, ..]: nothing; 7d: [12-31 18:00, ..]
        {"user_id": 1, "event_ts": at(5, 59, day=8)},  # 7d: [01 06:00, ..]: the 06:00 event counts
        {"user_id": 1, "event_ts": at(6, day=8)},  # 7d hops: [01 12:00, ..]: both Jan 1 events leave
    ]), [view], name_format="{feature}").to_pylist()
    got = [(r["count_1d"], r["count_7d"], r["item_id_last3_7d"]) for r in out]
    assert got == [(3, 3, [5, 4, 3]), (0, 2, [2, 1]), (1, 2, [3, 2]), (1, 1, [3])]


def test_combining_tiles_gives_what_the_training_set_gives_with_ladder_hops(store: OfflineStore,
                                                                            tmp_path: Path) -> None:
    rng = random.Random(5)
    events = [{"user_id": rng.randrange(3), "event_ts": at(0, day=2) + timedelta(minutes=rng.randrange(0, 2 * 24 * 60)),
               "item_id": i, "rating": rng.choice([None, 0.5, 1.0, 2.25, 3.0])} for i in range(300)]
    view = WindowedFeatureView("ladder", (USER,), ParquetSource(write(tmp_path, "r.parquet", events)), (
        Aggregation(AggregationFunction.COUNT, (2 * H, 6 * H, D)),  # hops 5m, 1h, 1h
        Aggregation(AggregationFunction.MEAN, (2 * H, D), column="rating"),
        Aggregation(AggregationFunction.LAST_N, (2 * H, D), column="item_id", n=4),
    ))
    assert view.hops == (5 * M, H)
    label_rows = [{"user_id": rng.randrange(3), "event_ts": at(0, day=2) + timedelta(minutes=rng.randrange(0, 3 * 24 * 60))}
                  for _ in range(30)]
    trained = store.get_training_set(labels(label_rows), [view], name_format="{feature}").to_pylist()
    for lab, got in zip(label_rows, trained):
        rows = [t for t in store.tiles(view, end=lab["event_ts"]).to_pylist() if t["user_id"] == lab["user_id"]]
        ring = [t for t in store.tiles(view, end=lab["event_ts"], ring=True).to_pylist() if t["user_id"] == lab["user_id"]]
        for source in (rows, ring):  # the ring holds everything the windows need
            online = combine_tiles(view, source, lab["event_ts"])
            for name in view.feature_names:
                assert online[name] == pytest.approx(got[name]), name
        for name, window in (("count_2h", 2 * H), ("count_6h", 6 * H), ("count_1d", D)):  # brute force
            hop = view.hop(window)
            lo = tile_start(lab["event_ts"], hop) - window + hop
            assert got[name] == sum(1 for e in events if e["user_id"] == lab["user_id"] and lo <= e["event_ts"] <= lab["event_ts"])
