"""Publishing the learner as a servable model version (kind ``ftrl``) for ranking to hot-swap.

A version is written straight into its final place in the registry
(``<registry>/<model name>/<version>``) by :func:`ranking.artifact.save_artifact`
(a temporary sibling renamed into place), then registered with
``auto_promote=True`` (:meth:`ranking.registry.ModelRegistry.publish` verifies
every file's sha256 and the feature set's fingerprint, then moves the live
pointer unless promotion is suspended by a pin). Replicas polling the
registry (:mod:`ranking.live`) load, warm and swap it without a failed request.

What a version records, so freshness is measured rather than guessed:

* ``metrics`` (numbers; in the registry's version record too):
  ``newest_click_ms`` (the latest ``click_timestamp_ms`` among the positives
  it learned), ``samples_learned``, ``positives_learned``,
  ``published_at_ms`` and the progressive-validation figures;
* ``model.streaming`` in the manifest (free-form; the manifest itself is not a
  hashed file): the newest click's ``sample_id``, and ``offsets`` -- the next
  offset per partition of the samples topic, i.e. exactly which samples the
  version includes (a sample at (partition, offset) is in it iff
  ``offset < offsets[partition]``, whatever the order clicks arrived in);
  a stacked version (:mod:`streaming.trainer_stacking`) also names its base
  there, ``base_model``: name, version, kind, feature set, encoder digest.

The layout turns the learner's weights into the module saved: a
:class:`~streaming.hashing.SparseLayout` gives a ``Linear``, a
:class:`~streaming.trainer_stacking.StackedLayout` a ``Stacked`` (the base
model's weights and the linear correction); both are kind ``ftrl``.

Versions are named ``ftrl-<UTC yyyymmddThhmmssmmm>-n<samples learned>``. Older
versions beyond ``streaming.keep_versions`` are pruned, except the live one, a
split's, and the ``keep_versions`` most recent rollback targets (every
published version is promoted, so without that bound every one would stay a
protected rollback target).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ranking.artifact import MANIFEST, save_artifact
from streaming.hashing import SparseLayout
from streaming.trainer_stacking import StackedLayout

_log = logging.getLogger("cascade.streaming.publish")

KIND = "ftrl"


def version_name(samples_learned: int, at: datetime | None = None) -> str:
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return f"{KIND}-{at:%Y%m%dT%H%M%S}{at.microsecond // 1000:03d}-n{int(samples_learned)}"


def _annotate(artifact_dir: Path, info: Mapping[str, Any]) -> None:
    """Add ``model.streaming`` to the manifest (temp file + fsync + rename; the manifest is not a hashed file)."""
    path = artifact_dir / MANIFEST
    data = json.loads(path.read_text())
    data.setdefault("model", {})["streaming"] = dict(info)
    tmp = path.with_name(f".{MANIFEST}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=1) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Publisher:
    """Builds and registers versions of one model name; see the module docstring."""

    def __init__(self, registry: Any, layout: SparseLayout | StackedLayout, *, name: str, fingerprint: str, onnx: bool = False,
                 keep_versions: int = 20) -> None:
        self.registry = registry
        self.layout = layout
        self.name = name
        self.fingerprint = fingerprint
        self.onnx = onnx
        self.keep_versions = int(keep_versions)

    def clean_partial(self) -> None:
        """Remove what a killed trainer left in its model's registry directory: half-written or unregistered artifacts."""
        from ranking.registry import UnknownModel

        d = self.registry.model_dir(self.name)
        if not d.is_dir():
            return
        for p in d.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        try:
            known = set(self.registry.state(self.name).versions)
        except UnknownModel:
            known = set()
        for p in d.glob(f"{KIND}-*"):
            if p.is_dir() and p.name not in known:
                shutil.rmtree(p, ignore_errors=True)

    def publish(self, weights: np.ndarray, metrics: Mapping[str, float], info: Mapping[str, Any]) -> str:
        """Write, register and promote a version holding `weights`; returns the version id."""
        t0 = time.perf_counter()
        version = version_name(int(metrics.get("samples_learned", 0)))
        dest = self.registry.artifact_path(version, self.name)
        model = self.layout.to_model(weights)
        now_ms = int(time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(float(v))}
        save_artifact(model, self.layout.encoder, dest, kind=KIND, feature_set_name=self.layout.encoder.feature_set,
                      feature_set_fingerprint=self.fingerprint, metrics={**finite, "published_at_ms": float(now_ms)},
                      version=version, name=self.name, onnx=self.onnx)
        try:
            _annotate(dest, {**info, "crosses": ["*".join(c) for c in self.layout.crosses], "dim": self.layout.dim})
            self.registry.publish(dest, auto_promote=True, reason="streaming trainer")
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if self.keep_versions > 0:
            with contextlib.suppress(Exception):
                self.registry.prune(self.keep_versions, self.name, keep_previous=self.keep_versions)
        _log.info("published %s/%s in %.3fs", self.name, version, time.perf_counter() - t0,
                  extra={"model": self.name, "version": version})
        return version


__all__ = ["KIND", "Publisher", "version_name"]
