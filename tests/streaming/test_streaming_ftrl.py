"""FTRL-Proximal (streaming.ftrl) against river's optimiser, minibatch semantics, metrics and trainer state."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streaming.ftrl import FTRLProximal, log_loss, sigmoid
from streaming.trainer_metrics import ProgressiveValidation, auc
from streaming.trainer_state import LearnedSet, SampleDedup, id_hash, load_checkpoint, save_checkpoint

ALPHA, BETA, L1, L2 = 0.1, 1.0, 0.5, 0.3


def _stream(n: int, dim: int, seed: int = 0, scale: float = 1.0):
    """Sparse samples {coordinate: value} with labels from a hidden logistic model."""
    rng = np.random.default_rng(seed)
    true_w = scale * rng.normal(size=dim) * (np.arange(dim) % 3 == 0)  # two in three coordinates are noise
    for _ in range(n):
        k = int(rng.integers(3, 9))
        idx = rng.choice(dim, size=k, replace=False)
        x = {int(i): float(v) for i, v in zip(idx, rng.normal(size=k))}
        p = 1.0 / (1.0 + math.exp(-sum(true_w[i] * v for i, v in x.items())))
        yield x, float(rng.random() < p)


def test_updates_and_predictions_match_rivers_ftrl_proximal() -> None:
    """Same alpha/beta/l1/l2 and sparse inputs: river's optimiser, given McMahan's weights, updates z and n as we do.

    Convention difference (see streaming.ftrl): river's LogisticRegression predicts with one-step-stale
    weights, keeps a weight unchanged when |z| <= l1 and learns its intercept by SGD; we predict with the
    closed-form weights of the current z, n (so do we feed river's step), with the bias as a coordinate.
    """
    from river import optim

    dim = 60
    ours = FTRLProximal(dim, ALPHA, BETA, L1, L2)
    ref = optim.FTRLProximal(alpha=ALPHA, beta=BETA, l1=L1, l2=L2)
    worst_p = 0.0
    for x, y in _stream(400, dim):
        w = {i: 0.0 if abs(ref.z[i]) <= L1 else
             -(ref.z[i] - np.sign(ref.z[i]) * L1) / ((BETA + math.sqrt(ref.n[i])) / ALPHA + L2) for i in x}
        p_ref = 1.0 / (1.0 + math.exp(-sum(w[i] * v for i, v in x.items())))
        assert ours.predict_one(x) == pytest.approx(p_ref, abs=1e-12)
        p = ours.learn_one(x, y)
        worst_p = max(worst_p, abs(p - p_ref))
        ref.step(w=w, g={i: (p_ref - y) * v for i, v in x.items()})
    z_ref = np.array([ref.z[i] for i in range(dim)])
    n_ref = np.array([ref.n[i] for i in range(dim)])
    assert worst_p < 1e-9
    np.testing.assert_allclose(ours.z, z_ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.n, n_ref, rtol=0, atol=1e-9)
    w_ref = np.array([0.0 if abs(z) <= L1 else -(z - np.sign(z) * L1) / ((BETA + math.sqrt(n)) / ALPHA + L2)
                      for z, n in zip(z_ref, n_ref)])
    np.testing.assert_allclose(ours.weights(), w_ref, rtol=0, atol=1e-9)
    assert (ours.weights() == 0).any() and (ours.weights() != 0).any()  # L1 made exact zeros, not everything


def test_learn_many_of_one_row_is_learn_one_and_padding_is_inert() -> None:
    dim = 40
    a, b = FTRLProximal(dim, ALPHA, BETA, L1, L2), FTRLProximal(dim, ALPHA, BETA, L1, L2)
    for x, y in _stream(200, dim, seed=3):
        idx = np.array([*x, 0, 0])  # two padding slots (value 0) on coordinate 0
        val = np.array([*x.values(), 0.0, 0.0])
        pa_ = a.learn_one(x, y)
        pb = b.learn_many(idx[None, :], val[None, :], np.array([y]))[0]
        assert pa_ == pytest.approx(pb, abs=1e-15)
    np.testing.assert_allclose(a.z, b.z, atol=1e-12)
    np.testing.assert_allclose(a.n, b.n, atol=1e-12)


def test_minibatch_is_sequential_steps_with_frozen_weights() -> None:
    """learn_many == B per-sample updates that all use the pre-batch weights (the documented semantics)."""
    dim, k, batch = 30, 6, 16
    rng = np.random.default_rng(7)
    model = FTRLProximal(dim, ALPHA, BETA, L1, L2)
    z_ref, n_ref = np.zeros(dim), np.zeros(dim)
    for _ in range(25):
        idx = np.stack([rng.choice(dim, size=k, replace=False) for _ in range(batch)])
        val = rng.normal(size=(batch, k))
        y = (rng.random(batch) < 0.4).astype(float)
        shrunk = np.maximum(np.abs(z_ref) - L1, 0)
        w = -np.sign(z_ref) * shrunk / ((BETA + np.sqrt(n_ref)) / ALPHA + L2)
        p_ref = sigmoid((w[idx] * val).sum(1))
        for r in range(batch):
            for i, v in zip(idx[r], val[r]):
                g = (p_ref[r] - y[r]) * v
                sigma = (math.sqrt(n_ref[i] + g * g) - math.sqrt(n_ref[i])) / ALPHA
                z_ref[i] += g - sigma * w[i]
                n_ref[i] += g * g
        p = model.learn_many(idx, val, y)
        np.testing.assert_allclose(p, p_ref, atol=1e-12)
    np.testing.assert_allclose(model.z, z_ref, atol=1e-9)
    np.testing.assert_allclose(model.n, n_ref, atol=1e-9)


def test_learns_a_signal_and_progressive_logloss_falls() -> None:
    dim = 200
    model = FTRLProximal(dim, alpha=0.1, beta=1.0, l1=0.1, l2=0.1)
    pv = ProgressiveValidation(window=1000)
    rows = list(_stream(6000, dim, seed=11, scale=3.0))
    idx = np.zeros((len(rows), 8), dtype=np.int64)
    val = np.zeros((len(rows), 8))
    y = np.array([r[1] for r in rows])
    for r, (x, _) in enumerate(rows):
        idx[r, : len(x)] = list(x)
        val[r, : len(x)] = list(x.values())
    first = None
    for s in range(0, len(rows), 100):
        p = model.learn_many(idx[s : s + 100], val[s : s + 100], y[s : s + 100])
        pv.update(p, y[s : s + 100])
        if s == 900:
            first = pv.logloss()
    assert first is not None and pv.logloss() < first - 0.05
    assert pv.auc() > 0.75
    assert pv.cumulative_logloss() > pv.logloss()  # the early, untrained predictions count in the cumulative one
    assert pv.logloss() == pytest.approx(float(np.mean(log_loss(pv.p, pv.y))))


def test_auc_equals_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(1)
    p = np.round(rng.random(300), 1)  # many ties
    y = (rng.random(300) < 0.3).astype(float)
    pos, neg = p[y == 1], p[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auc(p, y) == pytest.approx(pairwise, abs=1e-12)
    assert math.isnan(auc(p, np.zeros(300)))


def test_progressive_window_keeps_the_last_samples() -> None:
    pv = ProgressiveValidation(window=10)
    pv.update(np.full(7, 0.9), np.ones(7))
    pv.update(np.full(8, 0.1), np.ones(8))  # wraps: the window now holds 2 x 0.9 and 8 x 0.1
    assert pv.size == 10 and sorted(pv.p.tolist()).count(0.9) == 2
    assert pv.count == 15
    assert pv.logloss() == pytest.approx((2 * -math.log(0.9) + 8 * -math.log(0.1)) / 10)


def test_dedup_is_bounded_and_survives_restore() -> None:
    d = SampleDedup(capacity=5)
    hs = [id_hash(f"r{i}:x") for i in range(8)]
    assert d.fresh(hs[:3] + hs[:1]).tolist() == [True, True, True, False]  # a repeat within the batch
    d.add(hs)
    assert d.size == 5 and hs[0] not in d and all(h in d for h in hs[3:])  # the 3 oldest were forgotten
    ring, meta = d.state()
    e = SampleDedup.restore(ring, meta, capacity=4)  # restored into a smaller ring: the newest 4 stay
    assert [h in e for h in hs] == [False] * 4 + [True] * 4
    e.add([id_hash("new")])
    assert hs[4] not in e and id_hash("new") in e


def test_dedup_forgets_exactly_the_oldest_like_a_fifo() -> None:
    from collections import OrderedDict

    rng = np.random.default_rng(4)
    d, ref = SampleDedup(capacity=50), OrderedDict()
    for _ in range(200):
        batch = [int(h) for h in rng.integers(0, 120, size=int(rng.integers(0, 30)))]  # repeats included
        fresh = d.fresh(batch)
        assert fresh.tolist() == [h not in ref and h not in batch[:i] for i, h in enumerate(batch)]
        learned = [h for h, f in zip(batch, fresh) if f]  # what the trainer adds: the fresh ones it learned
        d.add(learned)
        for h in learned:
            ref[h] = None
            if len(ref) > 50:
                ref.popitem(last=False)
        assert d.size == len(ref) and all(h in d for h in ref) and sum(h in d for h in range(120)) == len(ref)


def test_learned_set_tells_loss_and_duplication() -> None:
    ids = [f"req{i}:item{i % 7}" for i in range(1000)]
    ref = LearnedSet.of(ids)
    assert LearnedSet.of(reversed(ids)) == ref
    assert LearnedSet.of(ids[:-1]) != ref
    assert LearnedSet.of(ids[:-1] + ids[:1]) != ref  # one lost, one learned twice: same count, different sum
    assert LearnedSet.from_json(ref.to_json()) == ref


def test_checkpoint_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    d = SampleDedup(4)
    d.add([1, 2, 3])
    idx = np.array([3, 9, 11])
    save_checkpoint(tmp_path, idx=idx, z=np.array([0.5, -1.0, 2.0]), n=np.array([1.0, 2.0, 3.0]), dedup=d,
                    meta={"offsets": {"0": 12}, "counts": {"learned": 3}})
    first = (tmp_path / "checkpoint.npz").read_bytes()
    save_checkpoint(tmp_path, idx=idx[:1], z=np.array([0.25]), n=np.array([4.0]), dedup=d, meta={"offsets": {"0": 13}})
    got = load_checkpoint(tmp_path)
    assert got is not None and got["meta"]["offsets"] == {"0": 13} and got["z"].tolist() == [0.25]
    assert (tmp_path / "checkpoint.npz").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]  # no temp file left behind
    assert load_checkpoint(tmp_path / "none") is None
