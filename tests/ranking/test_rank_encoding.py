"""FeatureEncoder: layout derived from the schema, fitting, hashing, and offline == online through Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore.client import FeatureClient
from featurestore.data.movielens import load_movielens
from featurestore.materialize import materialize
from featurestore.offline import OfflineStore
from featurestore.online import OnlineStore
from featurestore.repository import get_repo
from ranking.encoding import MISSING, EncodingError, FeatureEncoder, vocab_seed

N_USERS = 25  # users kept in the test's ratings file (keeps materialization small)


@pytest.fixture(scope="module")
def repo():
    return get_repo()


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100K under a private root, ratings cut to the first N_USERS users."""
    root = tmp_path_factory.mktemp("offline")
    paths = load_movielens(root)
    ratings = pq.read_table(paths.ratings)
    keep = pc.less_equal(ratings["user_id"], N_USERS)
    pq.write_table(ratings.filter(keep), paths.ratings)
    return root


@pytest.fixture(scope="module")
def training_table(offline_root: Path, repo) -> pa.Table:
    """Every kept rating as a label, features 1 us before it (as ranking.data builds them)."""
    from ranking.data import movielens_labels

    labels = movielens_labels(offline_root)
    with OfflineStore(offline_root, threads=2) as store:
        return store.get_training_set(labels, repo.feature_set("din_movielens"), repo.views, timestamp_field="feature_ts")


@pytest.fixture(scope="module")
def encoder(repo, training_table: pa.Table) -> FeatureEncoder:
    return FeatureEncoder.for_feature_set(repo.resolve("din_movielens"), hash_buckets=10_007).fit(training_table)


def test_layout_comes_from_the_feature_set_schema(repo, encoder: FeatureEncoder) -> None:
    resolved = repo.resolve("din_movielens")
    kinds = {f.name: f.kind for f in encoder.fields}
    # every feature of the set is encoded, plus both join keys
    assert {f.ref for f in resolved.features} <= {f.source for f in encoder.fields}
    assert kinds["user_id"] == kinds["item_id"] == "cat"
    assert kinds["user_profile:gender"] == "cat"
    assert kinds["item_profile:genres"] == "bag"
    seq = [f for f in encoder.fields if f.kind == "seq"]
    assert [f.name for f in seq] == ["user_activity:item_id_last20_30d"]
    # the behaviour sequence hashes in the item_id vocabulary and attends with the candidate item_id
    assert seq[0].vocab == "item_id" and seq[0].query == "item_id" and seq[0].max_len == 20
    assert encoder.layout()["seq_query"] == [[f.name for f in encoder.cat_fields].index("item_id")]
    # window counts are numeric only; low-cardinality profile/request ints are both
    nums = {f.name for f in encoder.num_fields}
    cats = {f.name for f in encoder.cat_fields}
    assert "user_activity:rating_count_7d" in nums and "user_activity:rating_count_7d" not in cats
    assert {"request_time:day_of_week", "request_time:hour_of_day", "user_profile:age"} <= nums & cats
    # the deepfm set has no sequence, so no seq inputs
    plain = FeatureEncoder.for_feature_set(repo.resolve("deepfm_movielens"), hash_buckets=101)
    assert "seq_ids" not in plain.input_names() and "bag_ids" in plain.input_names()


def test_fit_statistics_and_json_round_trip(encoder: FeatureEncoder, training_table: pa.Table) -> None:
    f = next(x for x in encoder.num_fields if x.name == "user_activity:rating_mean_7d")
    col = training_table["user_activity__rating_mean_7d"].drop_null().to_numpy()
    assert f.transform == "none" and f.mean == pytest.approx(col.mean()) and f.std == pytest.approx(col.std())
    bag = encoder.bag_fields[0]
    assert bag.max_len == max(len(g) for g in training_table["item_profile__genres"].to_pylist() if g)
    again = FeatureEncoder.from_json(encoder.to_json())
    assert again.fields == encoder.fields and again.input_spec() == encoder.input_spec()
    a, b = encoder.encode_table(training_table), again.encode_table(training_table)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_unfitted_encoder_and_missing_columns_are_errors(repo, training_table: pa.Table, encoder: FeatureEncoder) -> None:
    raw = FeatureEncoder.for_feature_set(repo.resolve("din_movielens"), hash_buckets=101)
    with pytest.raises(EncodingError, match="not fitted"):
        raw.encode_table(training_table)
    with pytest.raises(EncodingError, match="item_profile__genres"):
        encoder.encode_table(training_table.drop_columns(["item_profile__genres"]))


