"""The trainer's feature space is servable: served rows encode like ranking's online read, and Linear computes the learner's logit."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.repository import load_repo
from ranking.encoding import FeatureEncoder
from streaming.ftrl import FTRLProximal
from streaming.hashing import SparseLayout, parse_crosses
from streaming.trainer_features import ServedRows, fit_table
from streaming.trainer_synthetic import SyntheticWorld

DEFS = Path(__file__).resolve().with_name("ftrl_trainer_defs.py")
FS = "st_ftrl"
CROSSES = ("user_id*item_id", "user_id*st_item:category", "st_user:segment*st_item:tags", "item_id*nope")
TS = 1_767_225_600_000 + 9 * 3600 * 1000


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repo(DEFS)


@pytest.fixture(scope="module")
def world(repo: Any) -> SyntheticWorld:
    return SyntheticWorld(repo, FS, n_users=30, n_items=80, seed=5)


def _rows(world: SyntheticWorld, n: int = 40) -> ServedRows:
    pairs = []
    for record, samples in world.requests(n, items_per_request=4, start_ms=TS):
        pairs += [(record, i) for i in range(len(samples))]
    return ServedRows(pairs, ["user_id", "item_id"], FS)


@pytest.fixture(scope="module")
def encoder(repo: Any, world: SyntheticWorld) -> FeatureEncoder:
    enc = FeatureEncoder.for_feature_set(repo.resolve(FS), hash_buckets=4099)
    return enc.fit(fit_table(enc, _rows(world)))


def test_crosses_are_parsed_against_the_encoder(encoder: FeatureEncoder) -> None:
    got = parse_crosses(CROSSES, encoder)
    assert got == [("user_id", "item_id"), ("user_id", "st_item:category"), ("st_user:segment", "st_item:tags")]
    with pytest.raises(ValueError, match="nope"):
        parse_crosses(CROSSES, encoder, strict=True)


def test_linear_model_computes_the_learners_logits(encoder: FeatureEncoder, world: SyntheticWorld) -> None:
    """After learning, the published Linear (crosses included) gives the learner's own predictions."""
    import torch

    layout = SparseLayout(encoder, parse_crosses(CROSSES, encoder))
    rows = _rows(world, 60)
    arrays = encoder.encode_online(rows)
    idx, val = layout.sparse(arrays)
    assert idx.shape == (len(rows), layout.width) and idx.max() < layout.dim
    learner = FTRLProximal(layout.dim, alpha=0.5, beta=1.0, l1=0.01, l2=0.01)
    y = (np.random.default_rng(0).random(len(rows)) < 0.4).astype(float)
    for _ in range(5):
        learner.learn_many(idx, val, y)
    model = layout.to_model(learner.weights())
    with torch.inference_mode():
        served = model({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()
    want = learner.predict_logits(idx, val)
    assert np.abs(want).max() > 0.1  # non-trivial weights, crosses and bags included
    np.testing.assert_allclose(served, want, rtol=1e-4, atol=1e-5)
    # every part of the layout matters: without the crosses the logits differ
    plain = SparseLayout(encoder).to_model(learner.weights())  # same coordinates, no crosses
    with torch.inference_mode():
        assert not np.allclose(plain({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy(), served, atol=1e-3)


def test_crossed_linear_exports_to_onnx_and_rebuilds_from_its_artifact(encoder: FeatureEncoder, tmp_path: Path,
                                                                        repo: Any) -> None:
    from ranking.artifact import load_scorer, save_artifact

    layout = SparseLayout(encoder, parse_crosses(CROSSES, encoder))
    w = np.random.default_rng(2).normal(size=layout.dim) * 0.1
    model = layout.to_model(w)
    fp = repo.resolve(FS).fingerprint
    manifest = save_artifact(model, encoder, tmp_path / "a", kind="ftrl", feature_set_name=FS, feature_set_fingerprint=fp,
                             metrics={}, name="ftrl", version="v1", onnx=True)
    assert "onnxruntime" in manifest.backends and manifest.metrics["onnx_max_abs_diff"] < 1e-4
    arrays = encoder.dummy(17, seed=3)
    eager = load_scorer(tmp_path / "a", "eager", 1).score_encoded(arrays)
    onnx = load_scorer(tmp_path / "a", "onnxruntime", 1).score_encoded(arrays)
    np.testing.assert_allclose(onnx, eager, atol=1e-5)


def test_served_rows_encode_exactly_like_the_online_read(redis: Any, unique_prefix: str, repo: Any,
                                                         world: SyntheticWorld, encoder: FeatureEncoder) -> None:
    """A served-feature record of a real OnlineFeatures read, seen through ServedRows, encodes to the same arrays."""
    from featurestore.client import FeatureClient, serving_time
    from featurestore.online import OnlineStore
    from featurestore.served_log import decode_record, encode_record, served_record

    store = OnlineStore(redis, unique_prefix)
    at = serving_time() - timedelta(hours=1)
    store.write_rows(repo.view("st_user"), world.view_table("st_user", at))
    store.write_rows(repo.view("st_item"), world.view_table("st_item", at).slice(0, 60))  # items 60+ are unknown
    client = FeatureClient(store, repo, feature_set_versions={FS: 1})
    items = [world.items[i] for i in (3, 59, 61, 7, 70)] + ["nope"]
    feats = client.get_online_features(None, {"user_id": [world.users[4]] * len(items), "item_id": items}, FS,
                                       {"event_ts": TS})
    record = decode_record(encode_record(served_record(feats, served_feature_id="sf1")))  # through JSON, as on Kafka
    served = ServedRows([(record, i) for i in range(len(items))], ["user_id", "item_id"], FS)
    want = encoder.encode_online(feats)
    got = encoder.encode_online(served)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # unknown items were read as defaults/missing: both paths agree on that too, and it is not all one row
    assert len({tuple(r) for r in want["cat_ids"].tolist()}) == len(items)


def test_publisher_registers_promotes_and_prunes_old_versions(encoder: FeatureEncoder, tmp_path: Path, repo: Any) -> None:
    from ranking.artifact import read_manifest
    from ranking.registry import ModelRegistry
    from streaming.publish import Publisher

    registry = ModelRegistry(tmp_path / "models", repo=repo, default_model="ftrl")
    layout = SparseLayout(encoder, parse_crosses(CROSSES, encoder))
    pub = Publisher(registry, layout, name="ftrl", fingerprint=repo.resolve(FS).fingerprint, keep_versions=3)
    published = []
    for k in range(1, 8):
        w = np.full(layout.dim, 0.01 * k)
        published.append(pub.publish(w, {"samples_learned": float(100 * k), "newest_click_ms": float(k)},
                                     {"offsets": {"0": 100 * k}, "newest_click_sample_id": f"r{k}:i"}))
        assert registry.live("ftrl").version == published[-1]  # promoted at once
    state = registry.state("ftrl")
    # the 3 newest, plus the 3 most recent rollback targets (previous lives): the 4 newest in all
    assert set(state.versions) == set(published[-4:])
    assert sorted(p.name for p in (tmp_path / "models" / "ftrl").iterdir() if not p.name.startswith(".")) == \
        sorted([*published[-4:], "registry.json"])
    assert all(v in state.versions for v in state.previous)  # rollback targets that remain are real versions
    m = read_manifest(registry.artifact_path(published[-1], "ftrl"))
    assert m.kind == "ftrl" and m.metrics["samples_learned"] == 700 and m.model["streaming"]["offsets"] == {"0": 700}
    assert m.model["streaming"]["newest_click_sample_id"] == "r7:i"
    live, previous = registry.rollback("ftrl")
    assert live.version == published[-2] and previous.version == published[-1]
