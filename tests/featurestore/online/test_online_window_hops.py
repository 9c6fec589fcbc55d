"""Per-window hops online: rings per hop and untiled last-N lists read as the definition, events in any order.

The definition (`WindowedFeatureView`): as of t a window holds the events with
hop_start(t) - window + hop <= ts <= t, its hop from the default ladder here (1h -> 5m, 6h -> 1h,
1d -> 1h). Last-N: the n most recent values in the window, ties on time by arrival (later = more recent).
Last-N is exact without tiles because the n most recent values inside a window are the in-window
members of the n most recent overall; the store keeps those n (and drops what no window can reach).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from featurestore.definitions import Aggregation, AggregationFunction as F, Entity, ParquetSource, WindowedFeatureView
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.online.codec import to_micros

M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
T0 = datetime(2025, 6, 1, tzinfo=timezone.utc)
VIEW = WindowedFeatureView("hopped", (Entity("user", ("user_id",)),), ParquetSource("e.parquet"), (
    Aggregation(F.COUNT, (H, 6 * H, D), name="n"),
    Aggregation(F.SUM, (6 * H,), column="amount"),
    Aggregation(F.MEAN, (H, D), column="amount"),
    Aggregation(F.LAST_N, (H, D), column="item", n=3),
))


def expected(events: list[tuple], user: int, now: datetime) -> dict:
    out = {}
    for agg in VIEW.aggregations:
        for name, w in zip(agg.output_names(), agg.windows):
            hop = VIEW.hop(w)
            cur = T0 + ((now - T0) // hop) * hop
            inside = [(ts, k, amount, item) for k, (u, ts, amount, item) in enumerate(events)
                      if u == user and cur - w + hop <= ts <= now]
            amounts = [a for _, _, a, _ in inside if a is not None]
            if agg.function is F.COUNT:
                out[name] = len(inside)
            elif agg.function is F.SUM:
                out[name] = float(sum(amounts))
            elif agg.function is F.MEAN:
                out[name] = sum(amounts) / len(amounts) if amounts else None
            else:
                out[name] = [item for _, _, _, item in sorted(inside, reverse=True)][:3]
    return out


def history(seed: int) -> list[tuple]:
    """(user, ts, amount, item) in ARRIVAL order: ~20% out of order, a few by more than the rings keep."""
    rng = random.Random(seed)
    rows = []
    for k in range(400):
        ts = T0 + timedelta(seconds=rng.randrange(0, 30 * 3600))
        if rng.random() < 0.1:
            ts = ts.replace(minute=0, second=0) if rng.random() < 0.5 else ts.replace(second=0) - timedelta(microseconds=1)
        rows.append((rng.randrange(4), ts, None if rng.random() < 0.1 else rng.randrange(-8, 40) / 4, k))
    for u in range(3):  # ties: several events of a user at the same microsecond
        ts = T0 + timedelta(hours=29, minutes=rng.randrange(60))
        rows += [(u, ts, 1.0, 1000 + 10 * u + j) for j in range(4)]
    rows.sort(key=lambda r: r[1])
    late = [r for r in rows if rng.random() < 0.2]
    for r in late:
        rows.remove(r)
        delay = timedelta(hours=rng.choice([0.5, 2, 8, 40]))
        later = [k for k, x in enumerate(rows) if x[1] > r[1] + delay]
        rows.insert(later[0] if later else len(rows), r)
    return rows


def test_the_hops_and_ring_sizes() -> None:
    tc = OnlineStore.__new__(OnlineStore)  # no server needed: the codec only
    from featurestore.online.codec import TileCodec

    codec = TileCodec(VIEW)
    assert [(r.hop_us // 60_000_000, r.slots) for r in codec.rings] == [(5, 13), (60, 25)]
    assert codec.slot_size == 32 and codec.lists[0].keep == 3 and codec.lists[0].span_us == to_micros(T0 + D) - to_micros(T0)
    del tc


@pytest.mark.parametrize("seed", [1, 2])
def test_reads_equal_the_definition_with_late_and_out_of_order_events(store: OnlineStore, seed: int) -> None:
    events = history(seed)
    for i in range(0, len(events), 50):  # several calls: the same entity's events spread over them
        store.add_events(VIEW, [(u, ts, {"amount": a, "item": item}) for u, ts, a, item in events[i: i + 50]])
    last = max(ts for _, ts, _, _ in events)
    users = [0, 1, 2, 3, 99]
    for now in (last, last + 3 * M, last + 40 * M, last + 5 * H, last + 23 * H):
        rows = store.read(VIEW, users, now=now).to_rows()
        for u, row in zip(users, rows):
            want = expected(events, u, now)
            got = {name: row[f"hopped:{name}"] for name in VIEW.feature_names}
            for name, value in want.items():
                if isinstance(value, float):
                    assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), (u, now, name)
                else:
                    assert got[name] == value, (u, now, name)
    res = store.read(VIEW, users, now=last)
    assert (res.status[-1] == FeatureStatus.NOT_FOUND).all() and (res.status[0] != FeatureStatus.NOT_FOUND).all()
    assert res.event_ts["hopped"][0] <= np.datetime64(last.replace(tzinfo=None), "us")


def test_a_read_of_some_features_fetches_only_their_rings_and_lists(store: OnlineStore) -> None:
    store.add_events(VIEW, [(1, T0 + 10 * M, {"amount": 1.0, "item": 5})])
    plan = store.plan((VIEW, ["n_6h", "item_last3_1h"]))
    assert plan.reads[0].parts == (("rings", 0), ("list", 0))  # every ring is one string; one of the lists
    assert store.read(plan, [1], now=T0 + 20 * M).to_rows() == [{"hopped:n_6h": 1, "hopped:item_last3_1h": [5]}]
