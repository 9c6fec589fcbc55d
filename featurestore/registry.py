"""The registry: which definitions are live, every version ever applied, and what changed.

Layout of ``Registry(path_dir)``::

    live.json               {"version": 3, "file": "versions/v000003.json", "history": [1, 2, 3], ...}
    versions/v000001.json   one file per applied version: the spec of every object
    versions/v000002.json
    registry.lock           serialises concurrent applies

``apply`` writes the new version file under a temporary name and renames it,
then replaces ``live.json`` the same way; a crash in between leaves the old
version live and nothing half-applied (an orphaned version file is never
listed and is overwritten by the next apply).

Compatibility. ``plan`` diffs a :class:`~featurestore.repository.FeatureRepo`
against the live version. Changes that would make stored or served values
wrong are *breaking* and refused unless ``allow_breaking``:

* a feature's dtype (or embedding dim) changes;
* a feature that a live feature set uses is removed (remove it from the set,
  apply, then remove the feature);
* an entity's join keys, or a view's entities, change;
* a view's source timestamp field changes;
* the hop of an existing window of a window view changes (its `tile`, or the default ladder's choice
  when `tile` is set or unset), or an existing aggregation's function/column/n/type;
* a view changes kind.

Versions. Each view carries a ``version``: its fingerprint when it was added
or last changed in a way that invalidates stored values (the *rekeying*
changes above). Compatible changes -- descriptions, TTL, defaults, added
features -- keep the version, so online data stays addressable; a forced
breaking change gets a new version, hence new online keys. Each feature set
carries an integer ``version`` (>= 1, never reused) that increases whenever
its resolved schema or the version of a view it reads changes: what
``FeatureSetRef.version`` reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from featurestore.definitions import RequestFeatureView, WindowedFeatureView, default_hop, fingerprint, window_label
from featurestore.repository import FeatureRepo, object_spec

try:  # POSIX advisory lock; without it concurrent applies are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT = 1
LIVE_FILE = "live.json"
VERSIONS_DIR = "versions"
LOCK_FILE = "registry.lock"


class RegistryError(RuntimeError):
    """The registry on disk is missing, unreadable or inconsistent."""


class BreakingChangeError(RegistryError):
    """An apply was refused because of breaking changes; nothing was written."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        reasons = "\n".join(f"  - {r}" for r in plan.breaking)
        super().__init__(
            f"refusing to apply {len(plan.breaking)} breaking change(s) to live version {plan.base_version}:\n{reasons}\n"
            "Nothing was written. Re-run with --allow-breaking (allow_breaking=True) to apply anyway; "
            "views with breaking changes get new versions (new online keys) and must be re-materialized."
        )


# ----------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class FieldChange:
    path: str  # e.g. "features[age].dtype", "source.timestamp_field", "ttl"
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


@dataclass(frozen=True)
class ObjectChange:
    kind: str  # "Entity", "FeatureView", "WindowedFeatureView", "RequestFeatureView", "FeatureSet"
    name: str
    action: str  # "add" | "remove" | "change"
    fields: tuple[FieldChange, ...] = ()
    breaking: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    rekey: bool = False  # a view whose stored values become invalid: it gets a new version

    @property
    def group(self) -> str:
        return _GROUP_OF_KIND[self.kind]


