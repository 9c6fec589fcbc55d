"""The trainer's sparse feature space: ranking's encoder output as FTRL coordinates, one to one with ``Linear``.

Why this design: ranking serves the model, and at serving time it has only the
request and the online features of the model's feature set, encoded by the
artifact's :class:`~ranking.encoding.FeatureEncoder`. So the trainer encodes
each sample's features (the served vector, see :mod:`streaming.trainer_features`)
with that very encoder and reads the coordinates off its arrays; the published
:class:`ranking.models.linear.Linear` then computes exactly the logit the
learner computes, on every backend.

Coordinates (``dim = H + 2 * n_num + 1``, ``H = encoder.hash_buckets``)::

    [0, H)                  table rows: categorical ids (value 1), bag and sequence
                            elements (value 1 / length: Linear mean-pools them),
                            crosses (value 1, or 1 / length for a cat x bag cross)
    [H, H + 2 n_num)        the dense block (normalised values, then missing indicators)
    H + 2 n_num             the bias (value 1)

Row 0 is the padding row: empty bag slots point at it with value 0, and its
weight is always published as 0. Crosses are named ``"a*b"`` with encoder
field names (``user_id``, ``item_id``, ``view:feature``): ``a`` a categorical
field, ``b`` a categorical or bag field; their rows come from
:func:`ranking.models.linear.cross_rows`, the formula the served model uses.
Rows per sample (``width``): n_cat + n_bag * bag_len + n_seq * seq_len +
2 n_num + 1 + one per cat cross + bag_len per bag cross.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ranking.encoding import FeatureEncoder
from ranking.models.linear import MAX_CROSS_BUCKETS, cross_rows

_log = logging.getLogger("cascade.streaming.hashing")


def parse_crosses(specs: Sequence[str], encoder: FeatureEncoder, *, strict: bool = False) -> list[tuple[str, str]]:
    """``"a*b"`` specs as (a, b) field-name pairs the encoder has; others are skipped (logged), or raise when `strict`."""
    cats = {f.name for f in encoder.cat_fields}
    bags = {f.name for f in encoder.bag_fields}
    out: list[tuple[str, str]] = []
    for spec in specs:
        a, sep, b = spec.partition("*")
        a, b = a.strip(), b.strip()
        problem = None
        if not sep or not a or not b:
            problem = f"cross {spec!r} is not 'field*field'"
        elif a not in cats:
            problem = f"cross {spec!r}: {a!r} is not a categorical field of {encoder.feature_set!r}"
        elif b not in cats and b not in bags:
            problem = f"cross {spec!r}: {b!r} is not a categorical or bag field of {encoder.feature_set!r}"
        if problem:
            if strict:
                raise ValueError(problem)
            _log.info("%s; skipped", problem)
            continue
        if (a, b) not in out:
            out.append((a, b))
    return out


class SparseLayout:
    """Encoded arrays -> ([B, width] coordinates, values); weights -> a ``Linear`` model. See the module docstring."""

    def __init__(self, encoder: FeatureEncoder, crosses: Sequence[tuple[str, str]] = ()) -> None:
        if not encoder.fitted:
            raise ValueError("the encoder is not fitted")
        self.encoder = encoder
        self.buckets = int(encoder.hash_buckets)
        if crosses and self.buckets > MAX_CROSS_BUCKETS:
            raise ValueError(f"crosses need hash_buckets <= {MAX_CROSS_BUCKETS}")
        cat_names = [f.name for f in encoder.cat_fields]
        bag_names = [f.name for f in encoder.bag_fields]
        self.crosses = list(crosses)
        self.cross_spec: list[tuple[int, str, int]] = []
        for a, b in self.crosses:
            if b in cat_names:
                self.cross_spec.append((cat_names.index(a), "cat", cat_names.index(b)))
            else:
                self.cross_spec.append((cat_names.index(a), "bag", bag_names.index(b)))
        lay = encoder.layout()
        self.n_cat, self.n_num = int(lay["n_cat"]), int(lay["n_num"])
        self.n_bag, self.bag_len = int(lay["n_bag"]), int(lay["bag_len"])
        self.n_seq, self.seq_len = int(lay["n_seq"]), int(lay["seq_len"])
        self.dense_offset = self.buckets
        self.bias_index = self.buckets + 2 * self.n_num
        self.dim = self.bias_index + 1
        self.width = (self.n_cat + self.n_bag * self.bag_len + self.n_seq * self.seq_len + 2 * self.n_num + 1
                      + sum(1 if kind == "cat" else self.bag_len for _, kind, _ in self.cross_spec))

    def layout(self) -> dict[str, Any]:
        """The ``Linear`` layout: the encoder's, plus the crosses."""
        lay = dict(self.encoder.layout())
        if self.cross_spec:
            lay["crosses"] = [list(c) for c in self.cross_spec]
        return lay

    def sparse(self, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates (int64 [B, width]) and values (float64 [B, width]) of encoded rows."""
        cat = np.asarray(arrays["cat_ids"], dtype=np.int64)
        b = cat.shape[0]
        idx_parts: list[np.ndarray] = [cat]
        val_parts: list[np.ndarray] = [np.ones(cat.shape)]
        pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for kind in ("bag", "seq"):
            if f"{kind}_ids" in arrays:
                ids = np.asarray(arrays[f"{kind}_ids"], dtype=np.int64)
                mask = np.asarray(arrays[f"{kind}_mask"], dtype=np.float64)
                weight = mask / np.maximum(mask.sum(axis=-1, keepdims=True), 1.0)
                pooled[kind] = (ids, weight)
                idx_parts.append(np.where(mask > 0, ids, 0).reshape(b, -1))
                val_parts.append(weight.reshape(b, -1))
        if self.n_num:
            dense = np.asarray(arrays["dense"], dtype=np.float64)
            idx_parts.append(np.broadcast_to(np.arange(self.dense_offset, self.bias_index, dtype=np.int64), dense.shape))
            val_parts.append(dense)
        idx_parts.append(np.full((b, 1), self.bias_index, dtype=np.int64))
        val_parts.append(np.ones((b, 1)))
        for k, (a, kind, j) in enumerate(self.cross_spec):
            if kind == "cat":
                idx_parts.append(cross_rows(cat[:, a : a + 1], cat[:, j : j + 1], k, self.buckets))
                val_parts.append(np.ones((b, 1)))
            else:
                ids, weight = pooled["bag"]
                rows = cross_rows(cat[:, a : a + 1], ids[:, j, :], k, self.buckets)
                idx_parts.append(np.where(weight[:, j, :] > 0, rows, 0))
                val_parts.append(weight[:, j, :])
        return np.concatenate(idx_parts, axis=1), np.concatenate(val_parts, axis=1)

    def to_model(self, weights: np.ndarray) -> Any:
        """A ``Linear`` (kind ftrl) holding `weights` (the learner's dim weights), ready for ``save_artifact``."""
        import torch

        from ranking.models.linear import Linear

        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (self.dim,):
            raise ValueError(f"expected {self.dim} weights, got {w.shape}")
        model = Linear(self.layout())
        with torch.no_grad():
            table = torch.from_numpy(w[: self.buckets].copy())
            table[0] = 0.0
            model.first_order.weight.copy_(table.unsqueeze(1))
            if model.dense_linear is not None:
                model.dense_linear.weight.copy_(torch.from_numpy(w[self.dense_offset : self.bias_index].copy()).unsqueeze(0))
                model.dense_linear.bias.zero_()
            model.bias.fill_(float(w[self.bias_index]))
        return model.eval()

    def describe(self) -> dict[str, Any]:
        return {"dim": self.dim, "width": self.width, "buckets": self.buckets, "crosses": ["*".join(c) for c in self.crosses],
                "feature_set": self.encoder.feature_set}


__all__ = ["SparseLayout", "parse_crosses"]
