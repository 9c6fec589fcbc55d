"""The resolved feature repository: every definition, validated and cross-linked once.

Feast re-parses its definitions on every read; here a process loads the
definitions file once at start-up (:func:`load_repo`), gets an immutable
:class:`FeatureRepo`, and asks it for what a model reads
(:meth:`FeatureRepo.resolve`). Training, serving, materialization and the
registry all work from the same resolved objects.

Naming of resolved features
---------------------------
* ``ref`` -- ``"<view>:<feature>"`` -- is the canonical name of a resolved
  feature: the keys of :meth:`ResolvedFeatureSet.schema`, the
  ``feature_names`` of the online response, the columns a training frame
  should carry. Feature names repeat across views (``rating_count_7d`` of a
  user and of an item), so the view is always part of the name.
* ``column`` -- ``"<view>__<feature>"`` -- is the same name made a plain
  identifier, for places where ``:`` is awkward (SQL aliases, ONNX inputs).
  A feature set may not contain two features with the same ``column``.

Order: a set's features are grouped by view, views in order of their first
reference in the set; inside a view, in the order listed (``view:*`` expands
to the view's features in definition order).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from featurestore.definitions import (
    AggregationFunction,
    AnyView,
    Entity,
    Feature,
    FeatureSet,
    FeatureView,
    ParquetSource,
    RequestFeatureView,
    SqlSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
    fingerprint,
    parse_ref,
    spec,
)

DEFINITION_TYPES = (Entity, FeatureView, WindowedFeatureView, RequestFeatureView, FeatureSet)
VIEW_TYPES = (FeatureView, WindowedFeatureView, RequestFeatureView)


class DefinitionError(ValueError):
    """The definitions are inconsistent; the message names every offending object."""

    def __init__(self, problems: Iterable[str], source: str | os.PathLike[str] | None = None) -> None:
        self.problems = tuple(problems)
        self.source = str(source) if source is not None else None
        where = f"{self.source}: " if self.source else ""
        if len(self.problems) == 1:
            message = f"{where}{self.problems[0]}"
        else:
            message = f"{where}{len(self.problems)} problems in the feature definitions:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class UnknownDefinition(KeyError):
    """A look-up of a name the repository does not define."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def column_name(view: str, feature: str) -> str:
    """The identifier-safe name of a resolved feature: ``user_profile__age``."""
    return f"{view}__{feature}"


