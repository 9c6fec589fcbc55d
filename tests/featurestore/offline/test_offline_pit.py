"""Point-in-time training sets from FeatureViews: the as-of rule, TTL, ties, and label rows kept as given.

Every test runs both implementations (DuckDB ASOF join, and Feast's row_number
design kept as a cross-check): they must agree on every case.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from offline_helpers import at, labels, write

from featurestore.definitions import Entity, Feature, FeatureSet, FeatureView, ParquetSource, SqlSource, ValueType
from featurestore.offline import OfflineStore

USER = Entity("user", ("user_id",))
CATEGORY = Entity("category", ("category",))


def score_view(path: str, ttl: timedelta | None = None, created: str | None = None, name: str = "stats") -> FeatureView:
    return FeatureView(name, (USER,), ParquetSource(path, created_timestamp_field=created),
                       (Feature("score", ValueType.FLOAT64),), ttl=ttl)


@pytest.fixture(params=["asof", "row_number"])
def method(request: pytest.FixtureRequest) -> str:
    return request.param


def scores(store: OfflineStore, view: FeatureView, label_rows: list[dict], method: str) -> list:
    out = store.get_training_set(labels(label_rows), [view], method=method)
    return out.column("stats__score").to_pylist()


def test_a_row_at_the_label_time_is_used_a_row_after_it_never(store: OfflineStore, tmp_path: Path, method: str) -> None:
    path = write(tmp_path, "stats.parquet", [
        {"user_id": 1, "event_ts": at(10), "score": 1.0},
        {"user_id": 1, "event_ts": at(11), "score": 2.0},
        {"user_id": 1, "event_ts": at(11, micro=1), "score": 3.0},  # 1 µs after the 11:00 label: leakage if used
    ])
    got = scores(store, score_view(path), [
        {"user_id": 1, "event_ts": at(9, 59)},  # before any row
        {"user_id": 1, "event_ts": at(10)},  # exactly at a row: that row
        {"user_id": 1, "event_ts": at(10, 59, 59)},
        {"user_id": 1, "event_ts": at(11)},  # the 11:00:00.000001 row is in its future
        {"user_id": 1, "event_ts": at(12)},
    ], method)
    assert got == [None, 1.0, 1.0, 2.0, 3.0]


def test_ttl_makes_a_row_expire_and_only_the_latest_row_counts(store: OfflineStore, tmp_path: Path, method: str) -> None:
    path = write(tmp_path, "stats.parquet", [
        {"user_id": 1, "event_ts": at(8), "score": 8.0},
        {"user_id": 1, "event_ts": at(10), "score": 10.0},
    ])
    got = scores(store, score_view(path, ttl=timedelta(hours=1)), [
        {"user_id": 1, "event_ts": at(10, 30)},  # 30 min old: fresh
        {"user_id": 1, "event_ts": at(10, 59, 59, 999999)},  # just inside: feature_ts > label_ts - ttl
        {"user_id": 1, "event_ts": at(11)},  # exactly ttl old: expired
        {"user_id": 1, "event_ts": at(12)},  # expired; the even older 08:00 row is no fallback
        {"user_id": 1, "event_ts": at(8, 30)},  # the 08:00 row, 30 min old
    ], method)
    assert got == [10.0, 10.0, None, None, 8.0]


def test_tied_timestamps_the_latest_created_timestamp_wins(store: OfflineStore, tmp_path: Path, method: str) -> None:
    path = write(tmp_path, "stats.parquet", [
        {"user_id": 1, "event_ts": at(10), "created": at(12, 5), "score": 2.0},  # a correction, written first
        {"user_id": 1, "event_ts": at(10), "created": at(12), "score": 1.0},
        {"user_id": 1, "event_ts": at(10), "created": None, "score": 0.0},  # no created time: loses to any
        {"user_id": 2, "event_ts": at(10), "created": None, "score": 5.0},
        {"user_id": 2, "event_ts": at(10), "created": None, "score": 6.0},  # same created (NULL): later row wins
    ])
    got = scores(store, score_view(path, created="created"), [
        {"user_id": 1, "event_ts": at(11)},
        {"user_id": 2, "event_ts": at(11)},
    ], method)
    assert got == [2.0, 6.0]


def test_tied_timestamps_without_created_the_last_row_in_source_order_wins(store: OfflineStore, tmp_path: Path,
                                                                            method: str) -> None:
    # Source order: files in lexicographic path order, then rows in file order.
    write(tmp_path, "stats/part-0002.parquet", [{"user_id": 1, "event_ts": at(10), "score": 3.0}])
    write(tmp_path, "stats/part-0001.parquet", [  # written later, but it sorts first
        {"user_id": 1, "event_ts": at(10), "score": 1.0},
        {"user_id": 1, "event_ts": at(10), "score": 2.0},
        {"user_id": 2, "event_ts": at(10), "score": 4.0},
        {"user_id": 2, "event_ts": at(10), "score": 5.0},
    ])
    got = scores(store, score_view("stats/*.parquet"), [
        {"user_id": 1, "event_ts": at(10)},
        {"user_id": 2, "event_ts": at(10)},
    ], method)
    assert got == [3.0, 5.0]


def test_a_late_arriving_row_in_a_later_file_is_used_as_of_its_own_time(store: OfflineStore, tmp_path: Path,
                                                                         method: str) -> None:
    write(tmp_path, "stats/day-1.parquet", [
        {"user_id": 1, "event_ts": at(10), "score": 10.0},
        {"user_id": 1, "event_ts": at(12), "score": 12.0},
    ])
    write(tmp_path, "stats/day-2.parquet", [{"user_id": 1, "event_ts": at(11), "score": 11.0}])  # arrived late
    got = scores(store, score_view("stats/*.parquet"), [
        {"user_id": 1, "event_ts": at(10, 30)},
        {"user_id": 1, "event_ts": at(11, 30)},
        {"user_id": 1, "event_ts": at(12, 30)},
    ], method)
    assert got == [10.0, 11.0, 12.0]


def test_labels_without_history_keep_their_row_with_nulls(store: OfflineStore, tmp_path: Path, method: str) -> None:
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": at(10), "score": 1.0}])
    rows = [
        {"user_id": 7, "event_ts": at(12), "label": 1},  # unknown entity
        {"user_id": None, "event_ts": at(12), "label": 0},  # no key
        {"user_id": 1, "event_ts": None, "label": 1},  # no time
        {"user_id": 1, "event_ts": at(12), "label": 0},
    ]
    out = store.get_training_set(labels(rows), [score_view(path)], method=method)
    assert out.num_rows == 4  # Feast would have returned 1
    assert out.column("label").to_pylist() == [1, 0, 1, 0]
    assert out.column("stats__score").to_pylist() == [None, None, None, 1.0]


def test_duplicate_labels_are_kept_and_the_input_order_is_preserved(store: OfflineStore, tmp_path: Path,
                                                                    method: str) -> None:
    path = write(tmp_path, "stats.parquet", [
        {"user_id": 1, "event_ts": at(10), "score": 1.0},
        {"user_id": 2, "event_ts": at(10), "score": 2.0},
        {"user_id": 1, "event_ts": at(11), "score": 3.0},
    ])
    rows = [  # neither sorted by time nor by key, with an exact duplicate
        {"user_id": 1, "event_ts": at(11, 30), "label": "a"},
        {"user_id": 2, "event_ts": at(10, 30), "label": "b"},
        {"user_id": 1, "event_ts": at(10, 30), "label": "c"},
        {"user_id": 1, "event_ts": at(11, 30), "label": "a"},
    ]
    out = store.get_training_set(labels(rows), [score_view(path)], method=method)
    assert out.select(["user_id", "event_ts", "label"]).to_pylist() == rows  # passes through, as given
    assert out.column("stats__score").to_pylist() == [3.0, 2.0, 1.0, 3.0]


def test_composite_keys_match_on_every_key(store: OfflineStore, tmp_path: Path, method: str) -> None:
    path = write(tmp_path, "user_cat.parquet", [
        {"user_id": 1, "category": "books", "event_ts": at(9), "clicks": 5},
        {"user_id": 1, "category": "music", "event_ts": at(9), "clicks": 7},
        {"user_id": 2, "category": "books", "event_ts": at(9), "clicks": 9},
        {"user_id": 1, "category": "books", "event_ts": at(11), "clicks": 6},
    ])
    view = FeatureView("user_cat", (USER, CATEGORY), ParquetSource(path), (Feature("clicks", ValueType.INT64),))
    out = store.get_training_set(labels([
        {"user_id": 1, "category": "books", "event_ts": at(10)},
        {"user_id": 1, "category": "music", "event_ts": at(12)},
        {"user_id": 2, "category": "music", "event_ts": at(12)},  # both keys exist, never together
        {"user_id": 1, "category": "books", "event_ts": at(12)},
    ]), [view], method=method)
    assert out.column("user_cat__clicks").to_pylist() == [5, 7, None, 6]


def test_a_sql_source_reads_its_query_with_root_substituted(store: OfflineStore, tmp_path: Path, method: str) -> None:
    write(tmp_path, "raw/clicks.parquet", [
        {"uid": 1, "ts": at(9), "clicks": 2, "views": 4},
        {"uid": 1, "ts": at(10), "clicks": 3, "views": 0},  # filtered out by the query
        {"uid": 2, "ts": at(9), "clicks": 1, "views": 10},
    ])
    source = SqlSource("SELECT uid AS user_id, ts, clicks / views AS ctr FROM read_parquet('{root}/raw/clicks.parquet') "
                       "WHERE views > 0", timestamp_field="ts")
    view = FeatureView("ctr", (USER,), source, (Feature("ctr", ValueType.FLOAT64),))
    out = store.get_training_set(labels([
        {"user_id": 1, "event_ts": at(11)},
        {"user_id": 2, "event_ts": at(11)},
    ]), [view], method=method)
    assert out.column("ctr__ctr").to_pylist() == [0.5, 0.1]


def test_feature_sets_name_columns_view__feature_and_types_follow_the_definitions(store: OfflineStore, tmp_path: Path,
                                                                                 method: str) -> None:
    schema = pa.schema([("user_id", pa.int32()), ("event_ts", pa.timestamp("ns")), ("age", pa.int16()),
                        ("country", pa.string()), ("score", pa.float32())])
    path = write(tmp_path, "profile.parquet", [{"user_id": 1, "event_ts": at(9).replace(tzinfo=None), "age": 30,
                                                "country": "NL", "score": 0.5}], schema=schema)
    profile = FeatureView("profile", (USER,), ParquetSource(path), (
        Feature("age", ValueType.INT64), Feature("country", ValueType.STRING), Feature("score", ValueType.FLOAT64)))
    fs = FeatureSet("ranker", ("profile:country", "profile:age"))
    label_rows = labels([{"user_id": 1, "ts": at(10)}])
    out = store.get_training_set(label_rows, fs, {"profile": profile}, timestamp_field="ts", method=method)
    assert out.column_names == ["user_id", "ts", "profile__country", "profile__age"]  # the set's order
    assert out.schema.field("profile__age").type == pa.int64()  # int16 in the file, INT64 declared
    assert out.to_pylist()[0]["profile__country"] == "NL"
    every = store.get_training_set(label_rows, ["profile:*"], {"profile": profile}, timestamp_field="ts",
                                   name_format="{feature}", method=method)
    assert every.column_names == ["user_id", "ts", "age", "country", "score"]
    assert every.schema.field("score").type == pa.float64()


def test_labels_can_come_from_a_parquet_path_with_naive_utc_times(store: OfflineStore, tmp_path: Path,
                                                                  method: str) -> None:
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": at(10), "score": 1.0}])  # tz-aware
    write(tmp_path, "labels.parquet", [{"user_id": 1, "event_ts": at(9).replace(tzinfo=None)},
                                       {"user_id": 1, "event_ts": at(10).replace(tzinfo=None)}])
    out = store.get_training_set(tmp_path / "labels.parquet", [score_view(path)], method=method)
    assert out.column("stats__score").to_pylist() == [None, 1.0]  # naive 10:00 is 10:00 UTC


def test_clear_errors_for_missing_columns_and_unknown_features(store: OfflineStore, tmp_path: Path) -> None:
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": at(10), "score": 1.0}])
    view = score_view(path)
    with pytest.raises(ValueError, match="user_id"):
        store.get_training_set(labels([{"uid": 1, "event_ts": at(10)}]), [view])
    with pytest.raises(KeyError, match="nope"):
        store.get_training_set(labels([{"user_id": 1, "event_ts": at(10)}]), [(view, ["nope"])])
    with pytest.raises(KeyError, match="other"):
        store.get_training_set(labels([{"user_id": 1, "event_ts": at(10)}]), ["other:x"], {"stats": view})
    with pytest.raises(FileNotFoundError):
        store.get_training_set(labels([{"user_id": 1, "event_ts": at(10)}]), [score_view("missing/*.parquet")])


def test_asof_and_row_number_agree_with_a_brute_force_oracle(store: OfflineStore, tmp_path: Path) -> None:
    rng = random.Random(7)
    rows = [{"user_id": rng.randrange(6), "event_ts": at(rng.randrange(8, 12), rng.choice([0, 30])),
             "created": at(12, rng.randrange(3)) if rng.random() < 0.7 else None, "score": float(i)}
            for i in range(300)]  # many exact ties on time, and on time + created
    path = write(tmp_path, "stats.parquet", rows)
    view = score_view(path, ttl=timedelta(minutes=90), created="created")
    label_rows = [{"user_id": rng.randrange(8), "event_ts": at(rng.randrange(7, 14), rng.choice([0, 15, 30]))}
                  for _ in range(200)]
    expected = []
    for lab in label_rows:
        best = None
        for i, r in enumerate(rows):
            if r["user_id"] != lab["user_id"] or r["event_ts"] > lab["event_ts"]:
                continue
            key = (r["event_ts"], r["created"] is not None, r["created"] or at(0), i)
            if best is None or key > best[0]:
                best = (key, r)
        ok = best is not None and best[1]["event_ts"] > lab["event_ts"] - timedelta(minutes=90)
        expected.append(best[1]["score"] if ok else None)
    for method in ("asof", "row_number"):
        assert scores(store, view, label_rows, method) == expected, method


def test_nanosecond_timestamps_keep_their_order(store: OfflineStore, tmp_path: Path, method: str) -> None:
    """Times are compared as integer nanoseconds: a row 1 ns after the label is in its future."""
    base = 1_704_103_200_000_000_000  # 2024-01-01 10:00 UTC in ns
    schema = pa.schema([("user_id", pa.int64()), ("event_ts", pa.timestamp("ns", tz="UTC")), ("score", pa.float64())])
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": base, "score": 1.0},
                                             {"user_id": 1, "event_ts": base + 1, "score": 2.0}], schema=schema)
    label_schema = pa.schema([("user_id", pa.int64()), ("event_ts", pa.timestamp("ns", tz="UTC"))])
    out = store.get_training_set(labels([{"user_id": 1, "event_ts": base}, {"user_id": 1, "event_ts": base + 1}],
                                        schema=label_schema), [score_view(path)], method=method)
    assert out.column("stats__score").to_pylist() == [1.0, 2.0]


def test_relation_exposes_a_source_in_source_order(store: OfflineStore, tmp_path: Path) -> None:
    write(tmp_path, "s/b.parquet", [{"user_id": 2, "event_ts": at(9), "score": 2.0}])
    write(tmp_path, "s/a.parquet", [{"user_id": 1, "event_ts": at(9), "score": 1.0}])
    rel = store.relation(ParquetSource("s/*.parquet"))
    assert rel.to_arrow_table().column("user_id").to_pylist() == [1, 2]


def test_no_labels_give_an_empty_table_with_the_feature_columns(store: OfflineStore, tmp_path: Path) -> None:
    path = write(tmp_path, "stats.parquet", [{"user_id": 1, "event_ts": at(10), "score": 1.0}])
    empty = pa.table({"user_id": pa.array([], pa.int64()), "event_ts": pa.array([], pa.timestamp("us", tz="UTC"))})
    out = store.get_training_set(empty, [score_view(path)])
    assert out.num_rows == 0 and out.schema.field("stats__score").type == pa.float64()
