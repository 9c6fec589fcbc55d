"""THE contract of the streaming path: what it serves equals what the offline store trains on.

One event history goes both ways: written as Parquet for the offline store,
and produced as `cascade.v1.Event` protobufs to a fresh Kafka topic (keyed and
partitioned by user, as the EventService does) that the streaming updater
consumes -- with a consumer group, as in production -- into the real Redis.
Then, for several times `now` after the last event, the online read as of
`now` must equal `OfflineStore.get_training_set` with a label at `now` for
every entity: counts exactly, sums and means to float rounding, last-N lists
exactly (ties on time broken by arrival order = source order).

The history is built to hit the edges: events exactly on tile boundaries and
1 ms before them, several events of a user at the same millisecond (ties),
out-of-order arrival (some events produced hours after later ones, a few so
late that their tile has left the ring), entities with and without events in
each window, and `now` values that make windows hop out.
"""

from __future__ import annotations

import math
import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from stream_helpers import create_topic, event, produce, utc

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.offline import OfflineStore
from featurestore.online import OnlineStore
from featurestore.streaming import StreamingUpdater
from stack.clients import redis_client

H = timedelta(hours=1)
D = timedelta(days=1)
USER = Entity("user", ("user_id",))
ITEM = Entity("item", ("item_id",))
BASE = utc(2024, 3, 10)
USERS = (1, 2, 3, 4)
ITEMS = (10, 11, 12, 13, 14)
NO_EVENTS_USER = 99


def views(topic: str) -> tuple[WindowedFeatureView, WindowedFeatureView]:
    src = ParquetSource("events.parquet")
    stream = StreamSource(topic, fields={"user_id": "user_id", "item_id": "item_id", "rating": "value",
                                         "event_ts": "timestamp_ms"})
    user = WindowedFeatureView(
        "s_user_activity", (USER,), src,
        aggregations=(
            Aggregation(AggregationFunction.COUNT, (H, 3 * H, D), name="n"),
            Aggregation(AggregationFunction.SUM, (3 * H, D), column="rating"),
            Aggregation(AggregationFunction.MEAN, (H, D), column="rating"),
            Aggregation(AggregationFunction.LAST_N, (3 * H,), column="item_id", n=3, dtype=ValueType.INT64_LIST),
            Aggregation(AggregationFunction.LAST_N, (D,), column="item_id", n=6, dtype=ValueType.INT64_LIST),
        ),
        tile=H, stream=stream)
    item = WindowedFeatureView(
        "s_item_popularity", (ITEM,), src,
        aggregations=(
            Aggregation(AggregationFunction.COUNT, (2 * H, D), name="n"),
            Aggregation(AggregationFunction.MEAN, (2 * H, D), column="rating"),
            Aggregation(AggregationFunction.SUM, (D,), column="rating"),
        ),
        tile=H, stream=stream)
    return user, item