def _code_digest(fn: Any) -> str | None:
    """A hash of a function's full code (bytecode, constants, names), nested functions included.

    :func:`featurestore.definitions.spec` hashes only the bytecode, which does not
    change when, say, ``ts.hour`` becomes ``ts.minute``; the registry needs to see that.
    """
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    h = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        h.update(c.co_code)
        h.update(repr(c.co_names).encode())
        h.update(repr(c.co_varnames).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            else:
                h.update(repr(const).encode())

    feed(code)
    defaults = getattr(fn, "__defaults__", None)
    if defaults:
        h.update(repr(defaults).encode())
    return h.hexdigest()[:16]


def object_spec(obj: Any) -> dict[str, Any]:
    """What the registry stores for a definition: :func:`spec`, plus a full code digest for request functions."""
    out = spec(obj)
    if isinstance(obj, RequestFeatureView) and isinstance(out.get("function"), dict):
        out["function"] = {**out["function"], "digest": _code_digest(obj.function)}
    return out


# ----------------------------------------------------------------------------- resolved feature sets


@dataclass(frozen=True)
class ResolvedFeature:
    """One feature of a feature set, with everything needed to fetch and type it."""

    ref: str  # "view:feature" -- the canonical name
    view: str  # view name
    feature: Feature
    dtype: ValueType
    join_keys: tuple[str, ...] = ()  # the view's entity join keys; empty for request features

    @property
    def name(self) -> str:
        """The feature's name inside its view."""
        return self.feature.name

    @property
    def column(self) -> str:
        """Identifier-safe alias of `ref`: ``view__feature``."""
        return column_name(self.view, self.feature.name)

    @property
    def default(self) -> Any:
        return self.feature.default

    @property
    def is_request(self) -> bool:
        """Computed from the request context rather than looked up by entity."""
        return not self.join_keys


@dataclass(frozen=True)
class ResolvedFeatureSet:
    """A feature set with its references expanded, ordered and typed."""

    name: str
    features: tuple[ResolvedFeature, ...]
    views: tuple[AnyView, ...]  # the views read, in feature order
    entities: tuple[Entity, ...]  # entities of those views, first-use order, no duplicates
    join_keys: tuple[str, ...]  # every join key needed to fetch the set, first-use order
    request_inputs: tuple[str, ...]  # request-context keys the request views read
    fingerprint: str  # changes whenever the set, or any view it reads, changes
    description: str = ""

    def __len__(self) -> int:
        return len(self.features)

    def __iter__(self) -> Iterator[ResolvedFeature]:
        return iter(self.features)

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f.ref for f in self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.features)

    def schema(self) -> dict[str, ValueType]:
        """Ordered ``{"view:feature": ValueType}``: the input schema of a model reading this set."""
        return {f.ref: f.dtype for f in self.features}

    def by_view(self) -> dict[str, tuple[ResolvedFeature, ...]]:
        """``{view name: its features in this set}``, in set order."""
        out: dict[str, list[ResolvedFeature]] = {}
        for f in self.features:
            out.setdefault(f.view, []).append(f)
        return {k: tuple(v) for k, v in out.items()}

    def for_entity(self, entity: str) -> tuple[ResolvedFeature, ...]:
        """The features fetched by one entity's key (views whose only entity is `entity`)."""
        names = {v.name for v in self.views if not isinstance(v, RequestFeatureView) and tuple(e.name for e in v.entities) == (entity,)}
        return tuple(f for f in self.features if f.view in names)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "join_keys": list(self.join_keys),
            "request_inputs": list(self.request_inputs),
            "features": [
                {"ref": f.ref, "column": f.column, "view": f.view, "dtype": f.dtype.value, "default": f.default, "join_keys": list(f.join_keys)}
                for f in self.features
            ],
        }


# ----------------------------------------------------------------------------- the repository