def test_encoded_arrays_shapes_masks_and_missing_values(encoder: FeatureEncoder, training_table: pa.Table) -> None:
    x = encoder.encode_table(training_table)
    n = training_table.num_rows
    for name, spec in encoder.input_spec().items():
        assert x[name].shape == (n, *spec["shape"][1:]) and x[name].dtype == np.dtype(spec["dtype"])
    hb = encoder.hash_buckets
    assert x["cat_ids"].min() >= 1 and x["cat_ids"].max() < hb  # row 0 is padding only
    # masks mark exactly the list lengths; padding ids are 0
    seq_len = np.array([len(v) for v in training_table["user_activity__item_id_last20_30d"].to_pylist()])
    np.testing.assert_array_equal(x["seq_mask"][:, 0].sum(axis=1), np.minimum(seq_len, 20))
    assert (x["seq_ids"][x["seq_mask"] == 0] == 0).all() and (x["seq_ids"][x["seq_mask"] == 1] > 0).all()
    # the first rating of a user has no history: empty sequence, NULL means -> 0 with indicator 1
    first = 0
    assert x["seq_mask"][first].sum() == 0
    j = [f.name for f in encoder.num_fields].index("user_activity:rating_mean_7d")
    k = len(encoder.num_fields)
    nulls = training_table["user_activity__rating_mean_7d"].is_null().to_numpy(zero_copy_only=False)
    assert nulls.any()
    np.testing.assert_array_equal(x["dense"][:, k + j], nulls.astype(np.float32))
    assert (x["dense"][nulls, j] == 0).all()
    # a past item and the candidate item share their embedding row
    items = training_table["item_id"].to_numpy()
    hist = training_table["user_activity__item_id_last20_30d"].to_pylist()
    r = next(i for i in range(n) if hist[i])
    c = [f.name for f in encoder.cat_fields].index("item_id")
    row_of_item = dict(zip(items.tolist(), x["cat_ids"][:, c].tolist()))
    past = hist[r][0]
    if past in row_of_item:
        assert x["seq_ids"][r, 0, 0] == row_of_item[past]


def test_hashing_is_per_field_and_canonical(encoder: FeatureEncoder) -> None:
    h_user, h_item = encoder._hasher("user_id"), encoder._hasher("item_id")
    assert vocab_seed("user_id") != vocab_seed("item_id")
    assert h_user.ids(np.array([7]))[0] != h_item.ids(np.array([7]))[0]  # same raw value, unrelated rows
    # an int and its decimal string are the same key (gRPC requests carry string ids)
    np.testing.assert_array_equal(h_item.ids(np.array([42, 7])), h_item.ids(["42", "7"]))
    assert h_item.missing == h_item.row(MISSING) and h_item.ids([None])[0] == h_item.missing


def test_collision_report(encoder: FeatureEncoder, training_table: pa.Table) -> None:
    rep = encoder.collision_report(training_table)
    assert rep["distinct_values"] > 100 and 0.0 <= rep["collision_rate"] < 0.2
    assert rep["vocabularies"]["item_id"]["distinct"] >= len(set(training_table["item_id"].to_pylist()))


def test_offline_and_online_encodings_are_identical(offline_root: Path, repo, encoder: FeatureEncoder, redis,
                                                    unique_prefix: str, training_table: pa.Table) -> None:
    """Materialize the kept MovieLens rows into Redis, read them back online as of T, compare with the offline set at T."""
    ratings = pq.read_table(offline_root / "movielens" / "ratings.parquet")
    ts = ratings["event_ts"].cast(pa.int64()).to_numpy()
    at = datetime.fromtimestamp(int(np.quantile(ts, 0.6)) // 1_000_000, tz=UTC)
    online = OnlineStore(redis, unique_prefix)
    views = [v for v in repo.resolve("din_movielens").views if hasattr(v, "entities")]
    with OfflineStore(offline_root, threads=2) as store:
        materialize(store, online, views, None, at, None, progress=False)
        users = [1, 2, 3, 5, 8, 13, 21, 9999]  # 9999: unknown user (profile missing, empty history)
        items = [1, 50, 100, 181, 258, 1682, 77777]  # 77777: unknown item
        uu = [u for u in users for _ in items]
        ii = [i for _ in users for i in items]
        labels = pa.table({"user_id": pa.array(uu, pa.int64()), "item_id": pa.array(ii, pa.int64()),
                           "event_ts": pa.array([at] * len(uu), pa.timestamp("us", "UTC"))})
        offline = store.get_training_set(labels, repo.feature_set("din_movielens"), repo.views)
    client = FeatureClient(online, repo, feature_set_versions={})
    got = client.get_online_features(None, {"user_id": uu, "item_id": ii}, "din_movielens",
                                     {"event_ts": at}, now=at)
    # the rows cover present, NULL and missing values
    assert any(offline["user_activity__item_id_last20_30d"].to_pylist())
    assert offline["user_activity__rating_mean_1d"].null_count > 0 and offline["user_profile__age"].null_count > 0
    a, b = encoder.encode_table(offline), encoder.encode_online(got)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # string keys (as the gRPC service passes them) encode the same
    got_str = client.get_online_features(None, {"user_id": [str(u) for u in uu], "item_id": [str(i) for i in ii]},
                                         "din_movielens", {"event_ts": at}, now=at)
    c = encoder.encode_online(got_str)
    for name in a:
        np.testing.assert_array_equal(a[name], c[name], err_msg=name)
    # one user and many candidates: the user's history is shared by every row and encoded once
    one = client.get_online_features(None, {"user_id": [1] * len(items), "item_id": items}, "din_movielens",
                                     {"event_ts": at}, now=at)
    d = encoder.encode_online(one)
    np.testing.assert_array_equal(d["seq_ids"], a["seq_ids"][: len(items)])


def test_refitting_gives_the_same_layout(encoder: FeatureEncoder, training_table: pa.Table) -> None:
    again = FeatureEncoder.from_json(encoder.to_json()).fit(training_table)
    assert again.fields == encoder.fields
