"""Versioned recall artifacts (index + user tower), checksummed, and `LiveIndex`, which hot-swaps them.

Layout, under ``config.paths.artifacts_dir / config.recall.artifacts_subdir / <name>``
(`artifacts_root`; the name is the dataset by default: ``movielens``, ``synthetic``)::

    CURRENT                          the version being served (one line; replaced atomically)
    20261128T081500123456Z-3fa2c1/   one immutable version
        manifest.json                version, created_at, build params, metrics, sha256 + size of every file
        index/index.faiss            the FAISS index            (recall.index.ItemIndex)
        index/ids.npy                row -> item id
        index/index.json             index parameters
        encoder/encoder.json         tower spec: which online features the query reads (recall.embedding.query)
        encoder/weights.npz          user-tower weights
        encoder/item_ids.npy         item id -> history embedding row
        encoder/item_table.npy       history embeddings (memory-mapped)

A version is written under a hidden temporary name and renamed into place when
complete, then ``CURRENT`` is pointed at it; readers never see half a version.
Version ids sort by creation time.

`load_artifact` verifies every file against the manifest's sha256 (a corrupt or
truncated artifact raises `ArtifactError`). `LiveIndex` holds the artifact being
served; `load_in_background` loads and verifies a new version in a worker thread
and swaps it in with one reference assignment: a search that already took
``live.current`` finishes on the old version, the next one sees the new one, and
a refused version leaves the old one serving. `start_watching` polls ``CURRENT``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recall.embedding.query import QueryEncoder
from recall.index import IndexParams, ItemIndex

log = logging.getLogger("cascade.recall.artifacts")

FORMAT = 1
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
INDEX_DIR = "index"
ENCODER_DIR = "encoder"
_TMP_PREFIX = ".tmp-"
_HASH_CHUNK = 4 << 20


class ArtifactError(RuntimeError):
    """An artifact that must not be served: missing, incomplete, corrupt (checksum) or of an unknown format."""


class NoIndexLoaded(RuntimeError):
    """`LiveIndex.current` before any version was loaded."""


def artifacts_root(config: Any = None, name: str = "movielens") -> Path:
    """``<artifacts_dir>/<recall.artifacts_subdir>/<name>``."""
    if config is None:
        from cascade.config import get_config

        config = get_config()
    return Path(config.paths.artifacts_dir) / config.recall.artifacts_subdir / name


# ----------------------------------------------------------------------------- the artifact


@dataclass(frozen=True)
class RecallArtifact:
    """One loaded version: the index and the query encoder that belong together."""

    version: str
    path: Path
    manifest: Mapping[str, Any]
    index: ItemIndex
    encoder: QueryEncoder

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def build(self) -> Mapping[str, Any]:
        return self.manifest.get("build", {})

    @property
    def required_features(self) -> tuple[str, ...]:
        """Online user features the query vector reads (profile refs, then the recent-items list)."""
        return self.encoder.required_features

    def query_vector(self, user_features: Mapping[str, Any] | None, recent_items: Sequence[int] | None = None) -> np.ndarray:
        return self.encoder.encode(user_features, recent_items)

    def recall(self, user_features: Mapping[str, Any] | None, recent_items: Sequence[int] | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) for one user, -1 padding removed. Blocking (FAISS)."""
        return self.search(self.query_vector(user_features, recent_items), k)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) for one query vector, -1 padding removed. Blocking (FAISS releases the GIL)."""
        ids, scores = self.index.search(vector[None, :], k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]


def new_version_id(now: datetime | None = None) -> str:
    """Sortable by creation time, unique: ``YYYYmmddTHHMMSSffffffZ-<6 hex>``."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{at:%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:6]}"


def _sha256(path: Path, bar: Any = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest()


def _files_of(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _checksums(directory: Path, progress: bool, desc: str) -> dict[str, dict[str, Any]]:
    from tqdm import tqdm

    files = _files_of(directory)
    total = sum(p.stat().st_size for p in files)
    out: dict[str, dict[str, Any]] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress) as bar:
        for p in files:
            out[p.relative_to(directory).as_posix()] = {"sha256": _sha256(p, bar), "bytes": p.stat().st_size}
    return out


def write_artifact(root: str | Path, index: ItemIndex, encoder: QueryEncoder, *, build: Mapping[str, Any] | None = None,
                   metrics: Mapping[str, Any] | None = None, activate: bool = True, keep: int | None = None,
                   progress: bool = False, version: str | None = None) -> Path:
    """Write a new version under `root` (atomically), point CURRENT at it unless not `activate`; returns its path.

    `keep`: afterwards remove all but the newest `keep` versions (never CURRENT).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version_id()
    final = root / version
    if final.exists():
        raise ArtifactError(f"version {version} already exists in {root}")
    tmp = root / f"{_TMP_PREFIX}{version}"
    try:
        index.save(tmp / INDEX_DIR)
        encoder.save(tmp / ENCODER_DIR)
        manifest = {
            "format": FORMAT,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": encoder.spec.dataset,
            "index": {"kind": index.kind, "metric": index.metric, "dim": index.dim, "items": len(index),
                      "params": index.params.to_dict(), "effective": index.info.effective,
                      "build_s": round(index.info.build_s, 3),
                      "bytes": sum(f.stat().st_size for f in (tmp / INDEX_DIR).iterdir() if f.is_file())},
            "query": {"required_features": list(encoder.required_features), "history_len": encoder.history_len,
                      "normalize": encoder.normalize, "dim": encoder.dim},
            "build": dict(build or {}),
            "metrics": dict(metrics or {}),
            "files": _checksums(tmp, progress, f"checksums {version}"),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if activate:
        set_current(root, version)
    if keep:
        prune(root, keep)
    return final


def list_versions(root: str | Path) -> list[str]:
    """Complete versions under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())