class FeatureRepo:
    """Every entity, view and feature set of a project, validated; immutable once built.

    Build it with :func:`load_repo` (from a definitions file) or directly from
    objects: ``FeatureRepo([user, user_profile, my_set])``. Any inconsistency
    raises :class:`DefinitionError` listing every problem.
    """

    def __init__(self, objects: Iterable[Any], source: str | os.PathLike[str] | None = None) -> None:
        self.source: Path | None = Path(source) if source is not None else None
        entities: dict[str, Entity] = {}
        views: dict[str, AnyView] = {}
        sets: dict[str, FeatureSet] = {}
        problems: list[str] = []
        seen: set[int] = set()
        for obj in objects:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, Entity):
                table, kind = entities, "entity"
            elif isinstance(obj, VIEW_TYPES):
                table, kind = views, "feature view"
            elif isinstance(obj, FeatureSet):
                table, kind = sets, "feature set"
            else:
                problems.append(f"{obj!r} is not a feature definition")
                continue
            if obj.name in table:
                if table[obj.name] != obj:
                    problems.append(f"{kind} {obj.name!r} is defined twice, differently")
                continue
            table[obj.name] = obj  # type: ignore[assignment]
        self._entities: dict[str, Entity] = entities
        self._views: dict[str, AnyView] = views
        self._sets: dict[str, FeatureSet] = sets
        problems += self._validate()
        self._resolved: dict[str, ResolvedFeatureSet] = {}
        if not problems:
            for name in sets:
                try:
                    self._resolved[name] = self._resolve(sets[name])
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise DefinitionError(problems, self.source)
        self._fingerprint = self._compute_fingerprint()

    # -- look-ups

    @property
    def entities(self) -> Mapping[str, Entity]:
        return types.MappingProxyType(self._entities)

    @property
    def views(self) -> Mapping[str, AnyView]:
        """``{name: view}`` of every kind, in definition order."""
        return types.MappingProxyType(self._views)

    @property
    def feature_sets(self) -> Mapping[str, FeatureSet]:
        return types.MappingProxyType(self._sets)

    def entity(self, name: str) -> Entity:
        return self._lookup(self._entities, "entity", name)

    def view(self, name: str) -> AnyView:
        return self._lookup(self._views, "feature view", name)

    def feature_set(self, name: str) -> FeatureSet:
        return self._lookup(self._sets, "feature set", name)

    def resolve(self, feature_set: str) -> ResolvedFeatureSet:
        """The ordered, typed features of a feature set (computed once, at construction)."""
        return self._lookup(self._resolved, "feature set", feature_set)

    def feature(self, ref: str) -> ResolvedFeature:
        """One ``"view:feature"`` reference, resolved."""
        view_name, feat = parse_ref(ref)
        view = self.view(view_name)
        for f in view.features:
            if f.name == feat:
                return _resolved_feature(view, f)
        raise UnknownDefinition(f"feature view {view_name!r} has no feature {feat!r}; it has {', '.join(view.feature_names)}")

    def views_of_kind(self, kind: type) -> dict[str, AnyView]:
        return {n: v for n, v in self._views.items() if isinstance(v, kind)}

    def objects(self) -> Iterator[Entity | AnyView | FeatureSet]:
        """Every definition: entities, then views, then feature sets."""
        yield from self._entities.values()
        yield from self._views.values()
        yield from self._sets.values()

    def fingerprint(self) -> str:
        """Content hash of the whole repository (request functions by their full code)."""
        return self._fingerprint

    def __repr__(self) -> str:
        src = f" from {self.source}" if self.source else ""
        return f"<FeatureRepo{src}: {len(self._entities)} entities, {len(self._views)} views, {len(self._sets)} feature sets>"

    @staticmethod
    def _lookup(table: Mapping[str, Any], kind: str, name: str) -> Any:
        try:
            return table[name]
        except KeyError:
            known = ", ".join(sorted(table)) or "none"
            raise UnknownDefinition(f"no {kind} named {name!r} (defined: {known})") from None

    # -- validation and resolution

    def _validate(self) -> list[str]:
        problems: list[str] = []
        for name, view in self._views.items():
            where = f"feature view {name!r}"
            if isinstance(view, RequestFeatureView):
                if not view.inputs:
                    problems.append(f"{where}: a request feature view needs at least one input")
                if not callable(view.function):
                    problems.append(f"{where}: function is not callable")
                if not view.features:
                    problems.append(f"{where}: defines no features")
                _unique_names(where, [f.name for f in view.features], problems)
            else:
                if not view.entities:
                    problems.append(f"{where}: needs at least one entity")
                for ent in view.entities:
                    declared = self._entities.get(ent.name)
                    if declared is None:
                        problems.append(f"{where}: entity {ent.name!r} is not declared at module level")
                    elif declared != ent:
                        problems.append(f"{where}: entity {ent.name!r} differs from the declared entity {ent.name!r} (join keys {ent.join_keys} vs {declared.join_keys})")
                _unique_names(f"{where} join keys", list(view.join_keys), problems)
                problems += _check_source(where, view.source)
                if isinstance(view, WindowedFeatureView):
                    if not view.aggregations:
                        problems.append(f"{where}: defines no aggregations")
                    for agg in view.aggregations:
                        if not isinstance(agg.function, AggregationFunction):
                            problems.append(f"{where}: aggregation function {agg.function!r} is not an AggregationFunction")
                        if agg.dtype is not None and agg.function is AggregationFunction.LAST_N and not (isinstance(agg.dtype, ValueType) and agg.dtype.is_list):
                            problems.append(f"{where}: last_n aggregation of {agg.column!r} needs a list dtype, not {agg.dtype!r}")
                    if view.stream is not None:
                        if not isinstance(view.stream, StreamSource):
                            problems.append(f"{where}: stream must be a StreamSource, not {type(view.stream).__name__}")
                        elif not view.stream.topic:
                            problems.append(f"{where}: stream source needs a topic")
                elif not view.features:
                    problems.append(f"{where}: defines no features")
                for feat in view.features:
                    if feat.name in view.join_keys:
                        problems.append(f"{where}: feature {feat.name!r} has the name of a join key")
            for feat in view.features:
                problems += _check_feature(where, feat)
        for name, fs in self._sets.items():
            where = f"feature set {name!r}"
            if not fs.features:
                problems.append(f"{where}: lists no features")
            for ref in fs.features:
                view_name, feat = parse_ref(ref)
                view = self._views.get(view_name)
                if view is None:
                    problems.append(f"{where}: reference {ref!r} names an unknown feature view {view_name!r}")
                elif feat != "*" and feat not in view.feature_names:
                    problems.append(f"{where}: reference {ref!r}: view {view_name!r} has no feature {feat!r} (it has {', '.join(view.feature_names)})")
        return problems

    def _resolve(self, fs: FeatureSet) -> ResolvedFeatureSet:
        where = f"feature set {fs.name!r}"
        groups: dict[str, list[ResolvedFeature]] = {}
        seen_refs: set[str] = set()
        for ref in fs.features:
            view_name, feat = parse_ref(ref)
            view = self._views[view_name]
            chosen = list(view.features) if feat == "*" else [f for f in view.features if f.name == feat]
            for f in chosen:
                rf = _resolved_feature(view, f)
                if rf.ref in seen_refs:
                    raise ValueError(f"{where}: feature {rf.ref!r} is listed twice (check 'view:*' entries)")
                seen_refs.add(rf.ref)
                groups.setdefault(view_name, []).append(rf)
        features = tuple(f for group in groups.values() for f in group)
        columns: dict[str, str] = {}
        for f in features:
            if f.column in columns:
                raise ValueError(f"{where}: {f.ref!r} and {columns[f.column]!r} share the column name {f.column!r}")
            columns[f.column] = f.ref
        views = tuple(self._views[n] for n in groups)
        entities: dict[str, Entity] = {}
        request_inputs: dict[str, None] = {}
        for v in views:
            if isinstance(v, RequestFeatureView):
                request_inputs.update(dict.fromkeys(v.inputs))
            else:
                entities.update((e.name, e) for e in v.entities)
        join_keys = tuple(dict.fromkeys(k for e in entities.values() for k in e.join_keys))
        digest = hashlib.sha256(
            json.dumps({"set": object_spec(fs), "views": {v.name: object_spec(v) for v in views}}, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        return ResolvedFeatureSet(
            name=fs.name,
            features=features,
            views=views,
            entities=tuple(entities.values()),
            join_keys=join_keys,
            request_inputs=tuple(request_inputs),
            fingerprint=digest,
            description=fs.description,
        )

    def _compute_fingerprint(self) -> str:
        parts = {f"{type(o).__name__}:{o.name}": object_spec(o) for o in self.objects()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def view_fingerprints(self) -> dict[str, str]:
        """``{view: fingerprint(view)}`` (the definitions module's content hash)."""
        return {n: fingerprint(v) for n, v in self._views.items()}


def _resolved_feature(view: AnyView, f: Feature) -> ResolvedFeature:
    join_keys = () if isinstance(view, RequestFeatureView) else view.join_keys
    return ResolvedFeature(ref=f"{view.name}:{f.name}", view=view.name, feature=f, dtype=f.dtype, join_keys=join_keys)


def _unique_names(where: str, names: list[str], problems: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            problems.append(f"{where}: {n!r} appears twice")
        seen.add(n)


def _check_source(where: str, source: Any) -> list[str]:
    if isinstance(source, ParquetSource):
        if not source.path:
            return [f"{where}: ParquetSource needs a path"]
    elif isinstance(source, SqlSource):
        if not source.query.strip():
            return [f"{where}: SqlSource needs a query"]
    else:
        return [f"{where}: source must be a ParquetSource or SqlSource, not {type(source).__name__}"]
    if not source.timestamp_field:
        return [f"{where}: source needs a timestamp_field"]
    return []


_SCALAR_CHECKS: dict[ValueType, tuple[type, ...]] = {
    ValueType.FLOAT64: (int, float),
    ValueType.INT64: (int,),
    ValueType.STRING: (str,),
    ValueType.BOOL: (bool,),
    ValueType.FLOAT_LIST: (int, float),
    ValueType.INT64_LIST: (int,),
    ValueType.STRING_LIST: (str,),
}


def _check_feature(where: str, feat: Feature) -> list[str]:
    name = f"{where}: feature {feat.name!r}"
    if not isinstance(feat.dtype, ValueType):
        return [f"{name}: dtype {feat.dtype!r} is not a ValueType"]
    problems = []
    if feat.dim is not None and (feat.dtype is not ValueType.FLOAT_LIST or feat.dim <= 0):
        problems.append(f"{name}: dim applies to FLOAT_LIST features only and must be > 0")
    d = feat.default
    if d is not None:
        allowed = _SCALAR_CHECKS[feat.dtype]
        values = d if feat.dtype.is_list else [d]
        if feat.dtype.is_list and not isinstance(d, (list, tuple)):
            problems.append(f"{name}: default {d!r} is not a list")
        elif any(not isinstance(v, allowed) or (isinstance(v, bool) and feat.dtype not in (ValueType.BOOL,)) for v in values):
            problems.append(f"{name}: default {d!r} does not match dtype {feat.dtype.value}")
        elif feat.dim is not None and len(values) != feat.dim:
            problems.append(f"{name}: default has {len(values)} values, dim is {feat.dim}")
    return problems


# ----------------------------------------------------------------------------- loading a definitions file


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"_cascade_features_{stem}_{digest}"


def load_repo(path: str | os.PathLike[str] | None = None) -> FeatureRepo:
    """Import a Python definitions file and collect every definition bound at module level.

    The file is imported under a private module name derived from its path
    (never as ``config.features``), so two files never collide and a second
    call reloads the file afresh. `path` defaults to ``config.features.definitions``.
    Errors raised while importing (including the definitions' own checks) come
    back as :class:`DefinitionError` naming the file.
    """
    if path is None:
        from cascade.config import get_config

        path = get_config().features.definitions
    file = Path(path).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"feature definitions file not found: {file}")
    name = _module_name(file)
    spec_ = importlib.util.spec_from_file_location(name, file)
    if spec_ is None or spec_.loader is None:
        raise DefinitionError([f"cannot import {file} as a Python module"], file)
    module = importlib.util.module_from_spec(spec_)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec_.loader.exec_module(module)
    except Exception as exc:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise DefinitionError([f"{type(exc).__name__}: {exc}"], file) from exc
    objects = [v for k, v in vars(module).items() if not k.startswith("__") and isinstance(v, DEFINITION_TYPES)]
    return FeatureRepo(objects, source=file)


@lru_cache(maxsize=4)
def _cached_repo(path: str) -> FeatureRepo:
    return load_repo(path)


def get_repo(path: str | os.PathLike[str] | None = None) -> FeatureRepo:
    """The process-wide repository of `path` (default: the configured definitions), loaded once."""
    if path is None:
        from cascade.config import get_config

        path = get_config().features.definitions
    return _cached_repo(str(Path(path).resolve()))


__all__ = [
    "DefinitionError",
    "FeatureRepo",
    "ResolvedFeature",
    "ResolvedFeatureSet",
    "UnknownDefinition",
    "column_name",
    "get_repo",
    "load_repo",
    "object_spec",
]
