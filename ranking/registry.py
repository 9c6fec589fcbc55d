"""The model registry: versioned model artifacts on disk, the live pointer, pins, rollbacks, traffic splits.

Layout under ``config.paths.artifacts_dir / config.ranking.artifacts_subdir``::

    <root>/<model name>/<version>/manifest.json, ...   an immutable copy of each published artifact
    <root>/<model name>/registry.json                  the state: versions, live, previous lives, split, audit
    <root>/<model name>/.lock                          flock held for every read-modify-write of the state
    <root>/<model name>/.incoming-*/                   copies in progress (same filesystem: the rename is atomic)

An artifact is a directory with ``manifest.json`` (format ``cascade.model.v1``:
name, version, kind, feature_set {name, fingerprint}, created_at, metrics,
files {relpath: sha256}, inputs, backends) -- see :mod:`ranking.artifact`.

Publishing (:meth:`ModelRegistry.publish`) verifies the artifact (format,
every file's sha256, and that its feature set's fingerprint is the one the
serving definitions resolve to, ``get_repo().resolve(name).fingerprint``),
copies it into a temp dir next to its final place, verifies the copy, renames
it into place, then records it in the state file (temp file + fsync +
``os.replace``). An artifact already at its final place (written there by
``cascade rank train``) is verified and registered where it is. A bad artifact raises :class:`ArtifactRejected` with the
reason, is recorded as REJECTED when its name and version are readable, and
never touches the live pointer: whatever was live keeps serving.

Version statuses stored here are durable facts -- ``registered``, ``rejected``
(failed verification / compatibility), ``failed`` (a replica could not load
it) -- plus the live pointer; whether a version is loaded in memory is the
serving process's business (:mod:`ranking.live`).

Several processes may use one registry (the ranking replicas, the trainers
publishing, an operator's CLI): mutations take an exclusive ``flock`` and
replicas notice changes by polling the state file (:meth:`ModelRegistry.stamp`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ranking.traffic import InvalidSplit, TrafficSplit

_log = logging.getLogger("cascade.ranking.registry")

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = "cascade.model.v1"
STATE_FORMAT = "cascade.model_registry.v1"
STATE_FILE = "registry.json"
KINDS = ("deepfm", "din", "ftrl")

REGISTERED = "registered"
REJECTED = "rejected"
FAILED = "failed"

AUDIT_KEEP = 200
MAX_MESSAGE_BYTES = 1024
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# ----------------------------------------------------------------------------- errors


class RegistryError(Exception):
    """Base of the registry's errors."""


class ArtifactRejected(RegistryError):
    """A published artifact was refused; ``reason`` says why (the live model is untouched)."""

    def __init__(self, reason: str, *, name: str | None = None, version: str | None = None) -> None:
        what = f"{name}/{version}" if name and version else "artifact"
        super().__init__(f"{what} rejected: {reason}")
        self.reason = reason
        self.name = name
        self.version = version


class UnknownModel(RegistryError, LookupError):
    """No model of that name in the registry."""


class UnknownVersion(RegistryError, LookupError):
    """No such version of the model."""


