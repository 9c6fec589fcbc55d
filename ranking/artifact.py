"""Model artifacts: the contract between training (this package) and the ranking service.

An artifact is a directory, immutable once published::

    manifest.json   {"format": "cascade.model.v1", "name", "version", "kind",
                     "feature_set": {"name", "fingerprint"}, "created_at",
                     "metrics": {...}, "files": {relpath: sha256},
                     "inputs": {name: {"dtype", "shape"}}, "outputs": {...},
                     "backends": ["eager", "onnxruntime", ...], "model": {...}}
    model.pt        {"config": {"kind", "layout", "hparams"}, "state_dict": ...}  (torch.save, weights_only-safe)
    encoder.json    the fitted FeatureEncoder (ranking.encoding)
    model.onnx      dynamic batch axis; output "logits" [batch]
    model.int8.onnx optional: ONNX Runtime dynamic INT8 quantisation (backend "onnxruntime-int8")
    model.pt2       optional: AOTInductor package (backend "aotinductor"), built by `cascade rank export`

API
---
* :func:`save_artifact` writes all of it into a temporary sibling directory and
  renames it into place (a reader never sees half an artifact);
* :func:`verify_artifact` checks the format and every file's sha256 and
  returns the :class:`Manifest`, raising :class:`ArtifactError` naming the
  corrupt or missing file;
* :func:`load_scorer` verifies, then returns a :class:`Scorer` on one backend
  (``eager``, ``onnxruntime``, ``onnxruntime-int8``, ``aotinductor``,
  ``tensorrt``) with ``threads`` intra-op threads;
* :func:`add_files` adds a compiled file (``model.pt2``) and its backend to an
  existing artifact (same model, same version: the manifest is rewritten
  atomically).

Scorer
------
``scorer.score(online_features)`` encodes an ``OnlineFeatures`` result (the
feature set the manifest names) and scores it; ``scorer.score_encoded(arrays)``
scores arrays already encoded (what the dynamic batcher merges); both return
float32 probabilities, one per row. ``scorer.encode(online_features)`` is the
encoding step alone. ``warmup(batch_sizes)`` runs each size once (compiled
backends specialise or allocate per shape) and returns the seconds taken.
Scorers are safe to call from one thread at a time per scorer; ONNX Runtime
and eager PyTorch also tolerate concurrent calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ranking.encoding import EncodingError, FeatureEncoder

ARTIFACT_FORMAT = "cascade.model.v1"
MANIFEST = "manifest.json"
MODEL_FILE = "model.pt"
ENCODER_FILE = "encoder.json"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
AOTI_FILE = "model.pt2"
KINDS = ("deepfm", "din", "ftrl")
OUTPUTS = {"logits": {"dtype": "float32", "shape": ["batch"]}}
BACKEND_FILES = {
    "eager": MODEL_FILE,
    "onnxruntime": ONNX_FILE,
    "onnxruntime-int8": ONNX_INT8_FILE,
    "aotinductor": AOTI_FILE,
    "tensorrt": ONNX_FILE,  # the engine is built from the ONNX file on the GPU host and cached there
}
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(Exception):
    """The artifact cannot be used: missing or corrupt file, unknown format, unavailable backend."""


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of an artifact (``path``: where it was read from; not serialised)."""

    name: str
    version: str
    kind: str
    feature_set: dict[str, str]
    created_at: str
    metrics: dict[str, float]
    files: dict[str, str]
    inputs: dict[str, dict[str, Any]]
    backends: list[str]
    outputs: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(OUTPUTS))
    model: dict[str, Any] = field(default_factory=dict)  # {"config": ..., "macs_per_sample": ...}
    format: str = ARTIFACT_FORMAT
    path: Path | None = field(default=None, compare=False)

    @property
    def feature_set_name(self) -> str:
        return self.feature_set["name"]

    @property
    def feature_set_fingerprint(self) -> str:
        return self.feature_set["fingerprint"]

    @property
    def created_at_ms(self) -> int:
        return int(datetime.fromisoformat(self.created_at).timestamp() * 1000)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return {"format": out.pop("format"), **out}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path | None = None) -> Manifest:
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{path or MANIFEST}: the manifest is not a JSON object")
        fmt = data.get("format")
        if fmt != ARTIFACT_FORMAT:
            raise ArtifactError(f"{path or MANIFEST}: format {fmt!r} is not {ARTIFACT_FORMAT!r}")
        required = ("name", "version", "kind", "feature_set", "created_at", "metrics", "files", "inputs", "backends")
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"{path or MANIFEST}: manifest lacks {', '.join(missing)}")
        try:
            return cls(name=str(data["name"]), version=str(data["version"]), kind=str(data["kind"]),
                       feature_set={"name": str(data["feature_set"]["name"]), "fingerprint": str(data["feature_set"]["fingerprint"])},
                       created_at=str(data["created_at"]), metrics={str(k): float(v) for k, v in dict(data["metrics"]).items()},
                       files={str(k): str(v) for k, v in dict(data["files"]).items()},
                       inputs={str(k): dict(v) for k, v in dict(data["inputs"]).items()},
                       backends=[str(b) for b in data["backends"]], outputs=dict(data.get("outputs") or OUTPUTS),
                       model=dict(data.get("model") or {}), format=ARTIFACT_FORMAT, path=path)
        except (TypeError, KeyError, ValueError) as exc:
            raise ArtifactError(f"{path or MANIFEST}: malformed manifest: {exc}") from None


