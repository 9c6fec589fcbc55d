"""`QueryEncoder`: the user tower at request time, in numpy (no torch in serving).

It computes exactly what ``TwoTowerModel.user_vectors`` computes (the tests hold
them equal within 1e-5) from a user's online features:

    pooled = sum_p w_p * E[item_p] / sum_p w_p       (recent items, most recent first; w_p = exp(a_p))
    x      = [pooled, U[feature_1 bucket], ..., U[feature_F bucket]]
    q      = W_2 relu(W_1 x + b_1) + b_2             (then L2-normalised when the model is)

Files (``save``/``load``, one directory): ``encoder.json`` (the tower spec, sizes,
buckets), ``weights.npz`` (position logits, user-feature table, MLP),
``item_ids.npy`` (sorted item ids; id ``item_ids[r-1]`` is row r, row 0 = unknown)
and ``item_table.npy`` (the id embeddings, memory-mapped on load).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recall.ids import dense_slots, lookup_slots
from recall.embedding.spec import TowerSpec, user_feature_rows

CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "weights.npz"
ITEM_IDS_FILE = "item_ids.npy"
ITEM_TABLE_FILE = "item_table.npy"


class QueryEncoder:
    """User query vectors from ``{"view:feature": value}`` plus the recent items (most recent first)."""

    def __init__(self, spec: TowerSpec, *, buckets: int, history_len: int, normalize: bool,
                 item_ids: np.ndarray, item_table: np.ndarray, position_logits: np.ndarray,
                 user_table: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.spec = spec
        self.buckets = int(buckets)
        self.history_len = int(history_len)
        self.normalize = bool(normalize)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        if self.item_ids.size and np.any(np.diff(self.item_ids) <= 0):
            raise ValueError("item_ids must be sorted and unique")
        self._slot = dense_slots(self.item_ids)  # id -> row - 1 without a binary search (dense ids)
        self.item_table = item_table
        self.position_weights = np.exp(np.asarray(position_logits, dtype=np.float64)).astype(np.float32)
        self.position_logits = np.asarray(position_logits, dtype=np.float32)
        self.user_table = np.asarray(user_table, dtype=np.float32)
        # Stored transposed (in, out) so a row batch is one matmul.
        self.layers = [(np.ascontiguousarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in layers]
        self.dim = int(self.layers[-1][0].shape[1])

    # -------------------------------------------------------------- inputs
    @property
    def required_features(self) -> tuple[str, ...]:
        """The online features a query needs: the profile refs, then the recent-items list."""
        return self.spec.online_features

    @property
    def history_feature(self) -> str:
        return self.spec.history_feature

    def item_rows(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        """Embedding rows of item ids (0 for an id the model does not know)."""
        ids = np.asarray(items, dtype=np.int64).reshape(-1)
        if ids.size == 0 or self.item_ids.size == 0:
            return np.zeros(ids.shape, dtype=np.int64)
        if self._slot is not None:
            return lookup_slots(self._slot, ids) + 1
        pos = np.searchsorted(self.item_ids, ids)
        pos_c = np.minimum(pos, self.item_ids.size - 1)
        return np.where(self.item_ids[pos_c] == ids, pos_c + 1, 0).astype(np.int64)

    def history_rows(self, histories: Sequence[Sequence[int] | None]) -> np.ndarray:
        """(n, history_len) rows of each user's most recent items (0 = padding or unknown)."""
        out = np.zeros((len(histories), self.history_len), dtype=np.int64)
        for i, h in enumerate(histories):
            if h is None or len(h) == 0:
                continue
            ids = np.asarray(h, dtype=np.int64)[: self.history_len]
            out[i, : ids.size] = self.item_rows(ids)
        return out

    # ------------------------------------------------------------- encoding
    def encode(self, user_features: Mapping[str, Any] | None = None, recent_items: Sequence[int] | None = None) -> np.ndarray:
        """One query vector (dim,) float32. `recent_items` defaults to ``user_features[history_feature]``."""
        feats = user_features or {}
        if recent_items is None:
            recent_items = feats.get(self.spec.history_feature)
        return self.encode_batch([feats], [recent_items])[0]

    def encode_batch(self, user_features: Sequence[Mapping[str, Any]],
                     histories: Sequence[Sequence[int] | None] | None = None) -> np.ndarray:
        """(n, dim) float32 query vectors; `histories` default to each row's history feature."""
        if histories is None:
            histories = [row.get(self.spec.history_feature) for row in user_features]
        if len(histories) != len(user_features):
            raise ValueError("one history per user-feature row")
        return self.encode_rows(user_feature_rows(self.spec.user_features, user_features, self.buckets),
                                self.history_rows(histories))

    def encode_rows(self, feature_rows: np.ndarray, history_rows: np.ndarray) -> np.ndarray:
        """The tower on prepared rows: (n, F) user-table rows and (n, history_len) item rows."""
        n = history_rows.shape[0]
        emb = np.asarray(self.item_table[history_rows.reshape(-1)], dtype=np.float32).reshape(n, self.history_len, -1)
        w = self.position_weights[None, :] * (history_rows > 0)
        denom = np.maximum(w.sum(axis=1, keepdims=True), 1e-6)
        pooled = np.einsum("nl,nld->nd", w, emb) / denom
        parts = [pooled.astype(np.float32)]
        if feature_rows.shape[1]:
            parts.append(self.user_table[feature_rows].reshape(n, -1))
        h = np.concatenate(parts, axis=1)
        for i, (w_t, b) in enumerate(self.layers):
            h = h @ w_t + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        if self.normalize:
            h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(h, dtype=np.float32)

    # ------------------------------------------------------------ save/load
    def save(self, directory: str | Path) -> list[Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        config = {"format": 1, "spec": self.spec.to_dict(), "buckets": self.buckets, "history_len": self.history_len,
                  "normalize": self.normalize, "dim": self.dim, "n_layers": len(self.layers),
                  "n_items": int(self.item_ids.size)}
        (d / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        arrays = {"position_logits": self.position_logits, "user_table": self.user_table}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = w, b
        with open(d / WEIGHTS_FILE, "wb") as fh:
            np.savez(fh, **arrays)
        np.save(d / ITEM_IDS_FILE, self.item_ids)
        np.save(d / ITEM_TABLE_FILE, np.ascontiguousarray(self.item_table, dtype=np.float32))
        return [d / CONFIG_FILE, d / WEIGHTS_FILE, d / ITEM_IDS_FILE, d / ITEM_TABLE_FILE]

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> QueryEncoder:
        d = Path(directory)
        config = json.loads((d / CONFIG_FILE).read_text())
        with np.load(d / WEIGHTS_FILE, allow_pickle=False) as z:
            layers = [(z[f"w{i}"], z[f"b{i}"]) for i in range(int(config["n_layers"]))]
            position_logits, user_table = z["position_logits"], z["user_table"]
        return cls(
            TowerSpec.from_dict(config["spec"]), buckets=config["buckets"], history_len=config["history_len"],
            normalize=config["normalize"], item_ids=np.load(d / ITEM_IDS_FILE, allow_pickle=False),
            item_table=np.load(d / ITEM_TABLE_FILE, mmap_mode="r" if mmap else None, allow_pickle=False),
            position_logits=position_logits, user_table=user_table, layers=layers,
        )

    def __repr__(self) -> str:
        return (f"<QueryEncoder {self.spec.dataset} dim={self.dim} items={self.item_ids.size} "
                f"history={self.history_len} features={len(self.spec.user_features)}>")


__all__ = ["QueryEncoder"]