class NotServable(RegistryError):
    """The operation needs a servable version and there is none (rejected, failed, files gone, no previous live)."""


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class VersionRecord:
    """What the registry knows about one version."""

    name: str
    version: str
    kind: str
    status: str  # registered | rejected | failed
    status_message: str = ""
    created_at_ms: int = 0  # the manifest's created_at (training time); registration time when absent
    registered_at_ms: int = 0
    live_since_ms: int = 0  # last time it became live; 0 if never
    feature_set: str = ""
    feature_set_fingerprint: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    parent_version: str = ""
    path: str = ""  # the registry's copy; empty for rejected artifacts
    source: str = ""  # where it was published from

    @property
    def servable(self) -> bool:
        return self.status == REGISTERED

    @property
    def uri(self) -> str:
        return Path(self.path).as_uri() if self.path else (Path(self.source).as_uri() if self.source else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind, "status": self.status,
                "status_message": self.status_message, "created_at_ms": self.created_at_ms,
                "registered_at_ms": self.registered_at_ms, "live_since_ms": self.live_since_ms,
                "feature_set": self.feature_set, "feature_set_fingerprint": self.feature_set_fingerprint,
                "metrics": dict(self.metrics), "parent_version": self.parent_version, "path": self.path,
                "source": self.source}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VersionRecord:
        return cls(str(d["name"]), str(d["version"]), str(d.get("kind", "")), str(d.get("status", REGISTERED)),
                   str(d.get("status_message", "")), int(d.get("created_at_ms", 0)), int(d.get("registered_at_ms", 0)),
                   int(d.get("live_since_ms", 0)), str(d.get("feature_set", "")),
                   str(d.get("feature_set_fingerprint", "")), dict(d.get("metrics") or {}),
                   str(d.get("parent_version", "")), str(d.get("path", "")), str(d.get("source", "")))


@dataclass(frozen=True)
class ModelState:
    """The registry state of one model name (an immutable snapshot of ``registry.json``)."""

    name: str
    versions: Mapping[str, VersionRecord]
    live: str | None = None
    previous: tuple[str, ...] = ()  # earlier live versions, most recent last (Rollback pops from the end)
    auto_promotion_suspended: bool = False
    traffic_split: TrafficSplit | None = None
    revision: int = 0
    audit: tuple[Mapping[str, Any], ...] = ()

    def ordered(self) -> list[VersionRecord]:
        """Versions newest first (by created_at_ms, then registration)."""
        return sorted(self.versions.values(), key=lambda r: (r.created_at_ms, r.registered_at_ms, r.version), reverse=True)

    def record(self, version: str) -> VersionRecord:
        try:
            return self.versions[version]
        except KeyError:
            raise UnknownVersion(f"model {self.name!r} has no version {version!r}") from None

    @property
    def live_record(self) -> VersionRecord | None:
        return self.versions.get(self.live) if self.live else None

    def rollback_target(self) -> str | None:
        """The most recent previous live version that is still servable."""
        for v in reversed(self.previous):
            rec = self.versions.get(v)
            if rec is not None and rec.servable and v != self.live:
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "name": self.name, "revision": self.revision, "live": self.live,
                "previous": list(self.previous), "auto_promotion_suspended": self.auto_promotion_suspended,
                "traffic_split": self.traffic_split.to_json() if self.traffic_split else None,
                "versions": {v: r.to_json() for v, r in self.versions.items()}, "audit": list(self.audit)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelState:
        if d.get("format") != STATE_FORMAT:
            raise RegistryError(f"not a {STATE_FORMAT} state file (format {d.get('format')!r})")
        split = d.get("traffic_split")
        return cls(str(d["name"]), {v: VersionRecord.from_json(r) for v, r in (d.get("versions") or {}).items()},
                   d.get("live") or None, tuple(d.get("previous") or ()), bool(d.get("auto_promotion_suspended")),
                   TrafficSplit.from_json(split) if split else None, int(d.get("revision", 0)), tuple(d.get("audit") or ()))


