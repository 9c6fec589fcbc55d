"""Materialization and streaming write the same state: in either order the served value equals the trained one.

Ownership (featurestore.materialize, "Batch and stream"): the batch owns every event before the view's
batch-through; the stream owns the tiles from its start (floored to the coarsest hop) on. Two orders, real
Kafka, Redis and offline store, a view whose windows hop by their default hops (1h by 5 min, 6h and 1d by 1h):

* materialize as of E1, then stream the whole topic: events up to E1 are skipped ("covered_by_batch"), the
  rest -- also those in the tile holding E1, and late ones -- are added;
* stream a topic holding every event from X (an hour boundary) on, then materialize incrementally: the batch
  fills the tiles before the stream's start, the stream keeps its own.

Then for several `now` after the last event, the online read equals `OfflineStore.get_training_set` over the
whole history, for every entity and feature.
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
from featurestore.materialize import materialize
from featurestore.offline import OfflineStore
from featurestore.online import OnlineStore
from featurestore.online.codec import to_micros
from featurestore.streaming import StreamingUpdater
from stack.clients import redis_client

H = timedelta(hours=1)
D = timedelta(days=1)
BASE = utc(2024, 4, 2)
USERS = (1, 2, 3)
E1 = BASE + timedelta(hours=21, minutes=37)  # materialize-then-stream: the batch's end
X = BASE + 20 * H  # stream-then-materialize: the topic holds every event from here on


def make_view(topic: str) -> WindowedFeatureView:
    return WindowedFeatureView(
        "sb_user", (Entity("user", ("user_id",)),), ParquetSource("events.parquet"),
        aggregations=(
            Aggregation(AggregationFunction.COUNT, (H, 6 * H, D), name="n"),
            Aggregation(AggregationFunction.SUM, (6 * H,), column="rating"),
            Aggregation(AggregationFunction.MEAN, (D,), column="rating"),
            Aggregation(AggregationFunction.LAST_N, (H, D), column="item_id", n=5, dtype=ValueType.INT64_LIST),
        ),
        stream=StreamSource(topic, fields={"rating": "value", "event_ts": "timestamp_ms"}))


def history(seed: int = 11) -> list[dict[str, Any]]:
    """Events in arrival order over 40 h: ratings multiples of 0.25 (sums exact), ties, ~15% up to 3 h late."""
    rng = random.Random(seed)
    rows = [{"user_id": rng.choice(USERS), "item_id": rng.randrange(100),
             "rating": rng.randrange(2, 21) / 4, "event_ts": BASE + timedelta(milliseconds=rng.randrange(40 * 3_600_000))}
            for _ in range(260)]
    for u in USERS:  # on the batch's end and on hour boundaries, and ties
        for ts in (E1, E1 + timedelta(milliseconds=1), X, BASE + 30 * H, BASE + 30 * H):
            rows.append({"user_id": u, "item_id": rng.randrange(100), "rating": 1.0, "event_ts": ts})
    rows.sort(key=lambda r: r["event_ts"])
    for r in [r for r in rows if rng.random() < 0.15]:
        rows.remove(r)
        later = [k for k, x in enumerate(rows) if x["event_ts"] > r["event_ts"] + timedelta(hours=rng.uniform(0, 3))]
        rows.insert(later[0] if later else len(rows), r)
    return rows


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def compare(store: OnlineStore, offline: OfflineStore, view: WindowedFeatureView, rows: list[dict]) -> list[str]:
    last = max(r["event_ts"] for r in rows)
    nows = [last, last + timedelta(minutes=4), last + 2 * H, last + timedelta(hours=6, minutes=30), last + 20 * H]
    entities = [*USERS, 99]
    labels = pa.table({"user_id": pa.array([u for _ in nows for u in entities], pa.int64()),
                       "event_ts": pa.array([t for t in nows for _ in entities], pa.timestamp("us", tz="UTC"))})
    trained = offline.get_training_set(labels, [view]).to_pylist()
    bad = []
    for k, now in enumerate(nows):
        served = store.read(view, entities, now=now).to_rows()
        for j, u in enumerate(entities):
            for name in view.feature_names:
                a, b = served[j][f"sb_user:{name}"], trained[k * len(entities) + j][f"sb_user__{name}"]
                if not same(a, b):
                    bad.append(f"{name} user={u} now={now.isoformat()}: online={a!r} offline={b!r}")
    return bad


@pytest.fixture(scope="module")
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = request.getfixturevalue("config")
    stack = request.getfixturevalue("stack")
    rows = history()
    root: Path = tmp_path_factory.mktemp("offline")
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()),
                        ("event_ts", pa.timestamp("us", tz="UTC"))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "events.parquet")
    client = redis_client(stack.redis_url, config.redis)
    offline = OfflineStore(root, threads=2, memory_limit="1GB")
    request.addfinalizer(client.close)
    request.addfinalizer(offline.close)

    def topic_with(prefix: str, records: list[dict]) -> str:
        topic = create_topic(stack.kafka_bootstrap, config, f"{prefix}-events", partitions=2)
        produce(stack.kafka_bootstrap, config, topic,
                [event(r["user_id"], r["item_id"], r["event_ts"], r["rating"]) for r in records],
                keys=[str(r["user_id"]).encode() for r in records])
        return topic

    def stream(store: OnlineStore, view: WindowedFeatureView, prefix: str) -> Any:
        with StreamingUpdater(config, stack.kafka_bootstrap, store, [view], group_id=f"{prefix}-g") as u:
            return u.run_for(until_idle=True, timeout=90)

    return {"config": config, "rows": rows, "client": client, "offline": offline, "topic_with": topic_with,
            "stream": stream}


def test_materialize_then_stream(setup: dict[str, Any]) -> None:
    rows, offline = setup["rows"], setup["offline"]
    prefix = f"t{uuid.uuid4().hex[:10]}"
    view = make_view(setup["topic_with"](prefix, rows))
    store = OnlineStore(setup["client"], prefix)
    rep = materialize(offline, store, [view], None, E1, None, chunk_rows=7, progress=False)
    assert rep.view("sb_user").through == E1 + timedelta(microseconds=1)
    stats = setup["stream"](store, view, prefix)
    batch = sum(1 for r in rows if r["event_ts"] <= E1)
    assert stats.covered_by_batch == batch and stats.applied + stats.late == len(rows) - batch
    assert stats.duplicates == 0 and stats.decode_errors == 0
    bad = compare(store, offline, view, rows)
    assert not bad, "\n".join(bad[:20])


def test_stream_then_incremental_materialize(setup: dict[str, Any]) -> None:
    rows, offline = setup["rows"], setup["offline"]
    prefix = f"t{uuid.uuid4().hex[:10]}"
    streamed = [r for r in rows if r["event_ts"] >= X]  # the topic reaches back to X only
    view = make_view(setup["topic_with"](prefix, streamed))
    store = OnlineStore(setup["client"], prefix)
    stats = setup["stream"](store, view, prefix)
    assert stats.applied + stats.late == len(streamed) and stats.covered_by_batch == 0
    assert store.get_stream_from(view) == to_micros(X)
    assert compare(store, offline, view, rows)  # the stream alone lacks the history before X
    end = max(r["event_ts"] for r in rows)
    rep = materialize(offline, store, [view], None, end, None, chunk_rows=7, progress=False)
    assert rep.view("sb_user").through == X  # clamped to the stream's start
    assert rep.view("sb_user").rows_written == len(USERS)
    bad = compare(store, offline, view, rows)
    assert not bad, "\n".join(bad[:20])
    # another consumer group replaying the topic changes nothing: the per-entity offsets skip every record
    again = setup["stream"](store, view, prefix + "b")
    assert again.applied == 0 and again.duplicates + again.covered_by_batch == len(streamed)
    assert not compare(store, offline, view, rows)