@dataclass(frozen=True)
class Plan:
    """What applying a repository would change, relative to the live version."""

    base_version: int | None  # the live version diffed against; None for an empty registry
    fingerprint: str  # the repository's
    changes: tuple[ObjectChange, ...]
    proposed: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)  # the version document apply would write

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    @property
    def added(self) -> tuple[ObjectChange, ...]:
        return tuple(c for c in self.changes if c.action == "add")

    @property
    def removed(self) -> tuple[ObjectChange, ...]:
        return tuple(c for c in self.changes if c.action == "remove")

    @property
    def changed(self) -> tuple[ObjectChange, ...]:
        return tuple(c for c in self.changes if c.action == "change")

    @property
    def breaking(self) -> tuple[str, ...]:
        return tuple(r for c in self.changes for r in c.breaking)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(w for c in self.changes for w in c.warnings)

    @property
    def is_breaking(self) -> bool:
        return bool(self.breaking)

    def format(self) -> str:
        """A human-readable plan, as `cascade features plan` prints it."""
        base = f"live version {self.base_version}" if self.base_version else "an empty registry"
        if not self.changes:
            return f"No changes: the definitions match {base}."
        lines = [f"Plan against {base}: {len(self.added)} to add, {len(self.changed)} to change, {len(self.removed)} to remove."]
        sign = {"add": "+", "remove": "-", "change": "~"}
        for c in self.changes:
            lines.append(f"  {sign[c.action]} {c.kind} {c.name}" + ("  [BREAKING]" if c.breaking else ""))
            lines += [f"        {f}" for f in c.fields]
        if self.breaking:
            lines.append("Breaking changes (refused without --allow-breaking):")
            lines += [f"  ! {r}" for r in self.breaking]
        if self.warnings:
            lines.append("Warnings:")
            lines += [f"  * {w}" for w in self.warnings]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- applied versions


@dataclass(frozen=True)
class AppliedVersion:
    """One applied version of the registry, as stored."""

    version: int
    data: Mapping[str, Any] = field(repr=False)

    @property
    def applied_at(self) -> str:
        return self.data["applied_at"]

    @property
    def fingerprint(self) -> str:
        """The applied repository's :meth:`FeatureRepo.fingerprint`."""
        return self.data["fingerprint"]

    @property
    def parent(self) -> int | None:
        return self.data.get("parent")

    @property
    def forced(self) -> bool:
        """Applied with breaking changes (``--allow-breaking``)."""
        return bool(self.data.get("forced"))

    @property
    def definitions(self) -> str | None:
        return self.data.get("definitions")

    @property
    def summary(self) -> Mapping[str, Any]:
        return self.data.get("summary", {})

    @property
    def entities(self) -> Mapping[str, Any]:
        return self.data["entities"]

    @property
    def views(self) -> Mapping[str, Any]:
        return self.data["views"]

    @property
    def feature_sets(self) -> Mapping[str, Any]:
        return self.data["feature_sets"]

    def spec(self, name: str, group: str = "views") -> dict[str, Any]:
        """The stored spec of an object (`group`: "entities", "views" or "feature_sets")."""
        return self._record(group, name)["spec"]

    def view_version(self, name: str) -> str:
        """The storage version of a view: what the online store keys its values by."""
        return self._record("views", name)["version"]

    def view_versions(self) -> dict[str, str]:
        return {n: r["version"] for n, r in self.views.items()}

    def feature_set_version(self, name: str) -> int:
        return self._record("feature_sets", name)["version"]

    def feature_set_schema(self, name: str) -> list[dict[str, str]]:
        """``[{"ref", "column", "dtype"}, ...]`` of a feature set as it was in this version."""
        return self._record("feature_sets", name)["schema"]

    def _record(self, group: str, name: str) -> dict[str, Any]:
        try:
            return self.data[group][name]
        except KeyError:
            raise KeyError(f"registry version {self.version} has no {group[:-1].replace('_', ' ')} named {name!r}") from None


# ----------------------------------------------------------------------------- the registry


