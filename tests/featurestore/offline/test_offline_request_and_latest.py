"""Request features offline (the serving function, over label columns) and `latest_rows` for materialization."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from offline_helpers import at, labels, write

from featurestore.definitions import Entity, Feature, FeatureView, ParquetSource, RequestFeatureView, ValueType
from featurestore.offline import OfflineStore

USER = Entity("user", ("user_id",))
CALLS: list[Any] = []


def price_features(inputs: Mapping[str, Any]) -> dict[str, Any]:
    CALLS.append(type(inputs["price"]).__name__)
    return {"price_x2": inputs["price"] * 2, "discounted": inputs["price"] * (1 - inputs["discount"])}


def bucket(inputs: Mapping[str, Any]) -> dict[str, Any]:
    price = inputs["price"]
    if price is None:
        return {"bucket": "unknown"}
    return {"bucket": "cheap" if price < 10 else "dear"}


PRICES = RequestFeatureView("price", ("price", "discount"), (Feature("price_x2", ValueType.FLOAT64),
                                                             Feature("discounted", ValueType.FLOAT64)), price_features)
BUCKETS = RequestFeatureView("bucket", ("price",), (Feature("bucket", ValueType.STRING),), bucket)


def test_request_features_are_the_serving_function_applied_per_row(store: OfflineStore) -> None:
    rows = labels([{"price": 4.0, "discount": 0.5}, {"price": 20.0, "discount": 0.0}, {"price": None, "discount": 0.1}])
    out = store.get_training_set(rows, [BUCKETS])
    assert out.column("bucket__bucket").to_pylist() == ["cheap", "dear", "unknown"]  # a branch: row by row
    out = store.get_training_set(rows.slice(0, 2), [(PRICES, ["price_x2"])])
    assert out.column("price__price_x2").to_pylist() == [8.0, 40.0]


def test_a_function_failing_on_a_row_fails_loudly_naming_the_row(store: OfflineStore) -> None:
    rows = labels([{"price": 4.0, "discount": 0.5}, {"price": None, "discount": 0.1}])
    with pytest.raises(ValueError, match="row 1 with inputs {'price': None"):
        store.get_training_set(rows, [PRICES])  # None * 2 raises in the server too


def test_simple_arithmetic_is_vectorised_and_checked_against_row_calls(store: OfflineStore) -> None:
    CALLS.clear()
    n = 1000
    rows = pa.table({"price": pa.array([float(i) for i in range(n)]), "discount": pa.array([0.25] * n)})
    out = store.get_training_set(rows, [PRICES])
    assert out.column("price__discounted").to_pylist() == [i * 0.75 for i in range(n)]
    assert CALLS.count("ndarray") == 1  # one call over whole columns...
    assert CALLS.count("float") <= 64  # ...plus a sample of row calls checking it, not n of them


def test_request_features_mix_with_stored_features(store: OfflineStore, tmp_path: Path) -> None:
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": at(9), "score": 0.5}])
    stats = FeatureView("stats", (USER,), ParquetSource(path), (Feature("score", ValueType.FLOAT64),))
    out = store.get_training_set(labels([{"user_id": 1, "event_ts": at(10), "price": 12.0}]), [stats, BUCKETS])
    assert out.to_pylist() == [{"user_id": 1, "event_ts": at(10), "price": 12.0, "stats__score": 0.5,
                                "bucket__bucket": "dear"}]


# ------------------------------------------------------------------ latest_rows

HISTORY = [
    {"user_id": 1, "event_ts": at(9), "score": 1.0, "rank": 3},
    {"user_id": 1, "event_ts": at(11), "score": 2.0, "rank": 2},
    {"user_id": 1, "event_ts": at(11), "score": 2.5, "rank": 2},  # tie: the later row wins, as in training
    {"user_id": 2, "event_ts": at(10), "score": 5.0, "rank": 1},
    {"user_id": 3, "event_ts": at(8), "score": 7.0, "rank": None},
    {"user_id": 1, "event_ts": at(13), "score": 3.0, "rank": 1},
]


def stats_view(tmp_path: Path) -> FeatureView:
    path = write(tmp_path, "stats.parquet", HISTORY)
    return FeatureView("stats", (USER,), ParquetSource(path), (Feature("score", ValueType.FLOAT64),
                                                                 Feature("rank", ValueType.INT64)), ttl=timedelta(days=1))


def latest(store: OfflineStore, view: FeatureView, **kw: Any) -> list[dict]:
    batches = list(store.latest_rows(view, **kw))
    return sorted(pa.Table.from_batches(batches).to_pylist(), key=lambda r: r["user_id"]) if batches else []


def test_latest_rows_gives_each_entitys_latest_row_as_of_a_time(store: OfflineStore, tmp_path: Path) -> None:
    view = stats_view(tmp_path)
    assert latest(store, view, as_of=at(12)) == [
        {"user_id": 1, "event_ts": at(11), "score": 2.5, "rank": 2},
        {"user_id": 2, "event_ts": at(10), "score": 5.0, "rank": 1},
        {"user_id": 3, "event_ts": at(8), "score": 7.0, "rank": None},
    ]
    assert [r["score"] for r in latest(store, view)] == [3.0, 5.0, 7.0]  # no bound: the latest of all


def test_latest_rows_since_only_returns_entities_changed_after_it(store: OfflineStore, tmp_path: Path) -> None:
    view = stats_view(tmp_path)
    assert latest(store, view, as_of=at(12), since=at(10)) == [{"user_id": 1, "event_ts": at(11), "score": 2.5, "rank": 2}]
    assert latest(store, view, as_of=at(12), since=at(11)) == []  # since is exclusive, as_of inclusive


def test_latest_rows_streams_bounded_batches(tmp_path: Path) -> None:
    view = stats_view(tmp_path)
    with OfflineStore(tmp_path, threads=1, chunk_rows=2) as small:
        batches = list(small.latest_rows(view))
    assert sum(b.num_rows for b in batches) == 3 and max(b.num_rows for b in batches) <= 2
    assert batches[0].schema.names == ["user_id", "event_ts", "score", "rank"]
    assert batches[0].schema.field("event_ts").type == pa.timestamp("us", tz="UTC")
