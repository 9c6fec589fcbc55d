"""MovieLens-100K loaded from the recbole package into a temporary offline root."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore.data import MovieLensPaths, load_movielens, temporal_split
from featurestore.data import movielens as ml
from featurestore.data._io import atomic_path

UTC_US = pa.timestamp("us", tz="UTC")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> MovieLensPaths:
    return load_movielens(tmp_path_factory.mktemp("offline"))


def test_counts_and_layout(loaded: MovieLensPaths) -> None:
    assert (loaded.n_users, loaded.n_items, loaded.n_ratings) == (943, 1682, 100_000)
    assert loaded.root.name == "movielens"
    assert {p.name for p in loaded.root.iterdir()} == {"users.parquet", "items.parquet", "ratings.parquet"}


def test_schemas(loaded: MovieLensPaths) -> None:
    assert pq.read_schema(loaded.users).remove_metadata().equals(
        pa.schema([("user_id", pa.int64()), ("age", pa.int64()), ("gender", pa.string()),
                   ("occupation", pa.string()), ("zip_code", pa.string()), ("event_ts", UTC_US)])
    )
    assert pq.read_schema(loaded.items).remove_metadata().equals(
        pa.schema([("item_id", pa.int64()), ("title", pa.string()), ("release_year", pa.int64()),
                   ("genres", pa.list_(pa.string())), ("event_ts", UTC_US)])
    )
    assert pq.read_schema(loaded.ratings).remove_metadata().equals(
        pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()),
                   ("event_ts", UTC_US), ("event_type", pa.string())])
    )


def test_ratings_sorted_and_typed(loaded: MovieLensPaths) -> None:
    r = pq.read_table(loaded.ratings)
    ts = r["event_ts"].cast(pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    # ties on time are ordered by user_id, then item_id
    users, items = r["user_id"].to_numpy(), r["item_id"].to_numpy()
    assert np.array_equal(np.lexsort((items, users, ts)), np.arange(r.num_rows))
    assert ts.min() == 874_724_710 * 1_000_000 and ts.max() == 893_286_638 * 1_000_000
    assert set(r["event_type"].unique().to_pylist()) == {"rating"}
    assert set(r["rating"].unique().to_pylist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert r["user_id"].null_count == r["item_id"].null_count == 0


def test_profiles(loaded: MovieLensPaths) -> None:
    users, items = pq.read_table(loaded.users), pq.read_table(loaded.items)
    first_rating = pc.min(pq.read_table(loaded.ratings, columns=["event_ts"])["event_ts"]).cast(pa.int64()).as_py()
    for t in (users, items):  # valid as of every rating
        assert set(t["event_ts"].cast(pa.int64()).to_pylist()) == {first_rating - 1_000_000}
    u1 = users.slice(0, 1).to_pylist()[0]
    assert u1 | {"event_ts": None} == {"user_id": 1, "age": 24, "gender": "M", "occupation": "technician",
                                       "zip_code": "85711", "event_ts": None}
    assert "T8H1N" in users["zip_code"].to_pylist()  # Canadian zip codes stay strings
    by_id = {row["item_id"]: row for row in items.select(["item_id", "title", "release_year", "genres"]).to_pylist()}
    assert by_id[1] == {"item_id": 1, "title": "Toy Story", "release_year": 1995, "genres": ["Animation", "Children's", "Comedy"]}
    assert by_id[1412]["release_year"] == 1995 and not by_id[1412]["title"].endswith(")")
    assert by_id[267]["release_year"] is None and by_id[267]["genres"] == ["unknown"]
    assert items["release_year"].null_count == 1
    assert all(1 <= len(g) <= 6 for g in items["genres"].to_pylist())
    assert "Sci-Fi" in {g for gs in items["genres"].to_pylist() for g in gs}


def test_idempotent_and_force(tmp_path: Path) -> None:
    first = load_movielens(tmp_path)
    before = {p: p.stat() for p in (first.users, first.items, first.ratings)}
    again = load_movielens(tmp_path)
    assert again == first
    for p, st in before.items():
        assert (p.stat().st_mtime_ns, p.stat().st_ino) == (st.st_mtime_ns, st.st_ino)
    # a missing file is rebuilt alone
    first.items.unlink()
    load_movielens(tmp_path)
    assert first.items.is_file() and first.users.stat().st_ino == before[first.users].st_ino
    forced = load_movielens(tmp_path, force=True)
    assert forced.n_ratings == 100_000
    for p, st in before.items():
        assert p.stat().st_ino != st.st_ino  # replaced by rename
    assert not [p for p in forced.root.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_atomic_write_leaves_nothing_on_crash(tmp_path: Path) -> None:
    final = tmp_path / "x.parquet"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_missing_recbole_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps recbole"):
        load_movielens(tmp_path)
    assert not (tmp_path / "movielens" / "ratings.parquet").exists()


def test_source_dir_is_inside_recbole() -> None:
    src = ml.movielens_source_dir()
    assert src.parts[-3:] == ("recbole", "dataset_example", "ml-100k")


def test_temporal_split_on_ratings(loaded: MovieLensPaths) -> None:
    ratings = pq.read_table(loaded.ratings)
    train, valid, test = temporal_split(ratings)
    n = ratings.num_rows
    assert train.num_rows + valid.num_rows + test.num_rows == n
    for part, frac in ((train, 0.8), (valid, 0.1), (test, 0.1)):
        assert abs(part.num_rows / n - frac) < 0.005
        ts = part["event_ts"].cast(pa.int64()).to_numpy()
        assert np.all(np.diff(ts) >= 0)
    def span(t: pa.Table) -> tuple[int, int]:
        mm = pc.min_max(t["event_ts"].cast(pa.int64())).as_py()
        return mm["min"], mm["max"]
    assert span(train)[1] < span(valid)[0] and span(valid)[1] < span(test)[0]
    assert train.schema.equals(ratings.schema)


def test_temporal_split_ties_and_order() -> None:
    ts = np.array([5, 1, 3, 3, 3, 2, 4, 6, 7, 8], dtype=np.int64) * 1_000_000
    t = pa.table({"event_ts": pa.array(ts).cast(UTC_US), "row": pa.array(range(10))})
    a, b, c = temporal_split(t, (0.3, 0.3, 0.4))
    # the 3rd time in order is 3, shared by three rows: all go to the later part
    assert a["row"].to_pylist() == [1, 5]
    assert b["row"].to_pylist() == [2, 3, 4, 6]
    assert c["row"].to_pylist() == [0, 7, 8, 9]
    assert t["row"].to_pylist() == list(range(10))  # input untouched
    two = temporal_split(t, (0.5, 0.5))
    assert [p.num_rows for p in two] == [5, 5]
    with pytest.raises(ValueError):
        temporal_split(t, (0.8, 0.3))
    with pytest.raises(KeyError):
        temporal_split(t, timestamp_field="ts")