def history(seed: int = 7) -> list[dict[str, Any]]:
    """Events in ARRIVAL order (the order produced, and the Parquet row order): see the module docstring."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []

    def add(u: int, i: int, ts: Any) -> None:
        rows.append({"user_id": u, "item_id": i, "rating": round(rng.uniform(0.5, 5.0), 3), "event_ts": ts})

    span_ms = int(40 * H.total_seconds() * 1000)
    for _ in range(220):
        add(rng.choice(USERS), rng.choice(ITEMS), BASE + timedelta(milliseconds=rng.randrange(span_ms)))
    for hour in (3, 17, 24, 30, 38):  # on the boundary, and 1 ms before it
        for u in USERS[:3]:
            add(u, rng.choice(ITEMS), BASE + hour * H)
            add(u, rng.choice(ITEMS), BASE + hour * H - timedelta(milliseconds=1))
    for u in USERS:  # ties: several events of one user at the same millisecond, different items
        ts = BASE + timedelta(hours=rng.randrange(30, 40), milliseconds=rng.randrange(3_600_000))
        for i in rng.sample(ITEMS, 4):
            add(u, i, ts)
    rows.sort(key=lambda r: r["event_ts"])
    # Out-of-order arrival: ~15% of events arrive after later ones, by up to 30 h (some beyond the ring).
    late = [r for r in rows if rng.random() < 0.15]
    for r in late:
        rows.remove(r)
        later = [k for k, x in enumerate(rows) if x["event_ts"] > r["event_ts"] + timedelta(hours=rng.uniform(0, 30))]
        rows.insert(later[0] if later else len(rows), r)
    return rows


def write_parquet(root: Path, rows: list[dict[str, Any]]) -> None:
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()),
                        ("event_ts", pa.timestamp("us", tz="UTC"))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "events.parquet")


def same(online: Any, offline: Any) -> bool:
    if isinstance(offline, float) and isinstance(online, float):
        return math.isclose(online, offline, rel_tol=1e-9, abs_tol=1e-9)
    return online == offline


@pytest.fixture(scope="module")
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both paths run once for the module; each test below checks one slice of the comparison."""
    config = request.getfixturevalue("config")
    stack = request.getfixturevalue("stack")
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topic = create_topic(stack.kafka_bootstrap, config, f"{prefix}-events", partitions=2)
    user_view, item_view = views(topic)
    rows = history()
    root = tmp_path_factory.mktemp("offline")
    write_parquet(root, rows)
    produce(stack.kafka_bootstrap, config, topic, [event(r["user_id"], r["item_id"], r["event_ts"], r["rating"])
                                                   for r in rows],
            keys=[str(r["user_id"]).encode() for r in rows])

    client = redis_client(stack.redis_url, config.redis)
    request.addfinalizer(client.close)
    store = OnlineStore(client, prefix)
    updater = StreamingUpdater(config, stack.kafka_bootstrap, store, [user_view, item_view], group_id=f"{prefix}-g")
    try:
        stats = updater.run_for(until_idle=True, timeout=90)
    finally:
        updater.close()

    last = max(r["event_ts"] for r in rows)
    nows = [last, last + timedelta(minutes=7), last + 2 * H, last + timedelta(hours=5, minutes=30),
            last + 23 * H, last + 3 * D]
    compared: list[tuple[str, Any, Any, Any, Any]] = []  # (ref, entity, now, online, offline)
    with OfflineStore(root, threads=2, memory_limit="1GB") as offline:
        for view, entities in ((user_view, [*USERS, NO_EVENTS_USER]), (item_view, list(ITEMS))):
            key = view.join_keys[0]
            labels = pa.table({key: pa.array([e for _ in nows for e in entities], pa.int64()),
                               "event_ts": pa.array([t for t in nows for _ in entities], pa.timestamp("us", tz="UTC"))})
            train = offline.get_training_set(labels, [view]).to_pylist()
            for k, now in enumerate(nows):
                served = store.read(view, entities, now=now).to_rows()
                for j, ent in enumerate(entities):
                    trained = train[k * len(entities) + j]
                    for name in view.feature_names:
                        compared.append((f"{view.name}:{name}", ent, now, served[j][f"{view.name}:{name}"],
                                         trained[f"{view.name}__{name}"]))
    return {"stats": stats, "rows": rows, "compared": compared, "nows": nows}


def _mismatches(outcome: dict[str, Any], kinds: tuple[str, ...]) -> list[str]:
    bad = []
    for ref, ent, now, served, trained in outcome["compared"]:
        if any(k in ref.partition(":")[2] for k in kinds) and not same(served, trained):
            bad.append(f"{ref} entity={ent} now={now.isoformat()}: online={served!r} offline={trained!r}")
    return bad


def test_the_updater_consumed_every_event_once(outcome: dict[str, Any]) -> None:
    stats = outcome["stats"]
    n = len(outcome["rows"])
    assert stats.idle and stats.lag == 0
    assert stats.records == n and stats.decode_errors == 0 and stats.duplicates == 0
    assert stats.applied + stats.late == 2 * n  # two views read every event
    assert stats.late > 0, "the history should include events too late for the ring"


def test_the_history_has_its_edge_cases(outcome: dict[str, Any]) -> None:
    rows = outcome["rows"]
    times = [r["event_ts"] for r in rows]
    assert any(t.minute == 0 and t.second == 0 and t.microsecond == 0 for t in times)  # on tile boundaries
    assert any(b < a for a, b in zip(times, times[1:]))  # out-of-order arrival
    per_user_time = [(r["user_id"], r["event_ts"]) for r in rows]
    assert len(set(per_user_time)) < len(per_user_time)  # ties
    assert outcome["nows"][0] == max(times)  # an event exactly at `now`


def test_counts_match(outcome: dict[str, Any]) -> None:
    bad = _mismatches(outcome, ("n_",))
    assert not bad, "\n".join(bad[:20])
    assert any(v and v > 0 for ref, _, _, v, _ in outcome["compared"] if ref.endswith("n_1d"))


def test_means_match(outcome: dict[str, Any]) -> None:
    bad = _mismatches(outcome, ("_mean_",))
    assert not bad, "\n".join(bad[:20])


def test_sums_match(outcome: dict[str, Any]) -> None:
    bad = _mismatches(outcome, ("_sum_",))
    assert not bad, "\n".join(bad[:20])
    assert any(v == 0.0 for ref, _, _, v, _ in outcome["compared"] if "_sum_" in ref)  # empty windows too


def test_last_n_lists_match(outcome: dict[str, Any]) -> None:
    """Same values in the same order: most recent first, ties on time broken by arrival (= source) order."""
    bad = _mismatches(outcome, ("_last",))
    assert not bad, "\n".join(bad[:20])
    assert any(len(v) >= 3 for ref, _, _, v, _ in outcome["compared"] if "_last" in ref)