# ----------------------------------------------------------------------------- writing


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_version(kind: str, content_sha256: str, at: datetime | None = None) -> str:
    """``<kind>-<UTC yyyymmddThhmmss>-<8 hex of the model's sha256>``, e.g. ``deepfm-20261128T101500-3f2a9c1d``."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return f"{kind}-{at.strftime('%Y%m%dT%H%M%S')}-{content_sha256[:8]}"


def save_artifact(model: Any, encoder: FeatureEncoder, out_dir: str | os.PathLike[str], *, kind: str,
                  feature_set_name: str, feature_set_fingerprint: str, metrics: Mapping[str, float],
                  version: str | None = None, name: str | None = None, onnx: bool = True, int8: bool = False,
                  aot_inductor: bool = False, overwrite: bool = False) -> Manifest:
    """Write `model` (a ranking ``nn.Module``) and its fitted `encoder` as an artifact directory `out_dir`.

    ``name`` is the logical model name (default: `kind`); ``version`` defaults
    to :func:`new_version`. ``onnx`` exports ``model.onnx`` (checked against
    PyTorch), ``int8`` adds a dynamically quantised copy, ``aot_inductor``
    compiles ``model.pt2`` (tens of seconds). The directory appears atomically;
    an existing `out_dir` is an error unless ``overwrite``.
    """
    import torch

    from ranking.models import model_config

    if kind not in KINDS:
        raise ArtifactError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    if getattr(model, "kind", kind) != kind:
        raise ArtifactError(f"model is a {model.kind!r}, not a {kind!r}")
    if not encoder.fitted:
        raise ArtifactError("the encoder is not fitted")
    if encoder.feature_set != feature_set_name or encoder.fingerprint != feature_set_fingerprint:
        raise ArtifactError(
            f"the encoder was built for feature set {encoder.feature_set!r} ({encoder.fingerprint}), "
            f"not {feature_set_name!r} ({feature_set_fingerprint})")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ArtifactError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        model = model.eval()
        config = model_config(model)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save({"config": config, "state_dict": state}, tmp / MODEL_FILE)
        (tmp / ENCODER_FILE).write_text(encoder.dumps())
        backends = ["eager"]
        checks: dict[str, float] = {}
        if onnx:
            from ranking.export import check_onnx, export_onnx

            export_onnx(model, encoder, tmp / ONNX_FILE)
            checks["onnx_max_abs_diff"] = check_onnx(model, encoder, tmp / ONNX_FILE)
            backends += ["onnxruntime", "tensorrt"]
            if int8:
                from ranking.export import quantize_int8

                quantize_int8(tmp / ONNX_FILE, tmp / ONNX_INT8_FILE)
                backends.append("onnxruntime-int8")
        if aot_inductor:
            from ranking.export import export_aot_inductor

            export_aot_inductor(model, encoder, tmp / AOTI_FILE)
            backends.append("aotinductor")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        created = datetime.now(UTC).replace(microsecond=0)
        version = version or new_version(kind, files[MODEL_FILE], created)
        if not _VERSION_RE.match(version):
            raise ArtifactError(f"version {version!r}: use 1-128 letters, digits, '.', '_' or '-'")
        macs = int(model.macs_per_sample()) if hasattr(model, "macs_per_sample") else None
        manifest = Manifest(
            name=name or kind, version=version, kind=kind,
            feature_set={"name": feature_set_name, "fingerprint": feature_set_fingerprint},
            created_at=created.isoformat(), metrics={k: float(v) for k, v in {**metrics, **checks}.items()},
            files=files, inputs=encoder.input_spec(), backends=_order_backends(backends), outputs=dict(OUTPUTS),
            model={"config": config, "macs_per_sample": macs, "torch": torch.__version__})
        _write_json(tmp / MANIFEST, manifest.to_json())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Manifest.from_json(manifest.to_json(), path=out)


def add_files(artifact_dir: str | os.PathLike[str], files: Mapping[str, str | os.PathLike[str]],
              backends: Iterable[str] = (), metrics: Mapping[str, float] | None = None) -> Manifest:
    """Add files (``{relpath: source path}``, moved in) and backends to a verified artifact; rewrites the manifest atomically."""
    d = Path(artifact_dir)
    manifest = verify_artifact(d)
    new_files = dict(manifest.files)
    for rel, src in files.items():
        if rel == MANIFEST or "/" in rel or rel.startswith("."):
            raise ArtifactError(f"cannot add a file named {rel!r}")
        target = d / rel
        if Path(src).resolve() != target.resolve():
            os.replace(src, target)
        new_files[rel] = sha256_file(target)
    data = manifest.to_json()
    data["files"] = new_files
    data["backends"] = _order_backends([*manifest.backends, *backends])
    if metrics:
        data["metrics"] = {**manifest.metrics, **{k: float(v) for k, v in metrics.items()}}
    _write_json(d / MANIFEST, data)
    return verify_artifact(d)


def _order_backends(names: Iterable[str]) -> list[str]:
    order = list(BACKEND_FILES)
    uniq = list(dict.fromkeys(names))
    return sorted(uniq, key=lambda b: order.index(b) if b in order else len(order))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- reading


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest alone (no file checks)."""
    d = Path(artifact_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise ArtifactError(f"{d}: not an artifact directory (it does not exist)")
    if not path.is_file():
        raise ArtifactError(f"{d}: missing {MANIFEST}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from None
    return Manifest.from_json(data, path=d)


def verify_artifact(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """The manifest, after checking the format, the kind and every listed file's sha256."""
    d = Path(artifact_dir)
    manifest = read_manifest(d)
    if manifest.kind not in KINDS:
        raise ArtifactError(f"{d}: unknown model kind {manifest.kind!r}")
    for required in (MODEL_FILE, ENCODER_FILE):
        if required not in manifest.files:
            raise ArtifactError(f"{d}: the manifest lists no {required}")
    for rel, digest in manifest.files.items():
        p = d / rel
        if not p.is_file():
            raise ArtifactError(f"{d}: missing file {rel} (listed in the manifest)")
        actual = sha256_file(p)
        if actual != digest:
            raise ArtifactError(f"{d}: corrupt file {rel}: sha256 {actual[:12]}… does not match the manifest's {digest[:12]}…")
    for b in manifest.backends:
        f = BACKEND_FILES.get(b)
        if f is not None and f not in manifest.files:
            raise ArtifactError(f"{d}: backend {b!r} is listed but {f} is not")
    return manifest


def load_encoder(artifact_dir: str | os.PathLike[str]) -> FeatureEncoder:
    try:
        return FeatureEncoder.from_json(json.loads((Path(artifact_dir) / ENCODER_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{artifact_dir}: unreadable {ENCODER_FILE}: {exc}") from None


def load_model(artifact_dir: str | os.PathLike[str]) -> Any:
    """The PyTorch model of an artifact, in eval mode (CPU)."""
    import torch

    from ranking.models import from_config

    try:
        blob = torch.load(Path(artifact_dir) / MODEL_FILE, map_location="cpu", weights_only=True)
        model = from_config(blob["config"])
        model.load_state_dict(blob["state_dict"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{artifact_dir}: cannot load {MODEL_FILE}: {exc}") from None
    return model.eval()


class Scorer:
    """An artifact's encoder plus one backend: see the module docstring."""

    def __init__(self, manifest: Manifest, encoder: FeatureEncoder, backend: Any) -> None:
        self.manifest = manifest
        self.encoder = encoder
        self.backend = backend
        self.backend_name: str = backend.name
        self.threads: int = backend.threads
        self._names = tuple(manifest.inputs)
        self._dtypes = {n: np.dtype(s["dtype"]) for n, s in manifest.inputs.items()}
        self._trailing = {n: tuple(int(x) for x in s["shape"][1:]) for n, s in manifest.inputs.items()}

    def __repr__(self) -> str:
        return f"<Scorer {self.manifest.name}/{self.manifest.version} on {self.backend_name} ({self.threads} threads)>"

    def encode(self, features: Any) -> dict[str, np.ndarray]:
        """Model inputs of an ``OnlineFeatures`` result (see :meth:`FeatureEncoder.encode_online`)."""
        fs = getattr(features, "feature_set", None)
        if fs is not None and fs != self.manifest.feature_set_name:
            raise EncodingError(f"features were read for feature set {fs!r}; the model reads {self.manifest.feature_set_name!r}")
        return self.encoder.encode_online(features)

    def score(self, features: Any) -> np.ndarray:
        """float32 probabilities, one per row of an ``OnlineFeatures`` result."""
        return self.score_encoded(self.encode(features))

    def logits(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = self._check(arrays)
        n = next(iter(inputs.values())).shape[0]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        step = int(getattr(self.backend, "max_batch", 0) or 0)
        if step and n > step:
            parts = [self.backend.run({k: v[i:i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
            return np.concatenate(parts).astype(np.float32, copy=False)
        return np.asarray(self.backend.run(inputs), dtype=np.float32).reshape(n)

    def score_encoded(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """float32 probabilities of encoded inputs (``dict`` of :data:`ranking.encoding.INPUT_NAMES` arrays)."""
        z = self.logits(arrays)
        return _sigmoid(z)

    def warmup(self, batch_sizes: Sequence[int] = (1, 32, 256, 1024)) -> dict[int, float]:
        """Score random inputs once per batch size; returns ``{batch: seconds}``."""
        out: dict[int, float] = {}
        for b in batch_sizes:
            arrays = self.encoder.dummy(int(b), seed=int(b))
            t = time.perf_counter()
            self.score_encoded(arrays)
            out[int(b)] = time.perf_counter() - t
        return out

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _check(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._names if n not in arrays]
        if missing:
            raise EncodingError(f"inputs lack {', '.join(missing)} (the model reads {', '.join(self._names)})")
        out: dict[str, np.ndarray] = {}
        n: int | None = None
        for name in self._names:
            a = np.ascontiguousarray(arrays[name], dtype=self._dtypes[name])
            if a.shape[1:] != self._trailing[name]:
                raise EncodingError(f"input {name!r} has shape {a.shape}; the model expects (batch, {', '.join(map(str, self._trailing[name]))})")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise EncodingError(f"input {name!r} has {a.shape[0]} rows, others {n}")
            out[name] = a
        return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def load_scorer(artifact_dir: str | os.PathLike[str], backend: str = "onnxruntime", threads: int = 1, *,
                verify: bool = True, **options: Any) -> Scorer:
    """A :class:`Scorer` for an artifact on `backend` (verified first unless ``verify=False``).

    Raises :class:`ArtifactError` for a bad artifact or a backend the artifact
    does not carry, and ``ranking.backends.BackendUnavailable`` (an
    ArtifactError) when the backend's runtime is not installed or has no device.
    """
    from ranking.backends import load_backend

    d = Path(artifact_dir)
    manifest = verify_artifact(d) if verify else read_manifest(d)
    if backend not in manifest.backends:
        raise ArtifactError(f"{d}: backend {backend!r} not available in this artifact (it has {', '.join(manifest.backends)})")
    encoder = load_encoder(d)
    if encoder.feature_set != manifest.feature_set_name or encoder.fingerprint != manifest.feature_set_fingerprint:
        raise ArtifactError(f"{d}: encoder.json is for feature set {encoder.feature_set!r}/{encoder.fingerprint}, "
                            f"the manifest says {manifest.feature_set_name!r}/{manifest.feature_set_fingerprint}")
    return Scorer(manifest, encoder, load_backend(backend, d, manifest, int(threads), **options))


__all__ = ["AOTI_FILE", "ARTIFACT_FORMAT", "ENCODER_FILE", "KINDS", "MANIFEST", "MODEL_FILE", "ONNX_FILE",
           "ONNX_INT8_FILE", "ArtifactError", "Manifest", "Scorer", "add_files", "load_encoder", "load_model",
           "load_scorer", "new_version", "read_manifest", "save_artifact", "sha256_file", "verify_artifact"]