class Registry:
    """Applied feature definitions under `path_dir`, versioned."""

    def __init__(self, path_dir: str | os.PathLike[str]) -> None:
        self.path = Path(path_dir)

    @classmethod
    def from_config(cls, config: Any = None) -> Registry:
        if config is None:
            from cascade.config import get_config

            config = get_config()
        return cls(config.registry_dir)

    def __repr__(self) -> str:
        return f"Registry({str(self.path)!r})"

    # -- reading

    def _live_pointer(self) -> dict[str, Any] | None:
        file = self.path / LIVE_FILE
        if not file.exists():
            return None
        try:
            pointer = json.loads(file.read_text())
            int(pointer["version"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"registry pointer {file} is unreadable: {exc}") from exc
        return pointer

    def live(self) -> AppliedVersion | None:
        """The live version, or None when nothing was ever applied."""
        pointer = self._live_pointer()
        return None if pointer is None else self.get(int(pointer["version"]))

    def versions(self) -> list[AppliedVersion]:
        """Every applied version, oldest first (the live one last)."""
        pointer = self._live_pointer()
        return [] if pointer is None else [self.get(int(v)) for v in pointer.get("history", [pointer["version"]])]

    def get(self, version: int) -> AppliedVersion:
        file = self._version_file(version)
        pointer = self._live_pointer()
        if pointer is None or version not in pointer.get("history", [pointer["version"]]):
            raise KeyError(f"registry {self.path} has no applied version {version}")
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"registry version file {file} is unreadable: {exc}") from exc
        if data.get("version") != version:
            raise RegistryError(f"registry version file {file} holds version {data.get('version')}, not {version}")
        return AppliedVersion(version, data)

    def check_applied(self, repo: FeatureRepo) -> AppliedVersion:
        """The live version, after checking that `repo` is exactly what is live (for services at start-up)."""
        live = self.live()
        if live is None:
            raise RegistryError(f"no feature definitions applied in {self.path}; run `cascade features apply`")
        if live.fingerprint != repo.fingerprint():
            raise RegistryError(
                f"the feature definitions ({repo.source or 'in memory'}) differ from live registry version {live.version}; "
                "run `cascade features plan` and `cascade features apply`"
            )
        return live

    def find_feature_set(self, name: str, version: int) -> list[dict[str, str]]:
        """The schema of feature set `name` at its `version` (searching every applied version)."""
        for applied in reversed(self.versions()):
            record = applied.feature_sets.get(name)
            if record is not None and record["version"] == version:
                return record["schema"]
        raise KeyError(f"feature set {name!r} version {version} was never applied in {self.path}")

    def _version_file(self, version: int) -> Path:
        return self.path / VERSIONS_DIR / f"v{version:06d}.json"

    # -- planning and applying

    def plan(self, repo: FeatureRepo) -> Plan:
        """Diff `repo` against the live version; writes nothing."""
        return _plan(repo, self.live())

    def apply(self, repo: FeatureRepo, allow_breaking: bool = False) -> AppliedVersion:
        """Make `repo` the live version.

        Applying what is already live returns the live version and writes
        nothing. Breaking changes raise :class:`BreakingChangeError` (nothing
        written) unless `allow_breaking`.
        """
        plan = self.plan(repo)
        if not plan.has_changes:
            live = self.live()
            assert live is not None
            return live
        if plan.is_breaking and not allow_breaking:
            raise BreakingChangeError(plan)
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            pointer = self._live_pointer()
            plan = self.plan(repo)  # again, under the lock: another apply may have won the race
            if not plan.has_changes:
                live = self.live()
                assert live is not None
                return live
            if plan.is_breaking and not allow_breaking:
                raise BreakingChangeError(plan)
            history = list(pointer.get("history", [pointer["version"]])) if pointer else []
            version = max(history, default=0) + 1
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            doc = {
                **plan.proposed,
                "format": FORMAT,
                "version": version,
                "parent": pointer["version"] if pointer else None,
                "applied_at": now,
                "forced": plan.is_breaking,
                "breaking": list(plan.breaking),
                "summary": {
                    "added": [f"{c.kind} {c.name}" for c in plan.added],
                    "changed": [f"{c.kind} {c.name}" for c in plan.changed],
                    "removed": [f"{c.kind} {c.name}" for c in plan.removed],
                },
            }
            file = self._version_file(version)
            _atomic_write_json(file, doc)
            _atomic_write_json(
                self.path / LIVE_FILE,
                {"format": FORMAT, "version": version, "file": str(file.relative_to(self.path)), "history": [*history, version], "updated_at": now},
            )
        return AppliedVersion(version, doc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"  # serialise before touching disk
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; registry files are meant to be read by every service
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ----------------------------------------------------------------------------- building and diffing records

_GROUP_OF_KIND = {
    "Entity": "entities",
    "FeatureView": "views",
    "WindowedFeatureView": "views",
    "RequestFeatureView": "views",
    "FeatureSet": "feature_sets",
}


def _records(repo: FeatureRepo) -> dict[str, dict[str, dict[str, Any]]]:
    """Every object of `repo` as the registry stores it (versions are filled in by `_plan`)."""
    entities = {n: {"kind": "Entity", "fingerprint": fingerprint(e), "spec": object_spec(e)} for n, e in repo.entities.items()}
    views = {}
    for n, v in repo.views.items():
        views[n] = {
            "kind": type(v).__name__,
            "fingerprint": fingerprint(v),
            "spec": object_spec(v),
            "join_keys": [] if isinstance(v, RequestFeatureView) else list(v.join_keys),
            "features": [{"name": f.name, "dtype": f.dtype.value, "dim": f.dim} for f in v.features],
        }
    sets = {}
    for n in repo.feature_sets:
        r = repo.resolve(n)
        sets[n] = {
            "kind": "FeatureSet",
            "fingerprint": r.fingerprint,
            "spec": object_spec(repo.feature_set(n)),
            "views": [v.name for v in r.views],
            "join_keys": list(r.join_keys),
            "request_inputs": list(r.request_inputs),
            "schema": [{"ref": f.ref, "column": f.column, "dtype": f.dtype.value} for f in r.features],
        }
    return {"entities": entities, "views": views, "feature_sets": sets}


def _plan(repo: FeatureRepo, live: AppliedVersion | None) -> Plan:
    new = _records(repo)
    old: Mapping[str, Any] = live.data if live is not None else {"entities": {}, "views": {}, "feature_sets": {}}
    high_water: dict[str, int] = dict(old.get("high_water", {}).get("feature_sets", {}))
    # live feature sets' features: removing one breaks the models that read the set
    used_by: dict[str, list[str]] = {}
    for set_name, rec in old["feature_sets"].items():
        for col in rec["schema"]:
            used_by.setdefault(col["ref"], []).append(set_name)

    changes: list[ObjectChange] = []
    for group in ("entities", "views", "feature_sets"):
        olds, news = old[group], new[group]
        for name, rec in news.items():
            prev = olds.get(name)
            if prev is None:
                warnings = ()
                if group == "views" and rec["kind"] != "RequestFeatureView" and rec["spec"].get("online", True):
                    warnings = (f"{name}: new view; its online values are empty until `cascade features materialize`",)
                changes.append(ObjectChange(rec["kind"], name, "add", warnings=warnings))
            elif prev["spec"] != rec["spec"]:
                fields = tuple(_diff(prev["spec"], rec["spec"]))
                checker = {"entities": _check_entity, "views": _check_view, "feature_sets": _check_set}[group]
                breaking, warnings, rekey = checker(name, prev, rec, used_by)
                changes.append(ObjectChange(rec["kind"], name, "change", fields, tuple(breaking), tuple(warnings), rekey))
        for name, prev in olds.items():
            if name in news:
                continue
            breaking, warnings = [], []
            if group == "views":
                for f in prev["features"]:
                    ref = f"{name}:{f['name']}"
                    if ref in used_by:
                        breaking.append(f"{name}: removing the view removes {ref!r}, which live feature set(s) {', '.join(sorted(used_by[ref]))} use")
                if not breaking and prev["kind"] != "RequestFeatureView":
                    warnings.append(f"{name}: view removed; its online values are no longer served")
            elif group == "feature_sets":
                warnings.append(f"{name}: feature set removed; models reading it can no longer resolve their schema from the live registry")
            changes.append(ObjectChange(prev["kind"], name, "remove", (), tuple(breaking), tuple(warnings)))

    # storage versions of views: kept across compatible changes, new on rekeying ones
    rekeyed = {c.name for c in changes if c.group == "views" and c.rekey}
    for name, rec in new["views"].items():
        prev = old["views"].get(name)
        rec["version"] = rec["fingerprint"] if prev is None or name in rekeyed else prev["version"]
    # feature set versions: integers, bumped when the schema or a read view's version changes
    for name, rec in new["feature_sets"].items():
        prev = old["feature_sets"].get(name)
        rec["view_versions"] = {v: new["views"][v]["version"] for v in rec["views"]}
        same = prev is not None and prev["schema"] == rec["schema"] and prev.get("view_versions") == rec["view_versions"]
        if same:
            rec["version"] = prev["version"]
        else:
            rec["version"] = max(high_water.get(name, 0), prev["version"] if prev else 0) + 1
            if prev is not None:
                why = "schema changes" if prev["schema"] != rec["schema"] else "a view it reads has a new version"
                note = f"{name}: {why} (version {prev['version']} -> {rec['version']}); models trained on version {prev['version']} must be retrained"
                extra: tuple[FieldChange, ...] = ()
                if prev["schema"] != rec["schema"]:
                    before = [f"{c['ref']} {c['dtype']}" for c in prev["schema"]]
                    after = [f"{c['ref']} {c['dtype']}" for c in rec["schema"]]
                    gone, came = [c for c in before if c not in after], [c for c in after if c not in before]
                    extra += (FieldChange("schema (dropped -> added)", gone, came) if gone or came else FieldChange("schema order", before, after),)
                old_vv = prev.get("view_versions") or {}
                extra += tuple(
                    FieldChange(f"view_versions[{v}]", old_vv[v], ver)
                    for v, ver in rec["view_versions"].items()
                    if v in old_vv and old_vv[v] != ver
                )
                for i, c in enumerate(changes):
                    if c.group == "feature_sets" and c.name == name:
                        changes[i] = ObjectChange(c.kind, c.name, c.action, (*c.fields, *extra), c.breaking, (*c.warnings, note), c.rekey)
                        break
                else:  # the set's own definition is unchanged
                    changes.append(ObjectChange("FeatureSet", name, "change", extra, warnings=(note,)))
        high_water[name] = max(high_water.get(name, 0), rec["version"])

    proposed = {
        "fingerprint": repo.fingerprint(),
        "definitions": str(repo.source) if repo.source else None,
        **new,
        "high_water": {"feature_sets": high_water},
    }
    return Plan(base_version=live.version if live else None, fingerprint=repo.fingerprint(), changes=tuple(changes), proposed=proposed)


def _check_entity(name: str, prev: dict, rec: dict, used_by: dict) -> tuple[list[str], list[str], bool]:
    breaking = []
    if prev["spec"].get("join_keys") != rec["spec"].get("join_keys"):
        breaking.append(f"entity {name}: join keys change {tuple(prev['spec']['join_keys'])} -> {tuple(rec['spec']['join_keys'])}; stored values are keyed by them")
    return breaking, [], False


def _check_view(name: str, prev: dict, rec: dict, used_by: dict) -> tuple[list[str], list[str], bool]:
    breaking: list[str] = []
    warnings: list[str] = []
    rekey = False
    po, pn = prev["spec"], rec["spec"]

    def breaks(reason: str, new_keys: bool = True) -> None:
        nonlocal rekey
        breaking.append(f"{name}: {reason}")
        rekey = rekey or new_keys

    if prev["kind"] != rec["kind"]:
        breaks(f"changes kind {prev['kind']} -> {rec['kind']}")
    if prev["join_keys"] != rec["join_keys"] or _entity_names(po) != _entity_names(pn):
        breaks(f"entities/join keys change {tuple(prev['join_keys'])} -> {tuple(rec['join_keys'])}")
    old_src, new_src = po.get("source") or {}, pn.get("source") or {}
    if old_src.get("timestamp_field") != new_src.get("timestamp_field") and prev["kind"] != "RequestFeatureView":
        breaks(f"source timestamp field changes {old_src.get('timestamp_field')!r} -> {new_src.get('timestamp_field')!r}")
    elif old_src != new_src:
        warnings.append(f"{name}: source changes; re-materialize so stored values come from the new source")
    if rec["kind"] == prev["kind"] == WindowedFeatureView.__name__:
        old_hops, new_hops = _hops(po), _hops(pn)
        moved = [(w, old_hops[w], new_hops[w]) for w in new_hops if w in old_hops and old_hops[w] != new_hops[w]]
        if moved:
            what = ", ".join(f"{_label(w)}: {_label(a)} -> {_label(b)}" for w, a, b in sorted(moved))
            breaks(f"hops change ({what}); stored tiles no longer line up")
        old_aggs, new_aggs = _aggs_by_key(po), _aggs_by_key(pn)
        for key, agg in new_aggs.items():
            before = old_aggs.get(key)
            if before is None:
                continue
            for attr in ("function", "column", "n", "dtype"):
                if before.get(attr) != agg.get(attr):
                    breaks(f"aggregation {key!r} changes {attr} {before.get(attr)!r} -> {agg.get(attr)!r}; stored tiles hold the old aggregate")
            if before.get("windows") != agg.get("windows"):
                warnings.append(f"{name}: aggregation {key!r} changes windows; re-materialize to fill longer windows")
        if po.get("stream") != pn.get("stream"):
            warnings.append(f"{name}: stream source changes; check the streaming updater reads the same columns as the batch source")
    old_feats = {f["name"]: f for f in prev["features"]}
    new_feats = {f["name"]: f for f in rec["features"]}
    for fname, f in old_feats.items():
        ref = f"{name}:{fname}"
        g = new_feats.get(fname)
        if g is None:
            if ref in used_by:
                breaks(
                    f"removes feature {fname!r}, which live feature set(s) {', '.join(sorted(used_by[ref]))} use; "
                    "remove it from the set(s) and apply first",
                    new_keys=False,
                )
            else:
                warnings.append(f"{name}: feature {fname!r} removed")
        elif (f["dtype"], f.get("dim")) != (g["dtype"], g.get("dim")):
            breaks(f"feature {fname!r} changes type {f['dtype']}{_dim(f)} -> {g['dtype']}{_dim(g)}")
    added = [n for n in new_feats if n not in old_feats]
    if added and rec["kind"] != "RequestFeatureView":
        warnings.append(f"{name}: new feature(s) {', '.join(added)}; re-materialize the view (`cascade features materialize`) before serving them")
    old_defaults = {f["name"]: f.get("default") for f in po.get("features", [])}
    for f in pn.get("features", []):
        if f["name"] in old_defaults and old_defaults[f["name"]] != f.get("default"):
            warnings.append(f"{name}: default of {f['name']!r} changes {old_defaults[f['name']]!r} -> {f.get('default')!r}")
    if po.get("ttl") != pn.get("ttl"):
        warnings.append(f"{name}: ttl changes {_show(po.get('ttl'))} -> {_show(pn.get('ttl'))}; which values count as fresh changes")
    if po.get("online") != pn.get("online"):
        warnings.append(f"{name}: online changes {po.get('online')} -> {pn.get('online')}")
    if rec["kind"] == "RequestFeatureView" == prev["kind"]:
        if po.get("inputs") != pn.get("inputs"):
            warnings.append(f"{name}: request inputs change {po.get('inputs')} -> {pn.get('inputs')}")
        if po.get("function") != pn.get("function"):
            warnings.append(f"{name}: request function changes; models trained on the old function see different values")
    return breaking, warnings, rekey


def _check_set(name: str, prev: dict, rec: dict, used_by: dict) -> tuple[list[str], list[str], bool]:
    return [], [], False  # schema changes are noted when the set's version is bumped


def _entity_names(view_spec: Mapping[str, Any]) -> list[str]:
    return [e["name"] for e in view_spec.get("entities", [])]


def _agg_key(agg: Mapping[str, Any]) -> str:
    """Base output name of an aggregation spec (mirrors Aggregation.output_names)."""
    if agg.get("name"):
        return agg["name"]
    if agg.get("function") == "last_n":
        return f"{agg.get('column')}_last{agg.get('n')}"
    return f"{agg['column']}_{agg['function']}" if agg.get("column") else agg["function"]


def _hops(view_spec: Mapping[str, Any]) -> dict[float, float]:
    """{window seconds: hop seconds} of a windowed view's spec (an explicit tile, else the default ladder)."""
    tile = view_spec.get("tile")
    out: dict[float, float] = {}
    for agg in view_spec.get("aggregations", []):
        for w in agg.get("windows", []):
            seconds = w["seconds"] if _is_duration(w) else float(w)
            if tile:
                out[seconds] = tile["seconds"]
            else:
                try:
                    out[seconds] = default_hop(timedelta(seconds=seconds)).total_seconds()
                except ValueError:
                    out[seconds] = float("nan")
    return out


def _label(seconds: float) -> str:
    return _show({"seconds": seconds})


def _aggs_by_key(view_spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {_agg_key(a): a for a in view_spec.get("aggregations", [])}


def _dim(f: Mapping[str, Any]) -> str:
    return f"[{f['dim']}]" if f.get("dim") else ""


def _is_duration(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"seconds"}


def _show(v: Any) -> str:
    if _is_duration(v):
        try:
            return window_label(timedelta(seconds=v["seconds"]))
        except ValueError:
            return f"{v['seconds']}s"
    if v is None:
        return "None"
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else repr(v)


def _keyed(items: list[Any], path: str) -> dict[str, Any] | None:
    """Lists of named things diff by name ("features[age]"), aggregations by output base name."""
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    if path.endswith("aggregations"):
        keys = [_agg_key(i) for i in items]
    elif all(i.get("name") for i in items):
        keys = [i["name"] for i in items]
    else:
        return None
    return dict(zip(keys, items, strict=True)) if len(set(keys)) == len(keys) else None


def _diff(old: Any, new: Any, path: str = "") -> Iterator[FieldChange]:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict) and not _is_duration(old) and not _is_duration(new):
        for key in [*old, *(k for k in new if k not in old)]:
            if key == "kind" and not path:
                if old.get(key) != new.get(key):
                    yield FieldChange("kind", old.get(key), new.get(key))
                continue
            sub = f"{path}.{key}" if path else key
            if key not in new:
                yield FieldChange(sub, old[key], None)
            elif key not in old:
                yield FieldChange(sub, None, new[key])
            else:
                yield from _diff(old[key], new[key], sub)
        return
    if isinstance(old, list) and isinstance(new, list):
        ko, kn = _keyed(old, path), _keyed(new, path)
        if ko is not None and kn is not None:
            for key in [*ko, *(k for k in kn if k not in ko)]:
                sub = f"{path}[{key}]"
                if key not in kn:
                    yield FieldChange(sub, "present", "removed")
                elif key not in ko:
                    yield FieldChange(sub, "absent", "added")
                else:
                    yield from _diff(ko[key], kn[key], sub)
            if list(ko) != list(kn) and set(ko) == set(kn):
                yield FieldChange(f"{path} order", list(ko), list(kn))
            return
    yield FieldChange(path, old, new)


__all__ = [
    "AppliedVersion",
    "BreakingChangeError",
    "FieldChange",
    "ObjectChange",
    "Plan",
    "Registry",
    "RegistryError",
]
