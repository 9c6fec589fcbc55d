"""Helpers of the ranking service tests: a real (tiny) numpy model, and a gate to hold the model thread.

`LogisticModel` is an actual scorer -- a logistic regression over a float
matrix -- not a stub: every score is computed from the rows it is given, so a
test can check that each request got *its own* scores back, in order, by
scoring the same rows alone.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class LogisticModel:
    """sigmoid(x @ w + b) on a (rows, d) float matrix, or on {"x": matrix} blocks."""

    def __init__(self, d: int = 4, seed: int = 0, bias: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=d).astype(np.float32)
        self.b = np.float32(bias)

    def __call__(self, rows: Any) -> np.ndarray:
        x = rows["x"] if isinstance(rows, dict) else rows
        z = np.asarray(x, dtype=np.float32) @ self.w + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class Gate:
    """Wraps a score function: records each call's row count; `hold()` makes calls wait until `release()`."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[int] = []
        self.started = threading.Semaphore(0)
        self._open = threading.Event()
        self._open.set()
        self.fail_next = 0

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def __call__(self, rows: Any) -> np.ndarray:
        n = len(rows["x"]) if isinstance(rows, dict) else len(rows)
        self.calls.append(n)
        self.started.release()
        if not self._open.wait(30):
            raise TimeoutError("gate never released")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("model exploded")
        return self.fn(rows)

    async def wait_started(self, count: int = 1) -> None:
        """Wait (off the event loop) until `count` more model calls have started."""
        import asyncio

        for _ in range(count):
            ok = await asyncio.to_thread(self.started.acquire, True, 30)
            assert ok, "model call never started"


def rows(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# ----------------------------------------------------------------------------- artifacts of a tiny real model

import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

DEFS = Path(__file__).resolve().with_name("rank_service_features.py")
FEATURE_SET = "rs_ranker"
MODEL = "rs_model"
TS_MS = 1_767_225_600_000 + 13 * 3600 * 1000  # 2026-01-01 13:00 UTC: the request time every test sends
USERS = (1, 2, 3)  # user 9 has no row
ITEMS = tuple(range(10, 40))  # item 99 has no row
REFS = ("rs_user:age", "rs_user:activity", "rs_item:quality", "rs_item:rating_count_7d", "rs_request:hour")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_artifact(out: Path, *, name: str, version: str, fingerprint: str, seed: int = 0, kind: str = "deepfm",
                   feature_set: str = FEATURE_SET, fmt: str = "cascade.model.v1") -> Path:
    """A model artifact in the registry's contract holding a numpy logistic model over `REFS`.

    ``model.pt`` holds the weights (np.save), ``encoder.json`` the feature refs
    it reads: what :class:`NumpyScorer` loads (the service tests inject its loader).
    """
    out.mkdir(parents=True)
    w = np.random.default_rng(seed).normal(size=len(REFS) + 1).astype(np.float32)
    with (out / "model.pt").open("wb") as fh:
        np.save(fh, w)
    (out / "encoder.json").write_text(json.dumps({"refs": list(REFS)}))
    files = {p.name: _sha(p) for p in sorted(out.iterdir())}
    manifest = {"format": fmt, "name": name, "version": version, "kind": kind,
                "feature_set": {"name": feature_set, "fingerprint": fingerprint},
                "created_at": f"2026-01-01T00:00:{seed % 60:02d}+00:00", "metrics": {"auc": 0.5 + seed / 100},
                "files": files, "inputs": {"x": {"dtype": "float32", "shape": ["batch", len(REFS)]}},
                "backends": ["eager"]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


class NumpyEncoder:
    """OnlineFeatures -> {"x": float32 (rows, len(refs))}: NaN and missing -> 0, counts log1p, hour / 24."""

    def __init__(self, refs: list[str]) -> None:
        self.refs = refs

    def encode_online(self, features: Any) -> dict[str, np.ndarray]:
        cols = []
        for ref in self.refs:
            x = np.asarray(features.column(ref), dtype=np.float64)
            x = np.where(np.isfinite(x), x, 0.0)
            if ref.endswith("rating_count_7d"):
                x = np.log1p(np.maximum(x, 0))
            elif ref.endswith(":age"):
                x = x / 50.0
            elif ref.endswith(":hour"):
                x = x / 24.0
            cols.append(x)
        return {"x": np.stack(cols, axis=1).astype(np.float32)}


class NumpyScorer:
    """The Scorer protocol (encoder, encode, score_encoded, score, warmup) for `write_artifact` models.

    ``fail`` makes scoring raise, ``delay_s`` makes it slow: a model going wrong in production.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        with (self.path / "model.pt").open("rb") as fh:
            self.w = np.load(fh)
        self.encoder = NumpyEncoder(json.loads((self.path / "encoder.json").read_text())["refs"])
        self.fail = False
        self.delay_s = 0.0
        self.warmed: tuple[int, ...] = ()
        self.closed = False

    def encode(self, features: Any) -> dict[str, np.ndarray]:
        return self.encoder.encode_online(features)

    def score_encoded(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        z = arrays["x"] @ self.w[:-1] + self.w[-1]
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def score(self, features: Any) -> np.ndarray:
        return self.score_encoded(self.encode(features))

    def warmup(self, batch_sizes: Any) -> None:
        self.warmed = tuple(batch_sizes)
        for b in batch_sizes:
            self.score_encoded({"x": np.zeros((int(b), len(self.encoder.refs)), dtype=np.float32)})

    def close(self) -> None:
        self.closed = True


class NumpyLoader:
    """The service's loader for `write_artifact` models; remembers every scorer it made, by version."""

    def __init__(self) -> None:
        self.scorers: dict[str, NumpyScorer] = {}
        self.broken: set[str] = set()
        self.delay_s = 0.0  # given to every scorer made from now on

    def __call__(self, path: Path, record: Any) -> NumpyScorer:
        if record.version in self.broken:
            raise RuntimeError(f"cannot load {record.version}")
        scorer = self.scorers[record.version] = NumpyScorer(path)
        scorer.delay_s = self.delay_s
        return scorer