# ----------------------------------------------------------------------------- artifact checks


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of an artifact as a dict; raises :class:`ArtifactRejected` when absent or not JSON."""
    path = Path(artifact_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactRejected(f"no {MANIFEST} in {artifact_dir}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactRejected(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactRejected(f"{MANIFEST} is not a JSON object")
    return data


def _verify_files(artifact_dir: Path, manifest: Mapping[str, Any]) -> None:
    """Every file the manifest lists exists inside the artifact and has its sha256 (the artifact contract)."""
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise ArtifactRejected("manifest lists no files")
    root = artifact_dir.resolve()
    for rel, digest in files.items():
        path = (artifact_dir / rel).resolve()
        if root not in path.parents:
            raise ArtifactRejected(f"manifest file {rel!r} points outside the artifact")
        if not path.is_file():
            raise ArtifactRejected(f"file {rel!r} listed in the manifest is missing")
        got = _sha256(path)
        if got != digest:
            raise ArtifactRejected(f"corrupt file {rel!r}: sha256 {got[:12]}... does not match the manifest's {str(digest)[:12]}...")


def verify(artifact_dir: Path) -> dict[str, Any]:
    """Format and sha256 check of an artifact directory; returns its manifest dict or raises :class:`ArtifactRejected`.

    Uses :func:`ranking.artifact.verify_artifact` when that module is present
    (the exporter's own check), else the same contract checked here.
    """
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise ArtifactRejected(f"{artifact_dir} is not a directory")
    manifest = read_manifest(artifact_dir)
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactRejected(f"wrong format {manifest.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
    try:
        from ranking.artifact import ArtifactError, verify_artifact
    except ImportError:
        _verify_files(artifact_dir, manifest)
    else:
        try:
            verify_artifact(artifact_dir)
        except ArtifactError as exc:
            raise ArtifactRejected(str(exc)) from None
    return manifest


def _epoch_ms(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        return int(v if v > 1e11 else v * 1000)  # epoch ms or epoch seconds
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return 0
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return int(dt.timestamp() * 1000)
    return 0


def _finite_metrics(metrics: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(metrics, Mapping):
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                out[str(k)] = float(v)
    return out


def _clip(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    raw = message.encode()
    return message if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore") + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` atomically: a temp file in the same directory, fsync, ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# ----------------------------------------------------------------------------- the registry


class ModelRegistry:
    """Versioned model artifacts of one or more model names under `root`; see the module docstring.

    `repo` is the serving feature repository (for the compatibility check;
    default ``featurestore.repository.get_repo()`` when first needed).
    `default_model` is the name used when a call does not give one.
    """

    def __init__(self, root: str | os.PathLike[str], *, repo: Any = None, default_model: str | None = None,
                 definitions: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root)
        self._repo = repo
        self._definitions = definitions
        self.default_model = default_model

    @classmethod
    def from_config(cls, config: Any, *, repo: Any = None) -> ModelRegistry:
        return cls(config.paths.artifacts_dir / config.ranking.artifacts_subdir, repo=repo,
                   default_model=config.ranking.model, definitions=config.features.definitions)

    # -- helpers

    @property
    def repo(self) -> Any:
        if self._repo is None:
            from featurestore.repository import get_repo

            self._repo = get_repo(self._definitions)
        return self._repo

    def _name(self, name: str | None) -> str:
        name = name or self.default_model
        if not name:
            raise UnknownModel("no model name given and the registry has no default model")
        return name

    def model_dir(self, name: str | None = None) -> Path:
        return self.root / self._name(name)

    def state_path(self, name: str | None = None) -> Path:
        return self.model_dir(name) / STATE_FILE

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        with (d / ".lock").open("a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read(self, name: str) -> ModelState | None:
        path = self.root / name / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return ModelState.from_json(data)

    def _write(self, state: ModelState, action: str, **details: Any) -> ModelState:
        entry = {"at_ms": _now_ms(), "action": action, **{k: v for k, v in details.items() if v not in (None, "")}}
        state = replace(state, revision=state.revision + 1, audit=(*state.audit, entry)[-AUDIT_KEEP:])
        write_json_atomic(self.root / state.name / STATE_FILE, state.to_json())
        _log.info("model registry: %s %s", action, state.name, extra={"model": state.name, **entry})
        return state

    # -- reading

    def models(self) -> list[str]:
        """Names of the models with a state file."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).is_file())

    def state(self, name: str | None = None) -> ModelState:
        """The model's state; raises :class:`UnknownModel`."""
        name = self._name(name)
        state = self._read(name)
        if state is None:
            raise UnknownModel(f"no model named {name!r} in the registry at {self.root}")
        return state

    def stamp(self, name: str | None = None) -> tuple[int, int, int] | None:
        """A cheap change marker of the state file (inode, size, mtime_ns); None when there is none."""
        try:
            st = os.stat(self.state_path(name))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def versions(self, name: str | None = None) -> list[VersionRecord]:
        """Every version, newest first."""
        return self.state(name).ordered()

    def version(self, version: str, name: str | None = None) -> VersionRecord:
        return self.state(name).record(version)

    def live(self, name: str | None = None) -> VersionRecord | None:
        """The live version's record, or None when none was ever made live."""
        try:
            return self.state(name).live_record
        except UnknownModel:
            return None

    def artifact_path(self, version: str, name: str | None = None) -> Path:
        return self.model_dir(name) / version

    # -- publishing

    def publish(self, artifact_dir: str | os.PathLike[str], *, auto_promote: bool = False, reason: str = "") -> str:
        """Verify and copy an artifact in; returns its version. See the module docstring.

        With `auto_promote` (the streaming trainer) the version also becomes
        live unless automatic promotion is suspended (PinVersion). Publishing
        the same artifact again is a no-op returning the same version; a
        different artifact under an existing version is rejected (versions are
        never reused). Raises :class:`ArtifactRejected`.
        """
        src = Path(artifact_dir)
        name: str | None = None
        version: str | None = None
        try:
            manifest = read_manifest(src) if src.is_dir() else None
            if manifest is None:
                raise ArtifactRejected(f"{src} is not a directory")
            name, version = self._identity(manifest)
            manifest = verify(src)
            record = self._record(manifest, name, version, src)
            self._check_compatible(record)
        except ArtifactRejected as exc:
            rejected = ArtifactRejected(exc.reason, name=exc.name or name, version=exc.version or version)
            if name and version:
                self._record_rejection(name, version, exc.reason, src)
            _log.warning("model artifact rejected: %s", rejected, extra={"source": str(src)})
            raise rejected from None
        dest = self.root / name / version
        in_place = src.resolve() == dest.resolve()  # e.g. `cascade rank train` wrote it where the registry keeps it
        with self._locked(name):
            state = self._read(name) or ModelState(name, {})
            existing = state.versions.get(version)
            if existing is not None and existing.status != REJECTED:
                if dest.is_dir() and (in_place or self._same_artifact(dest, src)):
                    return version  # idempotent re-publish
                raise ArtifactRejected(f"version {version!r} of {name!r} is already registered with different content "
                                       "(versions are never reused)", name=name, version=version)
            if not in_place:
                self._copy_in(src, dest)
            record = replace(record, path=str(dest), registered_at_ms=_now_ms())
            if not record.created_at_ms:
                record = replace(record, created_at_ms=record.registered_at_ms)
            versions = {**state.versions, version: record}
            state = replace(state, versions=versions)
            promote = auto_promote and not state.auto_promotion_suspended
            if promote and state.live != version:
                state = self._make_live(state, version)
            self._write(state, "publish", version=version, auto_promoted=promote or None, reason=reason or None)
        return version

    def _identity(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        name = manifest.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ArtifactRejected(f"manifest name {name!r} is not a lower snake_case model name of 1 to 64 bytes")
        version = manifest.get("version")
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise ArtifactRejected(f"manifest version {version!r} is not 1 to 128 characters of [A-Za-z0-9._-]", name=name)
        return name, version

    def _record(self, manifest: Mapping[str, Any], name: str, version: str, src: Path) -> VersionRecord:
        kind = manifest.get("kind")
        if kind not in KINDS:
            raise ArtifactRejected(f"unknown model kind {kind!r} (expected one of {', '.join(KINDS)})", name=name, version=version)
        fs = manifest.get("feature_set")
        if not isinstance(fs, Mapping) or not fs.get("name") or not fs.get("fingerprint"):
            raise ArtifactRejected("manifest has no feature_set {name, fingerprint}", name=name, version=version)
        return VersionRecord(name, version, str(kind), REGISTERED, created_at_ms=_epoch_ms(manifest.get("created_at")),
                             feature_set=str(fs["name"]), feature_set_fingerprint=str(fs["fingerprint"]),
                             metrics=_finite_metrics(manifest.get("metrics")),
                             parent_version=str(manifest.get("parent_version") or ""), source=str(src.resolve()))

    def _check_compatible(self, record: VersionRecord) -> None:
        from featurestore.repository import UnknownDefinition

        try:
            resolved = self.repo.resolve(record.feature_set)
        except UnknownDefinition:
            raise ArtifactRejected(f"incompatible feature set: {record.feature_set!r} is not defined in the serving "
                                   "feature definitions", name=record.name, version=record.version) from None
        if resolved.fingerprint != record.feature_set_fingerprint:
            raise ArtifactRejected(
                f"incompatible feature set: the model was trained on {record.feature_set!r} with fingerprint "
                f"{record.feature_set_fingerprint[:12]}..., the serving definitions resolve it to "
                f"{resolved.fingerprint[:12]}... (retrain, or serve the definitions it was trained with)",
                name=record.name, version=record.version)

    def _record_rejection(self, name: str, version: str, reason: str, src: Path) -> None:
        try:
            with self._locked(name):
                state = self._read(name) or ModelState(name, {})
                existing = state.versions.get(version)
                if existing is not None and existing.status != REJECTED:
                    return  # a registered version stays as it is; the new artifact simply was not taken
                manifest: Mapping[str, Any] = {}
                with contextlib.suppress(ArtifactRejected):
                    manifest = read_manifest(src)
                kind = manifest.get("kind") if manifest.get("kind") in KINDS else ""
                fs = manifest.get("feature_set") if isinstance(manifest.get("feature_set"), Mapping) else {}
                now = _now_ms()
                rec = VersionRecord(name, version, str(kind), REJECTED, _clip(reason),
                                    _epoch_ms(manifest.get("created_at")) or now, now, 0,
                                    str(fs.get("name") or ""), str(fs.get("fingerprint") or ""),
                                    _finite_metrics(manifest.get("metrics")), str(manifest.get("parent_version") or ""),
                                    "", str(src.resolve()))
                self._write(replace(state, versions={**state.versions, version: rec}), "reject", version=version,
                            reason=_clip(reason, 512))
        except OSError as exc:  # recording is best effort; the rejection itself is what matters
            _log.warning("could not record the rejection of %s/%s: %s", name, version, exc)

    @staticmethod
    def _same_artifact(a: Path, b: Path) -> bool:
        try:
            return (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()
        except OSError:
            return False

    def _copy_in(self, src: Path, dest: Path) -> None:
        """Copy `src` to `dest` atomically: into a temp dir beside it, verified, then renamed."""
        tmp = dest.parent / f".incoming-{dest.name}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, tmp)
            try:
                verify(tmp)
            except ArtifactRejected as exc:
                raise ArtifactRejected(f"the copy does not verify: {exc.reason}", name=dest.parent.name, version=dest.name) from None
            if dest.exists():  # a copy left by a crash before its state was written
                shutil.rmtree(dest)
            try:
                os.rename(tmp, dest)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise ArtifactRejected(f"{dest} appeared while publishing", name=dest.parent.name, version=dest.name) from None
                raise
            _fsync_dir(dest.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- routing mutations

    @staticmethod
    def _make_live(state: ModelState, version: str) -> ModelState:
        previous = state.previous
        if state.live and state.live != version:
            previous = (*[v for v in previous if v != state.live], state.live)[-AUDIT_KEEP:]
        rec = replace(state.versions[version], live_since_ms=_now_ms())
        return replace(state, live=version, previous=previous, versions={**state.versions, version: rec})

    def pin(self, version: str, name: str | None = None, *, suspend_auto_promotion: bool | None = None,
            reason: str = "") -> tuple[VersionRecord, VersionRecord | None]:
        """Make `version` live; returns (live, previous live or None).

        Pinning the live version is a no-op apart from `suspend_auto_promotion`
        (None leaves the setting as it is). Raises :class:`UnknownModel`,
        :class:`UnknownVersion`, :class:`NotServable` (rejected or failed).
        """
        name = self._name(name)
        with self._locked(name):
            state = self.state(name)
            rec = state.record(version)
            if not rec.servable:
                raise NotServable(f"version {version!r} of {name!r} is {rec.status}: {rec.status_message}")
            previous = state.live_record
            changed = state.live != version
            if changed:
                state = self._make_live(state, version)
            if suspend_auto_promotion is not None:
                state = replace(state, auto_promotion_suspended=bool(suspend_auto_promotion))
            state = self._write(state, "pin", version=version, previous=previous.version if previous else None,
                                suspend_auto_promotion=suspend_auto_promotion, reason=_clip(reason, 512))
            return state.versions[version], previous

    def rollback(self, name: str | None = None, *, reason: str = "") -> tuple[VersionRecord, VersionRecord]:
        """Make the previously live (still servable) version live again; returns (live, rolled back from).

        Repeated rollbacks walk further back. Raises :class:`NotServable` when
        there is no previous live version that can serve.
        """
        name = self._name(name)
        with self._locked(name):
            state = self.state(name)
            current = state.live_record
            target = state.rollback_target()
            if current is None or target is None:
                raise NotServable(f"model {name!r} has no previous live version to roll back to")
            keep = list(state.previous)
            while keep and keep[-1] != target:
                keep.pop()
            keep.pop()
            rec = replace(state.versions[target], live_since_ms=_now_ms())
            state = replace(state, live=target, previous=tuple(keep), versions={**state.versions, target: rec})
            state = self._write(state, "rollback", version=target, previous=current.version, reason=_clip(reason, 512))
            return state.versions[target], current

    def set_traffic_split(self, split: TrafficSplit | None, name: str | None = None, *, reason: str = "") -> TrafficSplit | None:
        """Start, change (`split`) or end (None) the model's traffic split; returns it stamped with updated_at_ms.

        Raises :class:`~ranking.traffic.InvalidSplit`, :class:`UnknownVersion`, :class:`NotServable`.
        """
        name = self._name(name)
        with self._locked(name):
            state = self.state(name)
            if split is not None:
                split = split.validate()
                for fld, v in (("treatment_version", split.treatment_version), ("control_version", split.control_version)):
                    if not v:
                        continue
                    rec = state.record(v)
                    if not rec.servable:
                        raise NotServable(f"{fld} {v!r} is {rec.status}: {rec.status_message}")
                split = split.stamped()
            self._write(replace(state, traffic_split=split), "set_traffic_split",
                        split=split.to_json() if split else None, reason=_clip(reason, 512))
            return split

    def mark_failed(self, version: str, message: str, name: str | None = None) -> None:
        """Record that `version` could not be loaded (it stays listed as FAILED with `message`)."""
        name = self._name(name)
        with self._locked(name):
            state = self.state(name)
            rec = state.record(version)
            if rec.status == FAILED and rec.status_message == _clip(message):
                return
            state = replace(state, versions={**state.versions, version: replace(rec, status=FAILED, status_message=_clip(message))})
            self._write(state, "load_failed", version=version, reason=_clip(message, 512))

    def prune(self, keep: int, name: str | None = None, *, keep_previous: int | None = None) -> list[str]:
        """Delete the oldest registered versions beyond the newest `keep`, never the live, previous or split ones.

        `keep_previous` protects only the most recent that many previous live
        versions (rollback targets) instead of all of them: a trainer promoting
        a version every few seconds would otherwise keep every one it ever
        promoted (up to the audit bound). Pruned versions leave ``previous``.
        """
        name = self._name(name)
        with self._locked(name):
            state = self.state(name)
            previous = state.previous if keep_previous is None else \
                state.previous[max(0, len(state.previous) - max(0, keep_previous)):]
            protected = {state.live, *previous}
            if state.traffic_split:
                protected |= {state.traffic_split.treatment_version, state.traffic_split.control_version}
            removable = [r for r in state.ordered()[keep:] if r.version not in protected]
            if not removable:
                return []
            versions = dict(state.versions)
            for rec in removable:
                versions.pop(rec.version)
            gone = {r.version for r in removable}
            self._write(replace(state, versions=versions, previous=tuple(v for v in state.previous if v not in gone)),
                        "prune", versions=[r.version for r in removable])
        for rec in removable:
            if rec.path:
                shutil.rmtree(rec.path, ignore_errors=True)
        return [r.version for r in removable]


def main(argv: Sequence[str] | None = None) -> int:
    """``cascade rank models ...``: publish, list, pin, roll back and split without a running server.

    Replicas pick the change up within ``ranking.registry_poll_ms``.
    """
    import argparse
    import sys

    from cascade.config import get_config

    parser = argparse.ArgumentParser(prog="cascade rank models", description="The model registry.")
    parser.add_argument("--model", default=None, help="model name (default: config ranking.model)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="verify an artifact and register it")
    p.add_argument("artifact")
    p.add_argument("--promote", action="store_true", help="make it live (unless auto-promotion is suspended)")
    sub.add_parser("list", help="versions, newest first, and the live one")
    p = sub.add_parser("pin", help="make a version live")
    p.add_argument("version")
    p.add_argument("--suspend-auto-promotion", action="store_true")
    p.add_argument("--reason", default="")
    p = sub.add_parser("rollback", help="make the previous live version live again")
    p.add_argument("--reason", default="")
    p = sub.add_parser("split", help="start or change a traffic split (or --clear it)")
    p.add_argument("experiment", nargs="?")
    p.add_argument("treatment_version", nargs="?")
    p.add_argument("fraction", nargs="?", type=float)
    p.add_argument("--control", default="", help="control version (default: the live one)")
    p.add_argument("--clear", action="store_true")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    reg = ModelRegistry.from_config(get_config())
    name = args.model
    try:
        if args.command == "publish":
            version = reg.publish(args.artifact, auto_promote=args.promote)
            live = reg.live(name)
            print(json.dumps({"version": version, "live": live.version if live else None}))
        elif args.command == "list":
            state = reg.state(name)
            for r in state.ordered():
                mark = "*" if r.version == state.live else " "
                print(f"{mark} {r.version}  {r.kind:7s} {r.status:10s} {r.feature_set}  {json.dumps(dict(r.metrics))}"
                      + (f"  ({r.status_message})" if r.status_message else ""))
            if state.traffic_split:
                print(f"split: {json.dumps(state.traffic_split.to_json())}")
        elif args.command == "pin":
            live, prev = reg.pin(args.version, name, suspend_auto_promotion=args.suspend_auto_promotion or None,
                                 reason=args.reason)
            print(json.dumps({"live": live.version, "previous": prev.version if prev else None}))
        elif args.command == "rollback":
            live, prev = reg.rollback(name, reason=args.reason)
            print(json.dumps({"live": live.version, "rolled_back_from": prev.version}))
        else:
            if args.clear:
                reg.set_traffic_split(None, name)
                print(json.dumps({"split": None}))
            else:
                if args.experiment is None or args.treatment_version is None or args.fraction is None:
                    parser.error("split needs EXPERIMENT TREATMENT_VERSION FRACTION (or --clear)")
                got = reg.set_traffic_split(TrafficSplit(args.experiment, args.treatment_version, args.fraction,
                                                         args.control), name)
                print(json.dumps({"split": got.to_json() if got else None}))
    except (RegistryError, InvalidSplit) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def default_version(manifest: Mapping[str, Any]) -> str:
    """A version id for an artifact without one: UTC time and a digest of its file hashes."""
    files = manifest.get("files") or {}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:6]
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{digest}"


__all__ = [
    "ARTIFACT_FORMAT",
    "FAILED",
    "KINDS",
    "REGISTERED",
    "REJECTED",
    "ArtifactRejected",
    "InvalidSplit",
    "ModelRegistry",
    "ModelState",
    "NotServable",
    "RegistryError",
    "UnknownModel",
    "UnknownVersion",
    "VersionRecord",
    "default_version",
    "main",
    "read_manifest",
    "verify",
    "write_json_atomic",
]
