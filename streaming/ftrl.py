"""FTRL-Proximal logistic regression over sparse coordinates (McMahan et al. 2013, Algorithm 1), in numpy.

State: two float64 arrays ``z`` and ``n`` of ``dim`` coordinates. A weight is
never stored; it is a function of its coordinate's (z, n) and computed lazily,
only for the coordinates a call touches::

    w_i = 0                                                   if |z_i| <= l1
    w_i = -(z_i - sign(z_i) * l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

After predicting p = sigmoid(sum_i w_i x_i), a sample's gradient on
coordinate i is g_i = (p - y) x_i and the update is
``sigma = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha; z_i += g_i - sigma w_i;
n_i += g_i^2`` -- per-coordinate learning rates, L1 (exact zeros) and L2.

Inputs
------
A minibatch is two [B, K] arrays, ``indices`` (int64 coordinates) and
``values`` (float); a value of 0 means "no feature here" (padding), and a
coordinate repeated within a row adds up (a hash collision). The single-sample
API takes river-style dicts ``{coordinate: value}``. An optional ``offset``
([B] logits) is added to each row's logit, unweighted: stacking on a batch
model (:mod:`streaming.trainer_stacking`) passes its logits there, so the
prediction and the gradient are those of the full model.

Minibatches
-----------
:meth:`FTRLProximal.learn_many` predicts every row with the weights as they
were before the batch (which is also what progressive validation needs), then
applies the B per-sample updates with those weights frozen: per coordinate,
``z += sum_r g_r - sigma * w`` and ``n += sum_r g_r^2`` with
``sigma = (sqrt(n + sum_r g_r^2) - sqrt(n)) / alpha`` -- what B sequential
steps do when w does not move in between (the sigmas telescope). The learning
rate schedule therefore does not depend on how samples happen to be batched
(a summed gradient squared would shrink it with the batch size). With one row
per batch (and no coordinate repeated within the row) it is
:meth:`learn_one` (up to the order of a float sum). Per-coordinate sums use
one ``np.unique`` over the batch's coordinates and ``np.bincount``.

The bias is an ordinary coordinate whose value is always 1 (the caller's
layout puts it there), regularised like the others, as in the paper.
Compared with river (``optim.FTRLProximal`` inside
``linear_model.LogisticRegression``), checked in the tests: the z/n update is
river's; river's intercept is separate and learned by SGD, and its linear
model predicts with the weight computed at the coordinate's previous update
(one step stale) and leaves a weight unchanged instead of zeroing it when
``|z| <= l1``; here the weights are always the current closed form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

_MAX_LOGIT = 35.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -_MAX_LOGIT, _MAX_LOGIT)))


def log_loss(p: np.ndarray, y: np.ndarray, eps: float = 1e-15) -> np.ndarray:
    """Per-sample logistic loss of probabilities `p` for labels `y` in [0, 1]."""
    p = np.clip(p, eps, 1.0 - eps)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


class FTRLProximal:
    """Per-coordinate FTRL-Proximal logistic regression; see the module docstring."""

    def __init__(self, dim: int, alpha: float = 0.05, beta: float = 1.0, l1: float = 1.0, l2: float = 1.0) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        if alpha <= 0 or beta < 0 or l1 < 0 or l2 < 0:
            raise ValueError("alpha must be > 0 and beta, l1, l2 >= 0")
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.l1 = float(l1)
        self.l2 = float(l2)
        self.z = np.zeros(self.dim, dtype=np.float64)
        self.n = np.zeros(self.dim, dtype=np.float64)

    # ------------------------------------------------------------------ weights

    def weights_of(self, idx: np.ndarray) -> np.ndarray:
        """The current weights of coordinates `idx` (closed form of their z, n)."""
        z = self.z[idx]
        n = self.n[idx]
        shrunk = np.abs(z) - self.l1
        w = -np.sign(z) * np.maximum(shrunk, 0.0) / ((self.beta + np.sqrt(n)) / self.alpha + self.l2)
        return w

    def weights(self) -> np.ndarray:
        """Every weight (dim float64): what a published model holds."""
        return self.weights_of(np.arange(self.dim))

    # ------------------------------------------------------------------ minibatches

    def _check(self, indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        val = np.asarray(values, dtype=np.float64)
        if idx.ndim == 1:
            idx, val = idx[None, :], val[None, :]
        if idx.shape != val.shape or idx.ndim != 2:
            raise ValueError(f"indices {idx.shape} and values {val.shape} must be equal [B, K] arrays")
        if idx.size and (idx.min() < 0 or idx.max() >= self.dim):
            raise ValueError(f"coordinates must be in [0, {self.dim})")
        return idx, val

    def predict_logits(self, indices: np.ndarray, values: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """The logit of each row (float64 [B]): ``offset`` (when given, [B]) plus the weighted sum."""
        idx, val = self._check(indices, values)
        off = _offset(offset, idx.shape[0])
        if idx.size == 0:
            return off.copy()
        uniq, inv = np.unique(idx, return_inverse=True)
        return off + (self.weights_of(uniq)[inv.reshape(idx.shape)] * val).sum(axis=1)

    def predict_many(self, indices: np.ndarray, values: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """P(y = 1) of each row (float64 [B])."""
        return sigmoid(self.predict_logits(indices, values, offset))

    def learn_many(self, indices: np.ndarray, values: np.ndarray, labels: np.ndarray,
                   sample_weight: np.ndarray | None = None, offset: np.ndarray | None = None) -> np.ndarray:
        """Learn a minibatch; returns the predictions made before learning from it (progressive validation).

        ``offset`` ([B] logits, e.g. a batch model's, see :mod:`streaming.trainer_stacking`) is added to
        each row's logit before the sigmoid, so the gradient is that of the full prediction; it has no
        weight of its own here (a caller that wants one adds it as a coordinate too).
        """
        idx, val = self._check(indices, values)
        y = np.asarray(labels, dtype=np.float64).reshape(-1)
        if y.shape[0] != idx.shape[0]:
            raise ValueError(f"{idx.shape[0]} rows but {y.shape[0]} labels")
        off = _offset(offset, idx.shape[0])
        if idx.size == 0:
            return sigmoid(off)
        flat = idx.ravel()
        uniq, inv = np.unique(flat, return_inverse=True)
        w = self.weights_of(uniq)
        p = sigmoid(off + (w[inv].reshape(idx.shape) * val).sum(axis=1))
        err = p - y
        if sample_weight is not None:
            err = err * np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        contrib = (err[:, None] * val).ravel()
        g = np.bincount(inv, weights=contrib, minlength=uniq.size)
        g2 = np.bincount(inv, weights=contrib * contrib, minlength=uniq.size)
        n_old = self.n[uniq]
        n_new = n_old + g2
        sigma = (np.sqrt(n_new) - np.sqrt(n_old)) / self.alpha
        self.z[uniq] += g - sigma * w
        self.n[uniq] = n_new
        return p

    # ------------------------------------------------------------------ river-style single samples

    def _weight(self, zi: float, ni: float) -> float:
        if -self.l1 <= zi <= self.l1:
            return 0.0
        return -(zi - math.copysign(self.l1, zi)) / ((self.beta + math.sqrt(ni)) / self.alpha + self.l2)

    def predict_proba_one(self, x: Mapping[int, float]) -> dict[bool, float]:
        p = self.predict_one(x)
        return {False: 1.0 - p, True: p}

    def predict_one(self, x: Mapping[int, float]) -> float:
        """P(y = 1) of one sample ``{coordinate: value}``."""
        z, n = memoryview(self.z), memoryview(self.n)
        dot = sum(self._weight(z[i], n[i]) * v for i, v in x.items())
        return 1.0 / (1.0 + math.exp(-min(max(dot, -_MAX_LOGIT), _MAX_LOGIT)))

    def learn_one(self, x: Mapping[int, float], y: float, w: float = 1.0) -> float:
        """Learn one sample; returns its prediction before the update.

        Plain Python over memoryviews of z and n (numpy's per-call overhead
        dominates at ~30 coordinates); the same arithmetic as :meth:`learn_many`.
        """
        z, n = memoryview(self.z), memoryview(self.n)
        alpha = self.alpha
        items = [(int(i), float(v)) for i, v in x.items()]
        for i, _ in items:
            if not 0 <= i < self.dim:
                raise ValueError(f"coordinates must be in [0, {self.dim})")
        ws = [self._weight(z[i], n[i]) for i, _ in items]
        dot = sum(wi * v for wi, (_, v) in zip(ws, items))
        p = 1.0 / (1.0 + math.exp(-min(max(dot, -_MAX_LOGIT), _MAX_LOGIT)))
        err = (p - float(y)) * w
        for (i, v), wi in zip(items, ws):
            g = err * v
            ni = n[i]
            nn = ni + g * g
            z[i] += g - (math.sqrt(nn) - math.sqrt(ni)) / alpha * wi
            n[i] = nn
        return p

    # ------------------------------------------------------------------ state

    def hyperparameters(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta, "l1": self.l1, "l2": self.l2}

    def touched(self) -> np.ndarray:
        """Coordinates ever updated with a non-zero gradient (n > 0): the sparse state a checkpoint keeps."""
        return np.flatnonzero(self.n)

    def load_sparse(self, idx: np.ndarray, z: np.ndarray, n: np.ndarray) -> None:
        self.z[:] = 0.0
        self.n[:] = 0.0
        self.z[idx] = z
        self.n[idx] = n

    def __repr__(self) -> str:
        return (f"FTRLProximal(dim={self.dim}, alpha={self.alpha}, beta={self.beta}, l1={self.l1}, l2={self.l2}, "
                f"touched={int(np.count_nonzero(self.n))})")


def _offset(offset: np.ndarray | None, rows: int) -> np.ndarray:
    if offset is None:
        return np.zeros(rows)
    off = np.asarray(offset, dtype=np.float64).reshape(-1)
    if off.shape[0] != rows:
        raise ValueError(f"{rows} rows but {off.shape[0]} offsets")
    return off


def state_of(model: FTRLProximal) -> dict[str, Any]:
    """The sparse state of `model` as arrays (what a checkpoint stores)."""
    idx = model.touched()
    return {"idx": idx, "z": model.z[idx], "n": model.n[idx]}


__all__ = ["FTRLProximal", "log_loss", "sigmoid", "state_of"]
