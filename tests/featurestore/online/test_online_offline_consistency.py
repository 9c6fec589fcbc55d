"""Integration: materialize from the real offline store, read online, compare with the training set.

The served value must equal the trained value: for every entity, the online read
at `end` equals `OfflineStore.get_training_set` for a label at `end`, for a
FeatureView (latest row, TTL) and a WindowedFeatureView (tiles vs the offline
window query). Amounts are multiples of 0.25, so sums are exact in any order.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.definitions import (
    Aggregation,
    AggregationFunction as F,
    Entity,
    Feature,
    FeatureView,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.materialize import materialize
from featurestore.offline import OfflineStore
from featurestore.online import FeatureStatus, OnlineStore

H = timedelta(hours=1)
T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
END = T0 + timedelta(days=2, hours=3, minutes=17)
USER = Entity("user", ("user_id",))
PROFILE = FeatureView("profile", (USER,), ParquetSource("profile.parquet"), (
    Feature("age", ValueType.INT64, default=-1), Feature("score", ValueType.FLOAT64), Feature("city", ValueType.STRING),
), ttl=timedelta(days=1))
ACTIVITY = WindowedFeatureView("activity", (USER,), ParquetSource("events.parquet"), (
    Aggregation(F.COUNT, (2 * H, 24 * H)),
    Aggregation(F.SUM, (24 * H,), column="amount"),
    Aggregation(F.MEAN, (2 * H, 24 * H), column="amount"),
    Aggregation(F.LAST_N, (24 * H,), column="item", n=4),
), tile=H)
# the same with each window's default hop: 2h by 5 min, 24h by 1h
LADDER = WindowedFeatureView("activity", (USER,), ParquetSource("events.parquet"), (
    Aggregation(F.COUNT, (2 * H, 24 * H)),
    Aggregation(F.SUM, (24 * H,), column="amount"),
    Aggregation(F.MEAN, (2 * H, 24 * H), column="amount"),
    Aggregation(F.LAST_N, (2 * H, 24 * H), column="item", n=4),
))
N_USERS = 60


@pytest.fixture()
def offline(tmp_path) -> OfflineStore:
    rng = np.random.default_rng(3)
    # profiles: a few versions per user, some users only long ago (outside the ttl at END), some never
    rows = []
    for u in range(N_USERS - 5):
        for _ in range(int(rng.integers(1, 4))):
            ts = T0 + timedelta(minutes=int(rng.integers(0, 3 * 24 * 60)))  # some after END: must be ignored
            rows.append({"user_id": u, "event_ts": ts, "age": int(rng.integers(18, 80)),
                         "score": None if rng.random() < 0.2 else float(rng.integers(0, 100)) / 4,
                         "city": f"city{int(rng.integers(0, 9))}"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "profile.parquet")
    # events: ~40 per user over 3 days, amounts with nulls, several events on the same second
    ev = []
    for u in range(N_USERS - 3):
        for _ in range(int(rng.integers(0, 80))):
            ts = T0 + timedelta(seconds=int(rng.integers(0, 3 * 86400)))
            ev.append({"user_id": u, "event_ts": ts,
                       "amount": None if rng.random() < 0.1 else float(rng.integers(-40, 400)) / 4,
                       "item": int(rng.integers(0, 10_000))})
    pq.write_table(pa.Table.from_pylist(ev), tmp_path / "events.parquet")
    with OfflineStore(tmp_path, threads=2, memory_limit="1GB") as store:
        yield store


@pytest.mark.parametrize("activity", [ACTIVITY, LADDER], ids=["tile_1h", "ladder"])
def test_online_equals_training_set_after_materialize(offline: OfflineStore, store: OnlineStore, tmp_path,
                                                     activity: WindowedFeatureView) -> None:
    ACTIVITY = activity  # noqa: N806 - the view under test
    rep = materialize(offline, store, [PROFILE, ACTIVITY], None, END, tmp_path / "state.json",
                      chunk_rows=50, progress=False)
    assert rep.view("profile").rows_written > 0 and rep.view("activity").rows_written > 0
    users = list(range(N_USERS))
    online = store.read([PROFILE, ACTIVITY], users, now=END)
    labels = pa.table({"user_id": users, "event_ts": pa.array([END] * N_USERS, type=pa.timestamp("us", "UTC"))})
    trained = offline.get_training_set(labels, [PROFILE, ACTIVITY])

    for view in (PROFILE, ACTIVITY):
        for f in view.features:
            served = online.values(f"{view.name}:{f.name}")
            expected = trained.column(f"{view.name}__{f.name}").to_pylist()
            if view is PROFILE:
                # offline: NULL when no row within the ttl; online: the default, with a status saying why
                st = online.statuses(f"profile:{f.name}")
                fallback = (st == FeatureStatus.NOT_FOUND) | (st == FeatureStatus.OUTSIDE_MAX_AGE)
                assert all(e is None for e, fb in zip(expected, fallback) if fb), f.name
                assert fallback.any() and (~fallback).any()
                served = [s for s, fb in zip(served, fallback) if not fb]
                expected = [e for e, fb in zip(expected, fallback) if not fb]
            assert served == expected, f"{view.name}:{f.name}"

    # a second run over the same range changes nothing
    again = materialize(offline, store, [PROFILE, ACTIVITY], T0, END, None, chunk_rows=50, progress=False)
    assert again.rows_written == 0 and again.rows_read == rep.rows_read
