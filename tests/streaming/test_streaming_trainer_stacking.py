"""The FTRL learner stacked on a trained DeepFM: starts as the base, corrects a biased base, publishes a servable graph."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logging  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ftrl_trainer_helpers import CROSSES, DEFS, FS, make_topics, produce, train_base, trainer_config  # noqa: E402

from featurestore.repository import load_repo  # noqa: E402
from ranking.encoding import FeatureEncoder  # noqa: E402
from streaming.ftrl import FTRLProximal, log_loss, sigmoid  # noqa: E402
from streaming.hashing import SparseLayout, parse_crosses  # noqa: E402
from streaming.trainer_features import ServedRows, fit_table  # noqa: E402
from streaming.trainer_stacking import BaseModelError, StackedLayout, load_base  # noqa: E402
from streaming.trainer_synthetic import SyntheticWorld  # noqa: E402

TS = 1_767_225_600_000 + 9 * 3600 * 1000
WORLD = {"n_users": 40, "n_items": 120, "seed": 5}


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repo(DEFS)


def _rows(world: SyntheticWorld, n: int, start_ms: int = TS) -> tuple[ServedRows, np.ndarray]:
    pairs, labels = [], []
    for record, samples in world.requests(n, items_per_request=4, start_ms=start_ms):
        pairs += [(record, i) for i in range(len(samples))]
        labels += [s.label for s in samples]
    return ServedRows(pairs, ["user_id", "item_id"], FS), np.array(labels)


@pytest.fixture(scope="module")
def base_dir(repo: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepFM trained on the world as it was (base click logit -1.5), with its ONNX graph."""
    world = SyntheticWorld(repo, FS, **WORLD)
    enc = FeatureEncoder.for_feature_set(repo.resolve(FS), hash_buckets=4099)
    enc.fit(fit_table(enc, _rows(world, 100)[0]))
    out = tmp_path_factory.mktemp("base") / "d1"
    train_base(world, enc, out, n_requests=1500, epochs=3)
    return out


@pytest.fixture()
def registry(repo: Any, tmp_path: Path, base_dir: Path) -> Any:
    from ranking.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "models", repo=repo, default_model="deepfm")
    reg.publish(base_dir, auto_promote=True)
    return reg


def _stacked(registry: Any, repo: Any) -> StackedLayout:
    base = load_base(registry, "deepfm", feature_set=FS, fingerprint=repo.resolve(FS).fingerprint)
    return StackedLayout(SparseLayout(base.encoder, parse_crosses(CROSSES, base.encoder)), base)