def current_version(root: str | Path) -> str | None:
    """The version CURRENT names, or None."""
    try:
        text = (Path(root) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def set_current(root: str | Path, version: str) -> None:
    """Point CURRENT at `version` (which must exist), atomically. Watching `LiveIndex`es pick it up."""
    root = Path(root)
    if not (root / version / MANIFEST_FILE).is_file():
        raise ArtifactError(f"no complete version {version!r} in {root}")
    tmp = root / f".{CURRENT_FILE}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT_FILE)


def prune(root: str | Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` versions, never the current one; returns the removed versions."""
    root = Path(root)
    versions = list_versions(root)
    current = current_version(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for v in doomed:
        shutil.rmtree(root / v, ignore_errors=True)
    return doomed


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no {MANIFEST_FILE} (not an artifact, or incomplete)") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{path}: manifest of an unknown format (expected format {FORMAT})")
    return manifest


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's size and sha256; raises `ArtifactError`."""
    path = Path(path)
    manifest = read_manifest(path)
    for rel, want in manifest["files"].items():
        f = path / rel
        if not f.is_file():
            raise ArtifactError(f"{path}: missing file {rel}")
        if f.stat().st_size != want.get("bytes"):
            raise ArtifactError(f"{path}: {rel} has {f.stat().st_size} bytes, the manifest says {want.get('bytes')}")
        if _sha256(f) != want.get("sha256"):
            raise ArtifactError(f"{path}: checksum mismatch for {rel} (corrupt artifact)")
    for required in (f"{INDEX_DIR}/index.faiss", f"{ENCODER_DIR}/encoder.json"):
        if required not in manifest["files"]:
            raise ArtifactError(f"{path}: manifest lists no {required}")
    return manifest


def load_artifact(path: str | Path, *, verify: bool = True) -> RecallArtifact:
    """Load one version directory (checksums verified first unless `verify=False`)."""
    path = Path(path)
    manifest = verify_artifact(path) if verify else read_manifest(path)
    try:
        index = ItemIndex.load(path / INDEX_DIR)
        encoder = QueryEncoder.load(path / ENCODER_DIR)
    except Exception as exc:  # noqa: BLE001 - any failure to load means: refuse this version
        raise ArtifactError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from exc
    if index.dim != encoder.dim:
        raise ArtifactError(f"{path}: index dimension {index.dim} != query encoder dimension {encoder.dim}")
    return RecallArtifact(manifest.get("version", path.name), path, manifest, index, encoder)


# ----------------------------------------------------------------------------- live swapping


Listener = Callable[[RecallArtifact, RecallArtifact | None], None]


class LiveIndex:
    """The recall artifact being served, replaced atomically by newer versions (see the module docstring).

    Readers take ``art = live.current`` once per request and use ``art.encoder``
    and ``art.index`` together (they always come from the same version).
    """

    def __init__(self, root: str | Path, *, verify: bool = True) -> None:
        self.root = Path(root)
        self.verify = verify
        self._current: RecallArtifact | None = None
        self._lock = threading.Lock()  # serialises loads and swaps, never readers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._listeners: list[Listener] = []
        self._refused: set[str] = set()
        self._pending: concurrent.futures.Future[RecallArtifact] | None = None
        self.last_error: BaseException | None = None
        self.swaps = 0

    @classmethod
    def from_config(cls, config: Any = None, name: str = "movielens", *, load: bool = True, verify: bool = True) -> LiveIndex:
        """The live index of artifact set `name`; with `load`, the CURRENT version is loaded now (if any)."""
        live = cls(artifacts_root(config, name), verify=verify)
        if load and current_version(live.root) is not None:
            live.load()
        return live

    # -------------------------------------------------------------- reading
    @property
    def current(self) -> RecallArtifact:
        art = self._current
        if art is None:
            raise NoIndexLoaded(f"no recall index loaded from {self.root} (run `cascade recall build`)")
        return art

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str | None:
        art = self._current
        return art.version if art is not None else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the current index (one consistent version per call)."""
        return self.current.index.search(queries, k)

    def add_listener(self, fn: Listener) -> None:
        """``fn(new, old)`` after every swap (in the loading thread)."""
        self._listeners.append(fn)

    # -------------------------------------------------------------- loading
    def _resolve(self, version: str | None) -> str:
        v = version or current_version(self.root)
        if v is None:
            raise ArtifactError(f"{self.root}: no CURRENT version")
        return v

    def load(self, version: str | None = None) -> RecallArtifact:
        """Load and verify `version` (default: CURRENT) and swap it in; on failure raise and keep the old one."""
        with self._lock:
            v = self._resolve(version)
            try:
                art = load_artifact(self.root / v, verify=self.verify)
            except Exception as exc:
                self.last_error = exc
                self._refused.add(v)
                log.error("recall artifact %s refused, still serving %s: %s", v, self.version, exc)
                raise
            self._swap(art)
            return art

    def swap(self, artifact: RecallArtifact) -> RecallArtifact | None:
        """Serve `artifact` from now on; returns the previous one."""
        with self._lock:
            return self._swap(artifact)

    def _swap(self, art: RecallArtifact) -> RecallArtifact | None:
        old = self._current
        self._current = art  # the atomic part: one reference assignment
        self.swaps += 1
        self.last_error = None
        log.info("recall artifact %s now serving (was %s)", art.version, old.version if old else None)
        for fn in self._listeners:
            try:
                fn(art, old)
            except Exception:  # noqa: BLE001 - a listener must not undo a swap
                log.exception("recall swap listener failed")
        return old

    def load_in_background(self, version: str | None = None) -> concurrent.futures.Future[RecallArtifact]:
        """Load (and verify) in a worker thread, then swap; the future fails if the version is refused."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="recall-load")
        fut = self._executor.submit(self.load, version)
        self._pending = fut
        return fut

    def refresh(self) -> concurrent.futures.Future[RecallArtifact] | None:
        """Start loading CURRENT in the background if it names a version not served and not refused before."""
        v = current_version(self.root)
        if v is None or v == self.version or v in self._refused:
            return None
        if self._pending is not None and not self._pending.done():
            return self._pending
        return self.load_in_background(v)

    def start_watching(self, interval_s: float = 5.0) -> None:
        """Poll CURRENT every `interval_s` seconds in a daemon thread and load new versions."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001 - keep watching
                    log.exception("recall watcher")

        self._watcher = threading.Thread(target=loop, name="recall-watch", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop watching and the loader thread (the current artifact keeps serving until dropped)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5.0)
            self._watcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> LiveIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LiveIndex {self.root} version={self.version}>"


# ----------------------------------------------------------------------------- build


def build_artifact(dataset: str = "movielens", *, config: Any = None, name: str | None = None,
                   index_params: IndexParams | None = None, progress: bool = True, activate: bool = True,
                   keep: int | None = 3, evaluate: bool = True, store: Any = None, repo: Any = None,
                   offline_root: str | Path | None = None, artifacts_dir: str | Path | None = None,
                   **train_overrides: Any) -> Path:
    """Train the towers, build the index, write and (by default) activate a new version; returns its path.

    `name` defaults to `dataset`; `artifacts_dir` overrides `artifacts_root(config, name)`.
    `index_params` defaults to ``IndexParams.from_config(config.recall)``;
    `train_overrides` go to `train_embeddings` (epochs=..., seed=...).
    """
    from recall.embedding.train import train_embeddings
    from recall.index import exact_search, recall_at_k

    if config is None:
        from cascade.config import get_config

        config = get_config()
    began = time.perf_counter()
    trained = train_embeddings(dataset, config=config, store=store, repo=repo, root=offline_root,
                               progress=progress, evaluate=evaluate, **train_overrides)
    params = index_params or IndexParams.from_config(config.recall)
    index = ItemIndex.build(trained.item_vectors, trained.item_ids, params, progress=progress)
    metrics = dict(trained.metrics)
    queries = trained.eval_queries
    if queries is not None and len(queries) and len(index):
        k = min(100, len(index))
        truth, _ = exact_search(trained.item_vectors, queries, k, params.metric, trained.item_ids)
        found, _ = index.search(queries, k)
        metrics[f"ann_recall@{k}"] = round(recall_at_k(found, truth), 4)
    metrics["index_build_s"] = round(index.info.build_s, 3)
    metrics["total_build_s"] = round(time.perf_counter() - began, 2)
    root = Path(artifacts_dir) if artifacts_dir is not None else artifacts_root(config, name or dataset)
    return write_artifact(root, index, trained.encoder, build=trained.build_info(), metrics=metrics,
                          activate=activate, keep=keep, progress=progress)


__all__ = [
    "ArtifactError",
    "LiveIndex",
    "NoIndexLoaded",
    "RecallArtifact",
    "artifacts_root",
    "build_artifact",
    "current_version",
    "list_versions",
    "load_artifact",
    "new_version_id",
    "prune",
    "read_manifest",
    "set_current",
    "verify_artifact",
    "write_artifact",
]
