"""Training end to end on a small slice of MovieLens: leak-free labels, temporal splits, metrics, artifact, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from featurestore.data.movielens import load_movielens
from ranking.artifact import load_scorer, verify_artifact
from ranking.data import build_splits, labels_of, movielens_labels

TINY = dict(embedding_dim=4, mlp_hidden=(16,), din_attention_hidden=(8,), hash_buckets=2003, batch_size=256)


@pytest.fixture(scope="module")
def cfg(config, tmp_path_factory: pytest.TempPathFactory):
    """The session config with a private data dir holding MovieLens cut to 60 users."""
    data_dir = tmp_path_factory.mktemp("data")
    cfg = config.model_copy(update={"paths": config.paths.model_copy(update={"data_dir": data_dir,
                                                                             "artifacts_dir": data_dir / "artifacts"})})
    paths = load_movielens(cfg.offline_root)
    ratings = pq.read_table(paths.ratings)
    pq.write_table(ratings.filter(pc.less_equal(ratings["user_id"], 60)), paths.ratings)
    return cfg


@pytest.fixture(scope="module")
def splits(cfg):
    return {kind: build_splits(f"{kind}_movielens", config=cfg) for kind in ("deepfm", "din")}


def test_labels_are_read_one_microsecond_before_the_rating(cfg) -> None:
    labels = movielens_labels(cfg.offline_root)
    ts = labels["event_ts"].cast("int64").to_numpy()
    fts = labels["feature_ts"].cast("int64").to_numpy()
    assert (ts - fts == 1).all()
    ratings = pq.read_table(cfg.offline_root / "movielens" / "ratings.parquet")
    np.testing.assert_array_equal(labels_of(labels), (ratings["rating"].to_numpy() >= 4).astype(np.float32))


def test_splits_are_temporal_and_features_do_not_see_the_label(splits) -> None:
    s = splits["din"]
    assert s.train.num_rows > s.valid.num_rows > 0 and s.test.num_rows > 0
    t = {k: getattr(s, k)["event_ts"].cast("int64").to_numpy() for k in ("train", "valid", "test")}
    assert t["train"].max() < t["valid"].min() and t["valid"].max() < t["test"].min()
    # the rated item is never in the history the label row sees, unless rated before (MovieLens: never twice)
    hist = s.train["user_activity__item_id_last20_30d"].to_pylist()
    items = s.train["item_id"].to_pylist()
    assert not any(i in (h or []) for i, h in zip(items, hist))
    # a rating counts in the window only after it happened: counts at the first rating of a user are 0
    users = s.train["user_id"].to_pylist()
    counts = s.train["user_activity__rating_count_1d"].to_pylist()
    firsts = {}
    for u, c in zip(users, counts):
        firsts.setdefault(u, c)
    assert set(firsts.values()) == {0}


@pytest.mark.parametrize("kind", ["deepfm", "din"])
def test_train_reports_metrics_and_saves_a_servable_artifact(cfg, splits, kind: str, tmp_path: Path) -> None:
    from ranking.train import train

    result = train(kind, config=cfg, epochs=2, splits=splits[kind], out_dir=tmp_path / kind, progress=False, **TINY)
    m = result.metrics
    for key in ("auc", "logloss", "auc_rich", "logloss_rich", "valid_auc", "rich_rows", "best_epoch", "hash_collision_rate"):
        assert key in m and np.isfinite(m[key]), key
    assert 0.0 <= m["auc"] <= 1.0 and m["logloss"] > 0 and 1 <= m["best_epoch"] <= m["epochs"] <= 2
    assert result.feature_set == f"{kind}_movielens"
    manifest = verify_artifact(tmp_path / kind)
    assert manifest.kind == kind and manifest.metrics["auc"] == pytest.approx(m["auc"])
    # the artifact scores the test split exactly as the trained model did
    scorer = load_scorer(tmp_path / kind, "onnxruntime", 1)
    from ranking.train import predict

    x = scorer.encoder.encode_table(splits[kind].test)
    np.testing.assert_allclose(scorer.score_encoded(x), predict(result.model, x), rtol=0, atol=1e-5)


def test_training_is_reproducible(cfg, splits) -> None:
    from ranking.train import train

    a = train("deepfm", config=cfg, epochs=1, splits=splits["deepfm"], progress=False, **TINY)
    b = train("deepfm", config=cfg, epochs=1, splits=splits["deepfm"], progress=False, **TINY)
    assert a.metrics["auc"] == b.metrics["auc"] and a.metrics["logloss"] == b.metrics["logloss"]


def test_cli_train_and_evaluate(cfg, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import cascade.cli
    import cascade.config

    monkeypatch.setattr(cascade.config, "get_config", lambda: cfg)
    sets = [f"--set={k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in TINY.items()]
    assert cascade.cli.main(["rank", "train", "--model", "din", "--epochs", "1", "--quiet", "--name", "din_test",
                             "--promote", *sets]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from ranking.registry import ModelRegistry

    registry = ModelRegistry.from_config(cfg)
    assert out["published"] == out["version"] and registry.live("din_test").version == out["version"]
    artifact = Path(out["artifact"])
    assert artifact.parent == cfg.paths.artifacts_dir / cfg.ranking.artifacts_subdir / "din_test"
    assert artifact.name == out["version"] and out["version"].startswith("din-")
    assert not [p for p in artifact.parent.iterdir() if p.name.startswith(".staging")]
    assert cfg.ranking.int8 and "onnxruntime-int8" in verify_artifact(artifact).backends  # what is served, by default
    assert cascade.cli.main(["rank", "evaluate", str(artifact), "--backend", "eager", "--backend", "onnxruntime"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["feature_set_matches"] is True
    assert ev["eager"]["auc"] == pytest.approx(out["auc"], abs=1e-6)
    assert ev["onnxruntime"]["max_abs_prob_diff_vs_eager"] < 1e-5
    assert cascade.cli.main(["rank", "export", str(artifact), "--int8"]) == 0
    assert "onnxruntime-int8" in verify_artifact(artifact).backends