def test_a_fresh_stacked_learner_predicts_exactly_what_the_base_model_does(registry: Any, repo: Any) -> None:
    import torch

    layout = _stacked(registry, repo)
    assert layout.base.version == "d1" and layout.base.scorer.backend_name == "onnxruntime"
    rows, _ = _rows(SyntheticWorld(repo, FS, **{**WORLD, "seed": 8}), 50)
    arrays = layout.encoder.encode_online(rows)
    b = layout.base.logits(arrays)
    with torch.inference_mode():  # the ONNX logits are the PyTorch model's
        want = layout.base.module({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()
    np.testing.assert_allclose(b, want, atol=1e-5)
    assert b.std() > 0.1  # a trained model: logits that differ per row
    idx, val = layout.sparse(arrays, b)
    assert idx.shape == (len(rows), layout.width) and (idx[:, -1] == layout.base_index).all()
    learner = FTRLProximal(layout.dim, alpha=0.3, l1=0.1, l2=0.1)
    np.testing.assert_array_equal(learner.predict_logits(idx, val, offset=b), b)  # every FTRL weight is zero
    p = learner.learn_many(idx, val, np.zeros(len(rows)), offset=b)
    np.testing.assert_array_equal(p, sigmoid(b))
    with torch.inference_mode():  # and the published graph of zero weights is the base model
        zero = layout.to_model(np.zeros(layout.dim))({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()
    np.testing.assert_allclose(zero, want, rtol=0, atol=0)


def test_the_gradient_is_that_of_the_full_logit() -> None:
    """With offsets o, a step moves z_i by g_i = sum_r (sigmoid(o_r + w.x_r) - y_r) x_ri (first step: w = 0, sigma = 0)."""
    idx = np.array([[1, 3, 4], [2, 3, 5]])
    val = np.array([[1.0, 0.5, 2.0], [1.0, -1.0, 0.3]])
    off = np.array([1.7, -0.4])
    y = np.array([1.0, 0.0])
    m = FTRLProximal(6, alpha=0.2, l1=0.0, l2=0.0)
    p = m.learn_many(idx, val, y, offset=off)
    np.testing.assert_allclose(p, sigmoid(off))
    g = np.zeros(6)
    np.add.at(g, idx, (p - y)[:, None] * val)
    np.testing.assert_allclose(m.z, g)
    w = m.weights()
    np.testing.assert_allclose(m.learn_many(idx, val, y, offset=off), sigmoid(off + (w[idx] * val).sum(axis=1)))
    with pytest.raises(ValueError, match="offsets"):
        m.learn_many(idx, val, y, offset=np.zeros(3))


def test_stacked_learner_corrects_a_biased_base_better_than_plain_ftrl(registry: Any, repo: Any) -> None:
    """Clicks became more likely everywhere (+1.2 on the logit) since the base was trained: progressive logloss."""
    layout = _stacked(registry, repo)
    shifted = SyntheticWorld(repo, FS, **{**WORLD, "seed": 5}, base_logit=-0.3)  # the same tastes, another click rate
    rows, y = _rows(shifted, 1000, start_ms=TS + 10**7)
    arrays = layout.encoder.encode_online(rows)
    b = layout.base.logits(arrays)
    idx, val = layout.sparse(arrays, b)
    plain_idx, plain_val = layout.plain.sparse(arrays)
    stacked = FTRLProximal(layout.dim, alpha=0.1, beta=1.0, l1=0.1, l2=0.1)
    plain = FTRLProximal(layout.plain.dim, alpha=0.1, beta=1.0, l1=0.1, l2=0.1)
    losses: dict[str, list[np.ndarray]] = {"base": [], "stacked": [], "plain": []}
    for i in range(0, len(y), 100):
        s = slice(i, i + 100)
        losses["base"].append(log_loss(sigmoid(b[s]), y[s]))
        losses["stacked"].append(log_loss(stacked.learn_many(idx[s], val[s], y[s], offset=b[s]), y[s]))
        losses["plain"].append(log_loss(plain.learn_many(plain_idx[s], plain_val[s], y[s]), y[s]))
    mean = {k: float(np.concatenate(v).mean()) for k, v in losses.items()}
    assert mean["stacked"] < mean["base"] - 0.02 and mean["stacked"] < mean["plain"] - 0.02, mean
    w_b = stacked.weights_of(np.array([layout.base_index]))[0]
    assert np.isfinite(w_b)


def test_a_published_stacked_version_serves_the_learners_predictions(registry: Any, repo: Any, config: Any) -> None:
    import torch

    from ranking.artifact import load_model, load_scorer, read_manifest
    from ranking.live import default_loader
    from ranking.models import Stacked
    from streaming.publish import Publisher

    layout = _stacked(registry, repo)
    rows, y = _rows(SyntheticWorld(repo, FS, **{**WORLD, "seed": 9}, base_logit=-0.5), 300)
    arrays = layout.encoder.encode_online(rows)
    b = layout.base.logits(arrays)
    idx, val = layout.sparse(arrays, b)
    learner = FTRLProximal(layout.dim, alpha=0.3, l1=0.01, l2=0.01)
    for _ in range(3):
        learner.learn_many(idx, val, y, offset=b)
    pub = Publisher(registry, layout, name="ftrl", fingerprint=repo.resolve(FS).fingerprint, onnx=True)
    version = pub.publish(learner.weights(), {"samples_learned": float(len(y))},
                          {"offsets": {}, "base_model": layout.base.describe()})
    path = registry.artifact_path(version, "ftrl")
    m = read_manifest(path)
    assert m.kind == "ftrl" and registry.live("ftrl").version == version
    assert m.model["streaming"]["base_model"]["name"] == "deepfm" and m.model["streaming"]["base_model"]["version"] == "d1"
    assert m.model["config"]["hparams"]["base"]["kind"] == "deepfm"
    assert m.metrics["onnx_max_abs_diff"] < 1e-4  # save_artifact's own check on random inputs
    module = load_model(path)
    assert isinstance(module, Stacked) and abs(float(module.base_weight.detach())) > 0  # w_b was learned
    # the ONNX graph against PyTorch, on the real rows
    with torch.inference_mode():
        torch_logits = module({k: torch.from_numpy(v) for k, v in arrays.items()}).numpy()
    onnx = load_scorer(path, "onnxruntime", 1)
    np.testing.assert_allclose(onnx.logits(arrays), torch_logits, atol=1e-4)
    # ranking's loader serves it, and its scores are the learner's predictions of the same rows
    served = default_loader(config)(path, registry.live("ftrl"))
    want = learner.predict_many(idx, val, offset=b)
    assert not np.allclose(want, sigmoid(b), atol=1e-3)  # the correction is not nothing
    np.testing.assert_allclose(served.score_encoded(arrays), want, atol=1e-5)


def test_a_base_over_another_feature_set_is_refused(repo: Any, tmp_path: Path) -> None:
    from ranking.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "models", repo=repo, default_model="other")
    world = SyntheticWorld(repo, "st_ftrl_small", n_users=10, n_items=20, seed=1)
    enc = FeatureEncoder.for_feature_set(repo.resolve("st_ftrl_small"), hash_buckets=101)
    pairs = [(rec, i) for rec, smp in world.requests(20, start_ms=TS) for i in range(len(smp))]
    enc.fit(fit_table(enc, ServedRows(pairs, ["user_id", "item_id"], "st_ftrl_small")))
    train_base(world, enc, tmp_path / "o1", n_requests=20, epochs=1, name="other", version="o1")
    reg.publish(tmp_path / "o1", auto_promote=True)
    fp = repo.resolve(FS).fingerprint
    with pytest.raises(BaseModelError, match="st_ftrl_small.*st_ftrl") as err:
        load_base(reg, "other", feature_set=FS, fingerprint=fp)
    assert fp[:12] in str(err.value) and repo.resolve("st_ftrl_small").fingerprint[:12] in str(err.value)
    with pytest.raises(BaseModelError, match="no live version|not in the registry"):
        load_base(reg, "nope", feature_set=FS, fingerprint=fp)


def test_trainer_stacks_on_the_live_base_and_keeps_that_version(stack: Any, config: Any, unique_prefix: str,
                                                                tmp_path: Path, repo: Any, base_dir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """On Kafka: learns on the full logit, publishes servable stacked versions naming d1, keeps d1 when d2 goes live
    and across a restart; a plain trainer refuses the stacked checkpoint."""
    import shutil

    from ranking.artifact import read_manifest
    from ranking.live import default_loader
    from ranking.registry import ModelRegistry
    from stack.clients import kafka_producer
    from streaming.trainer import Trainer, TrainerError

    cfg = trainer_config(config, tmp_path, trainer_base_model="deepfm", publish_onnx=True)
    registry = ModelRegistry.from_config(cfg, repo=repo)
    registry.publish(base_dir, auto_promote=True)
    samples_topic, features_topic = f"{unique_prefix}-samples", f"{unique_prefix}-features"
    make_topics(stack.kafka_bootstrap, {samples_topic: 2, features_topic: 1})
    world = SyntheticWorld(repo, FS, **{**WORLD, "seed": 11}, base_logit=-0.3)
    producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka)
    samples = produce(producer, world, 200, samples_topic=samples_topic, features_topic=features_topic,
                      start_ms=int(time.time() * 1000))

    def start() -> Trainer:
        return Trainer(cfg, stack.kafka_bootstrap, repo=repo, registry=registry, samples_topic=samples_topic,
                       features_topic=features_topic).start()

    trainer = start()
    try:
        assert trainer.base is not None and trainer.base.version == "d1"
        assert trainer.encoder is not None and trainer.encoder.hash_buckets == 4099  # the base's encoder, as it is
        deadline = time.monotonic() + 60
        while trainer.counts["learned"] < len(samples):
            assert time.monotonic() < deadline, trainer.counts
            trainer.step()
        assert trainer.timing["base_s"] > 0 and np.isfinite(trainer.pv.logloss())
        trainer.wait_published()
        trainer.maybe_publish(force=True)
        trainer.wait_published()
        assert not trainer.publish_errors, trainer.publish_errors
        version = trainer.versions[-1]
        path = registry.artifact_path(version, cfg.streaming.model_name)
        m = read_manifest(path)
        assert m.model["streaming"]["base_model"]["version"] == "d1" and "onnxruntime" in m.backends
        # ranking's loader serves the version; its scores are the trainer's predictions of the same rows
        assert trainer.resolver is not None and trainer.layout is not None and trainer.base is not None
        rows, _, _ = trainer.resolver.resolve(samples[:40])
        arrays = trainer.encoder.encode_online(rows)
        b = trainer.base.logits(arrays)
        idx, val = trainer.layout.sparse(arrays, b)  # type: ignore[call-arg]
        served = default_loader(cfg)(path, registry.version(version, cfg.streaming.model_name))
        np.testing.assert_allclose(served.score_encoded(arrays), trainer.learner.predict_many(idx, val, offset=b),
                                   atol=1e-5)
        # a newer base goes live: a warning, and the next version still stacks on d1
        d2 = tmp_path / "d2"
        shutil.copytree(base_dir, d2)
        manifest = (d2 / "manifest.json").read_text().replace('"version": "d1"', '"version": "d2"')
        (d2 / "manifest.json").write_text(manifest)
        registry.publish(d2, auto_promote=True)
        assert registry.live("deepfm").version == "d2"
        more = produce(producer, world, 20, samples_topic=samples_topic, features_topic=features_topic,
                       start_ms=int(time.time() * 1000))
        while trainer.counts["learned"] < len(samples) + len(more):
            assert time.monotonic() < deadline, trainer.counts
            trainer.step()
        with caplog.at_level(logging.WARNING, logger="cascade.streaming.trainer"):
            assert trainer.maybe_publish(force=True)
            trainer.wait_published()
        assert any("d2 is live" in r.getMessage() and "keeps stacking on d1" in r.getMessage() for r in caplog.records)
        m2 = read_manifest(registry.artifact_path(trainer.versions[-1], cfg.streaming.model_name))
        assert m2.model["streaming"]["base_model"]["version"] == "d1"
        trainer.checkpoint()
    finally:
        trainer.close()
        producer.close()
    restarted = start()  # from the checkpoint: still d1, though d2 is live
    try:
        assert restarted.base is not None and restarted.base.version == "d1"
        assert restarted.counts["learned"] == len(samples) + len(more)
    finally:
        restarted.close()
    plain = cfg.model_copy(update={"streaming": cfg.streaming.model_copy(update={"trainer_base_model": ""})})
    with pytest.raises(TrainerError, match="stacked on 'deepfm'"):
        Trainer(plain, stack.kafka_bootstrap, repo=repo, registry=registry, samples_topic=samples_topic,
                features_topic=features_topic, served_cache=False).start()
