"""Stacking the FTRL learner on a batch model (``streaming.trainer_base_model``): the base, its logits, the layout.

With a base model (a ranking model name in the registry, e.g. ``deepfm``) the
trainer learns a correction of that model instead of a model of its own::

    logit = b + w_b * b + sum_i w_i x_i          b = the base model's logit of the row

``b`` is an offset (so with every FTRL weight zero the prediction is the base
model's) and one more input coordinate whose FTRL weight ``w_b`` may rescale
it; the gradient is that of the full logit (:meth:`streaming.ftrl.FTRLProximal.learn_many`
with ``offset``), and progressive validation scores the full prediction.

Why these choices:

* The base's live artifact is loaded when the trainer starts (its version is
  then kept for the trainer's life, and a restarted trainer loads the version
  its checkpoint was learned on, live or not: a correction is only right for
  the model it corrected). A newer base version going live is logged as a
  warning, not followed: following it would mean a new model (a new checkpoint
  directory); see :class:`BaseModel`.
* The trainer encodes with the base artifact's own encoder (not re-bucketed to
  ``2**hash_bits``): the served graph feeds one set of encoded inputs to both
  the base and the linear part, so both must read the same hashed rows. The
  FTRL table then has the base's ``hash_buckets`` rows.
* Base logits come from the artifact's fp32 ONNX graph on ONNX Runtime (one
  intra-op thread, vectorised per batch), eager PyTorch when it has none --
  not the INT8 copy: the published graph holds the fp32 base, and the
  trainer's predictions must be what ranking will serve.
* The published version is :class:`ranking.models.stacked.Stacked` (kind
  ``ftrl``), base weights included, so ranking serves it like any version;
  its manifest names the base (``model.streaming.base_model``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ranking.encoding import FeatureEncoder
from streaming.hashing import SparseLayout

_log = logging.getLogger("cascade.streaming.trainer")


class BaseModelError(RuntimeError):
    """The base model cannot be stacked on: not in the registry, another feature set, another encoder."""


@dataclass
class BaseModel:
    """One version of the base model: its registry record, scorer (logits), PyTorch module and encoder."""

    name: str
    version: str
    kind: str
    path: Path
    scorer: Any
    module: Any
    encoder: FeatureEncoder

    def describe(self) -> dict[str, Any]:
        """What every published manifest and the checkpoint record about the base."""
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "feature_set": self.encoder.feature_set, "fingerprint": self.encoder.fingerprint,
                "encoder_digest": self.encoder.digest(), "backend": self.scorer.backend_name}

    def logits(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The base model's logits (float64 [B]) of rows encoded with its encoder."""
        return np.asarray(self.scorer.logits(arrays), dtype=np.float64)

    def close(self) -> None:
        self.scorer.close()


def load_base(registry: Any, name: str, *, feature_set: str, fingerprint: str, version: str | None = None) -> BaseModel:
    """The base model `name` (its live version, or `version`), checked to read `feature_set` as resolved now."""
    from ranking.artifact import ArtifactError, load_model, load_scorer, read_manifest

    try:
        rec = registry.version(version, name) if version else registry.live(name)
    except Exception as exc:  # noqa: BLE001 - UnknownModel / UnknownVersion / unreadable state
        raise BaseModelError(f"base model {name!r}{f' version {version!r}' if version else ''} is not in the "
                             f"registry: {exc}") from None
    if rec is None:
        raise BaseModelError(f"base model {name!r} has no live version in the registry")
    if not rec.servable or not rec.path:
        raise BaseModelError(f"base model {name}/{rec.version} is {rec.status}, not servable")
    if rec.feature_set != feature_set or rec.feature_set_fingerprint != fingerprint:
        raise BaseModelError(
            f"base model {name}/{rec.version} reads feature set {rec.feature_set!r} (fingerprint "
            f"{rec.feature_set_fingerprint[:12]}...), the trainer reads {feature_set!r} (fingerprint {fingerprint[:12]}...): "
            "stacking needs the same feature set (set streaming.feature_set, or retrain the base)")
    path = Path(rec.path)
    try:
        backends = read_manifest(path).backends
        backend = "onnxruntime" if "onnxruntime" in backends else "eager"
        scorer = load_scorer(path, backend, 1, verify=True)
        module = load_model(path)
    except ArtifactError as exc:
        raise BaseModelError(f"base model {name}/{rec.version}: {exc}") from None
    enc = scorer.encoder
    if enc.feature_set != feature_set or enc.fingerprint != fingerprint:  # (the registry checked the manifest's)
        scorer.close()
        raise BaseModelError(f"base model {name}/{rec.version}: its encoder is for {enc.feature_set!r} "
                             f"({enc.fingerprint[:12]}...), not {feature_set!r} ({fingerprint[:12]}...)")
    return BaseModel(name=name, version=rec.version, kind=rec.kind, path=path, scorer=scorer, module=module, encoder=enc)


class StackedLayout:
    """The plain :class:`~streaming.hashing.SparseLayout` plus one coordinate, the base logit; publishes a ``Stacked``.

    Coordinates: the plain layout's ``[0, plain.dim)``, then ``base_index =
    plain.dim`` holding the base logit (its weight is ``w_b``).
    """

    def __init__(self, plain: SparseLayout, base: BaseModel) -> None:
        if plain.encoder.digest() != base.encoder.digest():
            raise BaseModelError(f"the trainer's encoder ({plain.encoder.feature_set!r}, {plain.buckets} rows, digest "
                                 f"{plain.encoder.digest()[:12]}...) is not the encoder of base model {base.name}/"
                                 f"{base.version} ({base.encoder.hash_buckets} rows, digest {base.encoder.digest()[:12]}...)")
        self.plain = plain
        self.base = base
        self.encoder = plain.encoder
        self.crosses = plain.crosses
        self.buckets = plain.buckets
        self.base_index = plain.dim
        self.dim = plain.dim + 1
        self.width = plain.width + 1

    def layout(self) -> dict[str, Any]:
        return self.plain.layout()

    def sparse(self, arrays: Mapping[str, np.ndarray], base_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The plain coordinates of encoded rows, plus the base-logit coordinate with the logit as its value."""
        idx, val = self.plain.sparse(arrays)
        b = idx.shape[0]
        idx = np.concatenate([idx, np.full((b, 1), self.base_index, dtype=np.int64)], axis=1)
        val = np.concatenate([val, np.asarray(base_logits, dtype=np.float64).reshape(b, 1)], axis=1)
        return idx, val

    def to_model(self, weights: np.ndarray) -> Any:
        """A :class:`~ranking.models.stacked.Stacked` (kind ftrl): the base module and the learner's `weights`."""
        import torch

        from ranking.models.stacked import Stacked

        w = np.asarray(weights)
        if w.shape != (self.dim,):
            raise ValueError(f"expected {self.dim} weights, got {w.shape}")
        linear = self.plain.to_model(w[: self.base_index])
        model = Stacked(linear.layout, base=self.base.module)
        with torch.no_grad():
            model.linear.load_state_dict(linear.state_dict())
            model.base_weight.fill_(float(w[self.base_index]))
        return model.eval()

    def describe(self) -> dict[str, Any]:
        return {**self.plain.describe(), "dim": self.dim, "width": self.width,
                "base_model": f"{self.base.name}/{self.base.version}"}


__all__ = ["BaseModel", "BaseModelError", "StackedLayout", "load_base"]
