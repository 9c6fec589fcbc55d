"""The in-process serving API of the feature store: `FeatureClient.get_online_features`.

Ranking, recall and the feed call this directly; the gRPC FeatureService
(:mod:`featurestore.service`) is a thin shell around it. A call:

1. resolves what to read -- explicit ``"view:feature"`` references or a feature
   set -- once per distinct request shape (cached), validating unknown views,
   features, sets and entity types with the :class:`FeatureRequestError` family;
2. validates the entity keys (types, arity) and reads every online view in one
   pipelined round trip (:meth:`featurestore.online.OnlineStore.read`);
3. computes :class:`~featurestore.definitions.RequestFeatureView` features from
   the request context by calling the view's own ``function`` -- the same
   function the offline store applies to label rows -- once per request and
   broadcasts the values to every row (see :func:`request_feature_values`);
4. returns an :class:`OnlineFeatures` (an :class:`~featurestore.online.OnlineResult`)
   whose columns are in the requested order, with a status per value: a missing
   entity gets the feature's default flagged NOT_FOUND (DEFAULTED for a window
   with no event), a row older than the view's TTL OUTSIDE_MAX_AGE.

Entity keys
-----------
* A sequence of keys of one *entity type*: scalars (``[1, 2, 3]``) for an entity
  with one join key, tuples (``[(1, "a"), ...]``) for a composite key. The entity
  type is an entity name (``"user"``) or the entity names of a multi-entity
  view joined by ``_`` (``"user_item"``). A view is served for an entity type
  when its join keys are among the type's (so ``user_item`` keys also fetch
  ``user`` and ``item`` features).
* Or a mapping ``{join_key: values}`` of equally long columns (``{"user_id":
  [u] * n, "item_id": items}``): each view takes its own join keys. This is how
  ranking fetches a whole feature set (user, item and request features) in one
  call; ``entity_type`` may then be None.

Key values are ``int``, ``str`` (non-empty) or ``bool``. An integer and its
decimal string address the same online row (``42`` and ``"42"``), which is what
lets the gRPC service, whose keys are strings, read rows written from integer
columns.

Feature selection
-----------------
``features`` is a list of references (``"view:feature"``, or ``"view:*"`` for a
whole view), or a feature set: its name, a ``FeatureSet`` or a
``ResolvedFeatureSet``. With ``entity_type`` given, a feature set contributes
only its features keyed by that entity type (as the proto's
``GetOnlineFeaturesRequest.feature_set`` says); with ``entity_type=None`` and
mapping keys, all of them, request features included.

Blocking: reads use blocking redis-py. From asyncio code call
:meth:`FeatureClient.get_online_features_async`, which runs the call in a
worker thread (``asyncio.to_thread``); everything but the read itself is a few
microseconds of Python per call plus O(rows) key checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from featurestore.definitions import (
    Feature,
    FeatureSet,
    FeatureView,
    RequestFeatureView,
    ValueType,
    WindowedFeatureView,
    parse_ref,
)
from featurestore.online import FeatureStatus, OnlineResult, OnlineStore
from featurestore.online.codec import to_micros
from featurestore.online.store import ReadPlan
from featurestore.repository import FeatureRepo, ResolvedFeatureSet, UnknownDefinition
from featurestore.shared_cache import SharedEntityCache

REQUEST_TIME_INPUT = "event_ts"  # request-context key filled with the serving time when the caller gives none
_PLAN_CACHE_SIZE = 1024
_NAT = np.iinfo(np.int64).min

# ----------------------------------------------------------------------------- errors


class FeatureRequestError(ValueError):
    """A feature request the store cannot serve as asked; the message says what to fix.

    ``not_found`` tells a transport which status to use: True for names the
    repository does not define (gRPC NOT_FOUND), False for malformed input
    (gRPC INVALID_ARGUMENT).
    """

    not_found = False


class UnknownFeature(FeatureRequestError):
    """A reference names a feature view or a feature the repository does not define."""

    not_found = True


class UnknownFeatureSet(FeatureRequestError):
    """No feature set of that name (or not at the requested version)."""

    not_found = True


class UnknownEntity(FeatureRequestError):
    """The entity type is neither an entity nor a multi-entity view's combination."""

    not_found = True


class InvalidEntityKey(FeatureRequestError):
    """An entity key of the wrong type or arity, an empty key, or missing join-key columns."""


class InvalidFeatureReference(FeatureRequestError):
    """A malformed or duplicate reference, an offline-only view, or a view not keyed by the entity type."""


class InvalidRequestContext(FeatureRequestError):
    """The request context lacks an input a request feature view needs, or its function rejected it."""


# ----------------------------------------------------------------------------- results


class OnlineFeatures(OnlineResult):
    """An :class:`OnlineResult` plus what was asked: keys by join key, serving time, feature set.

    Rows follow the request's entity keys, columns the requested features. On
    top of :class:`OnlineResult` (``column``, ``values``, ``statuses``,
    ``valid``, ``to_rows``, ``to_dict``, ``status``, ``event_ts``):

    * ``key_columns`` -- ``{join_key: [value per row]}`` of the keys read;
    * ``served_at`` -- the time the values were read as of (TTL and windows);
    * ``feature_set`` / ``feature_set_version`` -- set when a set was requested
      (the version when the client knows the registry's);
    * ``request_context`` -- the context request features were computed from
      (``event_ts`` filled in with ``served_at`` when the caller gave none);
    * ``missing`` -- True where the value is a default or absent rather than stored.
    """

    def __init__(self, entity_keys: Sequence[Any], refs: Sequence[str], features: Sequence[Feature],
                 columns: list[Any], status: np.ndarray, event_ts: dict[str, np.ndarray], *,
                 key_columns: Mapping[str, Sequence[Any]], entity_type: str | None, served_at: datetime,
                 feature_set: str | None, feature_set_version: int | None,
                 request_context: Mapping[str, Any], views: Sequence[str]) -> None:
        super().__init__(entity_keys, refs, features, columns, status, event_ts)
        self.key_columns = dict(key_columns)
        self.entity_type = entity_type
        self.served_at = served_at
        self.feature_set = feature_set
        self.feature_set_version = feature_set_version
        self.request_context = dict(request_context)
        self.views = tuple(views)  # view name of each column

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(self.key_columns)

    @property
    def missing(self) -> np.ndarray:
        """(rows, features) bool: the value served is a default or absent (NOT_FOUND, OUTSIDE_MAX_AGE, DEFAULTED)."""
        st = self.status
        return (st != FeatureStatus.PRESENT) & (st != FeatureStatus.NULL_VALUE)

    @property
    def any_missing(self) -> bool:
        return bool(self.missing.any())

    def event_ts_ms(self, index: int) -> np.ndarray:
        """Event time (epoch ms, 0 where none) of column `index`'s values: its view's row or tile time."""
        ts = self.event_ts.get(self.views[index])
        if ts is None:
            return np.zeros(len(self), dtype=np.int64)
        raw = ts.view(np.int64)
        return np.where(raw == _NAT, 0, raw // 1000)

    def __repr__(self) -> str:
        what = f"feature set {self.feature_set!r}" if self.feature_set else f"{len(self.refs)} features"
        return f"<OnlineFeatures {len(self)} rows x {what}, {int(self.missing.sum())} missing values>"


# ----------------------------------------------------------------------------- request features


def online_features_from_table(table: Any, resolved: ResolvedFeatureSet, feature_set: str | None = None) -> OnlineFeatures:
    """A training table's rows (offline point-in-time values) as an OnlineFeatures, in the online read's conventions.

    Lets offline data go through exactly the serving path (encoders, scorers) -- benchmarks and
    train/serve parity tests -- without a round trip through Redis.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    cols, status = [], []
    for rf in resolved.features:
        col = table[rf.column]
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_integer(col.type):
            values: Any = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
        elif pa.types.is_floating(col.type):
            values = pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False)
        elif pa.types.is_list(col.type) and pa.types.is_integer(col.type.value_type):
            values = [np.asarray(v, dtype=np.int64) if v is not None else None for v in col.to_pylist()]
        else:
            values = col.to_pylist()
        cols.append(values)
        status.append(np.where(valid, FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE).astype(np.uint8))
    keys = {k: table[k].to_pylist() for k in resolved.join_keys}
    return OnlineFeatures(list(zip(*keys.values())), resolved.refs, [rf.feature for rf in resolved.features], cols,
                          np.stack(status, axis=1), {}, key_columns=keys, entity_type=None, served_at=None,
                          feature_set=feature_set or resolved.name, feature_set_version=None, request_context={},
                          views=[rf.view for rf in resolved.features])


def request_feature_values(view: RequestFeatureView, context: Mapping[str, Any]) -> dict[str, Any]:
    """The view's features for one request context (or one label row): ``view.function`` on its inputs.

    This is the one place request features are computed; the offline store
    should call it per label row (the row's columns as the context) so training
    and serving share the code path. Raises :class:`InvalidRequestContext` when
    an input is missing or the function fails on the given values.
    """
    missing = [name for name in view.inputs if name not in context]
    if missing:
        raise InvalidRequestContext(
            f"request feature view {view.name!r} needs request-context input(s) {', '.join(map(repr, missing))}"
            f" (it reads {', '.join(view.inputs)}; got {', '.join(sorted(map(str, context))) or 'nothing'})"
        )
    inputs = {name: context[name] for name in view.inputs}
    try:
        out = view.function(inputs)
    except Exception as exc:  # noqa: BLE001 - the function is user code; say which view and why
        raise InvalidRequestContext(
            f"request feature view {view.name!r} cannot compute its features from {inputs!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, Mapping):
        raise InvalidRequestContext(f"request feature view {view.name!r}: function returned {type(out).__name__}, not a mapping")
    return {f.name: out.get(f.name) for f in view.features}


def serving_time(now: datetime | None = None) -> datetime:
    """`now` (default: the current time) as an aware UTC datetime truncated to whole milliseconds.

    Reads happen as of this time and the served-feature log records it in
    epoch ms, so truncating keeps the logged time exactly the read's.
    """
    at = now if now is not None else datetime.now(UTC)
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _broadcast(f: Feature, value: Any, n: int) -> tuple[Any, int]:
    """A column of `n` copies of `value` in OnlineResult's conventions, and its status."""
    status = FeatureStatus.NULL_VALUE if value is None else FeatureStatus.PRESENT
    dt = f.dtype
    if dt is ValueType.FLOAT64:
        return np.full(n, np.nan if value is None else float(value)), status
    if dt is ValueType.INT64:
        return np.full(n, 0 if value is None else int(value), dtype=np.int64), status
    if dt is ValueType.BOOL:
        return np.full(n, bool(value) if value is not None else False), status
    if dt is ValueType.FLOAT_LIST and f.dim is not None:
        col = np.empty((n, f.dim))
        col[:] = np.nan if value is None else np.asarray(value, dtype=np.float64)
        return col, status
    if dt is ValueType.STRING and value is not None:
        value = str(value)
    elif dt.is_list and value is not None:
        value = list(value)
    return [value] * n, status


def _default_columns(features: Sequence[Feature], n: int) -> list[Any]:
    return [_broadcast(f, f.default, n)[0] for f in features]


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class _RequestRead:
    view: RequestFeatureView
    features: tuple[Feature, ...]
    positions: tuple[int, ...]  # output columns


@dataclass(frozen=True)
class _SharedSplit:
    """A plan's online views split into those of a shared entity (read through the cache) and the rest."""

    cached: ReadPlan
    cached_positions: np.ndarray  # output column of each cached store column
    join_key: str
    other: ReadPlan | None
    other_positions: np.ndarray


@dataclass(frozen=True)
class FeaturePlan:
    """What one request shape reads: resolved once, reused by every call with the same selection."""

    refs: tuple[str, ...]  # output columns, "view:feature"
    features: tuple[Feature, ...]
    views: tuple[str, ...]  # view of each output column
    read_plan: ReadPlan | None  # the online views, in the store's column order
    store_positions: np.ndarray  # output column of each store column
    request_reads: tuple[_RequestRead, ...]
    join_keys: tuple[str, ...]  # join keys the online views need, first-use order
    view_join_keys: tuple[tuple[str, ...], ...]  # distinct join-key tuples of the online views
    entity_type: str | None
    feature_set: str | None
    feature_set_version: int | None
    shared: _SharedSplit | None = None  # set when the client has a shared-entity cache and the plan reads such views

    @property
    def request_inputs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for r in self.request_reads for i in r.view.inputs))


class FeatureClient:
    """Online features for in-process callers; see the module docstring.

    ``feature_set_versions`` (``{set name: registry version}``) stamps results
    of feature-set requests with the live version, as served-vector logs and
    the gRPC response report it (:meth:`from_config` reads it from the registry).
    """

    def __init__(self, online_store: OnlineStore, repo: FeatureRepo, *,
                 feature_set_versions: Mapping[str, int] | None = None,
                 shared_cache: SharedEntityCache | None = None, cache_entities: Sequence[str] = ("item",)) -> None:
        self.store = online_store
        self.repo = repo
        self.feature_set_versions = dict(feature_set_versions or {})
        self.shared_cache = shared_cache  # rows of `cache_entities` views, from memory (featurestore.shared_cache)
        self.cache_entities = frozenset(cache_entities)
        self._plans: dict[Any, FeaturePlan] = {}
        self._entity_types = _entity_types(repo)

    @classmethod
    def from_config(cls, config: Any, redis_url: str, *, repo: FeatureRepo | None = None, registry: Any = None,
                    feature_set_versions: Mapping[str, int] | None = None, check_registry: bool = True,
                    shared_cache: bool = False) -> FeatureClient:
        """A client on `redis_url` for the configured project and definitions (its own Redis client: :meth:`close` it).

        `shared_cache`: serve rows of ``features.online_cache_entities`` (candidate items) from a
        refresh-ahead in-process cache, at most ``features.online_cache_ttl_ms`` old
        (:mod:`featurestore.shared_cache`; no cache when that is 0). For servers every request of
        which reads the same items (ranking); a generic feature service reads through.

        `repo` defaults to ``config.features.definitions`` (loaded once per
        process). Unless `feature_set_versions` is given, the registry
        (`registry`: a ``Registry`` or its directory, default
        ``config.registry_dir``) must have exactly these definitions live
        (``Registry.check_applied``, raising ``RegistryError`` otherwise) and
        supplies the set versions; with ``check_registry=False`` unapplied
        definitions are served without versions.
        """
        import logging

        from featurestore.registry import Registry, RegistryError
        from featurestore.repository import get_repo
        from stack.clients import redis_client

        repo = repo or get_repo(config.features.definitions)
        if feature_set_versions is None:
            reg = registry if isinstance(registry, Registry) else Registry(registry or config.registry_dir)
            try:
                live = reg.check_applied(repo)
            except RegistryError:
                if check_registry:
                    raise
                logging.getLogger("cascade.features").warning(
                    "serving feature definitions that are not applied in %s: feature-set versions unknown", reg.path)
                feature_set_versions = {}
            else:
                feature_set_versions = {name: live.feature_set_version(name) for name in repo.feature_sets}
        f = config.features
        store = OnlineStore.from_config(redis_client(redis_url, config.redis), config)
        cache = None
        if shared_cache and f.online_cache_ttl_ms > 0:
            cache = SharedEntityCache(store, f.online_cache_ttl_ms / 1000.0, f.online_cache_refresh_ms / 1000.0,
                                      f.online_cache_max_entries)
        return cls(store, repo, feature_set_versions=feature_set_versions, shared_cache=cache,
                   cache_entities=f.online_cache_entities)

    def close(self) -> None:
        """Stop the shared cache's refresher and close the online store's Redis client (when this client owns it)."""
        if self.shared_cache is not None:
            self.shared_cache.close()
        self.store.client.close()

    # -- entity types

    @property
    def entity_types(self) -> Mapping[str, tuple[str, ...]]:
        """``{entity type: join keys}``: every entity, and every multi-entity view's combination."""
        return dict(self._entity_types)

    def join_keys_of(self, entity_type: str) -> tuple[str, ...]:
        try:
            return self._entity_types[entity_type]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._entity_types)) or "none"
            raise UnknownEntity(f"unknown entity type {entity_type!r} (defined: {known})") from None

    # -- planning

    def plan(self, features: Any, entity_type: str | None = None) -> FeaturePlan:
        """Resolve and validate a feature selection for an entity type (cached per distinct selection)."""
        key = (_selection_key(features), entity_type)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        plan = self._build_plan(key[0], entity_type)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _build_plan(self, selection: tuple[str, Any], entity_type: str | None) -> FeaturePlan:
        entity_keys = self.join_keys_of(entity_type) if entity_type is not None else None
        kind, what = selection
        set_name: str | None = None
        chosen: list[tuple[Any, Feature]] = []  # (view, feature)
        if kind == "set":
            set_name = what
            try:
                resolved: ResolvedFeatureSet = self.repo.resolve(what)
            except UnknownDefinition as exc:
                raise UnknownFeatureSet(str(exc)) from None
            for rf in resolved.features:
                view = self.repo.view(rf.view)
                if entity_keys is not None and (rf.is_request or not set(rf.join_keys) <= set(entity_keys)):
                    continue
                chosen.append((view, rf.feature))
            if not chosen:
                keyed = sorted({"_".join(e.name for e in v.entities) for v in resolved.views if not isinstance(v, RequestFeatureView)})
                raise InvalidFeatureReference(
                    f"feature set {what!r} has no features keyed by entity type {entity_type!r}"
                    f" (its features are keyed by: {', '.join(keyed) or 'nothing; request features only'})"
                )
        else:
            seen: set[str] = set()
            if not what:
                raise InvalidFeatureReference("no features requested")
            for ref in what:
                if not isinstance(ref, str):
                    raise InvalidFeatureReference(f"feature reference {ref!r} is not a string")
                try:
                    view_name, feat = parse_ref(ref)
                except ValueError as exc:
                    raise InvalidFeatureReference(str(exc)) from None
                try:
                    view = self.repo.view(view_name)
                except UnknownDefinition as exc:
                    raise UnknownFeature(f"feature reference {ref!r}: {exc}") from None
                if feat == "*":
                    feats = list(view.features)
                else:
                    feats = [f for f in view.features if f.name == feat]
                    if not feats:
                        raise UnknownFeature(
                            f"feature reference {ref!r}: view {view_name!r} has no feature {feat!r} (it has {', '.join(view.feature_names)})"
                        )
                for f in feats:
                    full = f"{view.name}:{f.name}"
                    if full in seen:
                        raise InvalidFeatureReference(f"feature {full!r} is requested twice")
                    seen.add(full)
                    if not isinstance(view, RequestFeatureView):
                        if not view.online:
                            raise InvalidFeatureReference(f"feature {full!r}: view {view.name!r} is offline-only (online=False)")
                        if entity_keys is not None and not set(view.join_keys) <= set(entity_keys):
                            raise InvalidFeatureReference(
                                f"feature {full!r} is keyed by {'_'.join(e.name for e in view.entities)!r}"
                                f" (join keys {', '.join(view.join_keys)}), not by entity type {entity_type!r}"
                                f" (join keys {', '.join(entity_keys)})"
                            )
                    chosen.append((view, f))
        return self._assemble(chosen, entity_type, set_name)

    def _assemble(self, chosen: list[tuple[Any, Feature]], entity_type: str | None, set_name: str | None) -> FeaturePlan:
        refs = tuple(f"{v.name}:{f.name}" for v, f in chosen)
        out_index = {r: i for i, r in enumerate(refs)}
        online: dict[str, tuple[Any, list[str]]] = {}
        request: dict[str, tuple[RequestFeatureView, list[Feature], list[int]]] = {}
        for i, (view, f) in enumerate(chosen):
            if isinstance(view, RequestFeatureView):
                entry = request.setdefault(view.name, (view, [], []))
                entry[1].append(f)
                entry[2].append(i)
            else:
                if not view.online:
                    raise InvalidFeatureReference(f"feature {view.name}:{f.name}: view {view.name!r} is offline-only (online=False)")
                online.setdefault(view.name, (view, []))[1].append(f.name)
        read_plan = self.store.plan([(view, tuple(names)) for view, names in online.values()]) if online else None
        store_positions = np.array([out_index[r] for r in read_plan.refs], dtype=np.int64) if read_plan else np.zeros(0, np.int64)
        views = [v for v, _ in online.values()]
        join_keys = tuple(dict.fromkeys(k for v in views for k in v.join_keys))
        shared = self._shared_split(online, out_index) if self.shared_cache is not None else None
        return FeaturePlan(
            refs=refs,
            features=tuple(f for _, f in chosen),
            views=tuple(v.name for v, _ in chosen),
            read_plan=read_plan,
            store_positions=store_positions,
            request_reads=tuple(_RequestRead(v, tuple(fs), tuple(ps)) for v, fs, ps in request.values()),
            join_keys=join_keys,
            view_join_keys=tuple(dict.fromkeys(v.join_keys for v in views)),
            entity_type=entity_type,
            feature_set=set_name,
            feature_set_version=self.feature_set_versions.get(set_name) if set_name else None,
            shared=shared,
        )

    def _shared_split(self, online: Mapping[str, tuple[Any, list[str]]], out_index: Mapping[str, int]) -> _SharedSplit | None:
        """Views of one cached entity (all keyed by the same single join key) apart from the rest, or None."""
        cached = {name: vf for name, vf in online.items()
                  if len(vf[0].entities) == 1 and vf[0].entities[0].name in self.cache_entities}
        join_keys = {vf[0].join_keys for vf in cached.values()}
        if not cached or len(join_keys) != 1 or len(next(iter(join_keys))) != 1:
            return None
        rest = [vf for name, vf in online.items() if name not in cached]
        cached_plan = self.store.plan([(view, tuple(names)) for view, names in cached.values()])
        other = self.store.plan([(view, tuple(names)) for view, names in rest]) if rest else None

        def positions(p: ReadPlan | None) -> np.ndarray:
            return np.array([out_index[r] for r in p.refs], dtype=np.int64) if p is not None else np.zeros(0, np.int64)

        return _SharedSplit(cached_plan, positions(cached_plan), next(iter(join_keys))[0], other, positions(other))

    # -- reading

    def get_online_features(self, entity_type: str | None, entity_keys: Sequence[Any] | Mapping[str, Sequence[Any]],
                            features: Sequence[str] | str | FeatureSet | ResolvedFeatureSet,
                            request_context: Mapping[str, Any] | None = None, *,
                            now: datetime | None = None) -> OnlineFeatures:
        """Features of many entities, one row per key, columns in the requested order.

        `now` (default: the current time) is the serving time: it decides TTL
        expiry and window contents, and fills ``request_context["event_ts"]``
        when the caller gives none. Raises a :class:`FeatureRequestError`
        subclass for anything wrong with the request; Redis errors propagate.
        """
        plan = self.plan(features, entity_type)
        key_columns, keys_out, n = self._entity_columns(plan, entity_type, entity_keys)
        return self.read_plan(plan, key_columns, keys_out, n, request_context, now)

    async def get_online_features_async(self, entity_type: str | None, entity_keys: Sequence[Any] | Mapping[str, Sequence[Any]],
                                        features: Sequence[str] | str | FeatureSet | ResolvedFeatureSet,
                                        request_context: Mapping[str, Any] | None = None, *,
                                        now: datetime | None = None) -> OnlineFeatures:
        """:meth:`get_online_features` in a worker thread, for asyncio servers (the Redis read blocks)."""
        return await asyncio.to_thread(self.get_online_features, entity_type, entity_keys, features, request_context, now=now)

    def read_plan(self, plan: FeaturePlan, key_columns: Mapping[str, Sequence[Any]], keys_out: Sequence[Any], n: int,
                  request_context: Mapping[str, Any] | None, served_at: datetime | None = None) -> OnlineFeatures:
        """Read a prepared plan for validated key columns (the service's fast path; see `get_online_features`)."""
        served_at = serving_time(served_at)
        k = len(plan.refs)
        columns: list[Any] = [None] * k
        status = np.empty((n, k), dtype=np.uint8)
        event_ts: dict[str, np.ndarray] = {}
        if plan.shared is not None and n and self.shared_cache is not None:
            sh = plan.shared
            parts = [(self.shared_cache.read(sh.cached, sh.join_key, key_columns[sh.join_key], served_at), sh.cached_positions)]
            if sh.other is not None:
                parts.append((self.store.read(sh.other, key_columns, now=served_at), sh.other_positions))
            for res, positions in parts:
                for r, pos in zip(res.refs, positions.tolist()):
                    columns[pos] = res.column(r)
                status[:, positions] = res.status
                event_ts.update(res.event_ts)
        elif plan.read_plan is not None:
            if n:
                res = self.store.read(plan.read_plan, key_columns, now=served_at)
                store_cols = [res.column(r) for r in res.refs]
                event_ts.update(res.event_ts)
                store_status = res.status
            else:
                store_cols = _default_columns(plan.read_plan.features, 0)
                store_status = np.empty((0, len(plan.read_plan.refs)), dtype=np.uint8)
            for j, pos in enumerate(plan.store_positions.tolist()):
                columns[pos] = store_cols[j]
            status[:, plan.store_positions] = store_status
        context = dict(request_context or {})
        if plan.request_reads:
            if context.get(REQUEST_TIME_INPUT) is None:
                context[REQUEST_TIME_INPUT] = served_at
            served_us = np.full(n, to_micros(served_at), dtype=np.int64).view("datetime64[us]")
            for rr in plan.request_reads:
                values = request_feature_values(rr.view, context)
                for f, pos in zip(rr.features, rr.positions):
                    try:
                        columns[pos], st = _broadcast(f, values[f.name], n)
                    except (TypeError, ValueError) as exc:
                        raise InvalidRequestContext(
                            f"request feature {rr.view.name}:{f.name} ({f.dtype.value}): the function returned "
                            f"{values[f.name]!r}, which is not a {f.dtype.value}: {exc}"
                        ) from exc
                    status[:, pos] = st
                event_ts[rr.view.name] = served_us
        return OnlineFeatures(
            keys_out, plan.refs, plan.features, columns, status, event_ts,
            key_columns=key_columns, entity_type=plan.entity_type, served_at=served_at,
            feature_set=plan.feature_set, feature_set_version=plan.feature_set_version,
            request_context=context, views=plan.views,
        )

    def _entity_columns(self, plan: FeaturePlan, entity_type: str | None,
                        entity_keys: Sequence[Any] | Mapping[str, Sequence[Any]]) -> tuple[dict[str, Sequence[Any]], Sequence[Any], int]:
        """Validated ``{join_key: column}``, the keys to echo per row, and the row count."""
        if isinstance(entity_keys, Mapping):
            return _mapping_columns(plan, entity_keys)
        if isinstance(entity_keys, (str, bytes)) or not isinstance(entity_keys, (Sequence, np.ndarray)):
            raise InvalidEntityKey(
                f"entity keys must be a sequence of keys or a {{join_key: values}} mapping, not {type(entity_keys).__name__}"
            )
        if entity_type is not None:
            join_keys = self.join_keys_of(entity_type)
        elif len(plan.view_join_keys) == 1:
            join_keys = plan.view_join_keys[0]
        elif not plan.view_join_keys:
            join_keys = ()
        else:
            raise InvalidEntityKey(
                "the requested features are keyed by different join keys "
                f"({'; '.join(', '.join(k) for k in plan.view_join_keys)}): give an entity_type or a {{join_key: values}} mapping"
            )
        keys = entity_keys.tolist() if isinstance(entity_keys, np.ndarray) else entity_keys
        n = len(keys)
        if not join_keys:  # request features only: the keys are just echoed
            return {}, keys, n
        if len(join_keys) == 1:
            _check_column(join_keys[0], keys, scalar_hint=True)
            return {join_keys[0]: keys}, keys, n
        arity = len(join_keys)
        for i, key in enumerate(keys):
            if not isinstance(key, (tuple, list)) or len(key) != arity:
                raise InvalidEntityKey(
                    f"entity key #{i} {key!r}: entity type {entity_type!r} has a composite key of {arity} parts "
                    f"({', '.join(join_keys)}); pass a tuple of {arity} values"
                )
        cols = [list(c) for c in zip(*keys)] if n else [[] for _ in join_keys]
        for name, col in zip(join_keys, cols):
            _check_column(name, col)
        return dict(zip(join_keys, cols)), keys, n


def _mapping_columns(plan: FeaturePlan, entity_keys: Mapping[str, Sequence[Any]]) -> tuple[dict[str, Sequence[Any]], Sequence[Any], int]:
    missing = [k for k in plan.join_keys if k not in entity_keys]
    if missing:
        raise InvalidEntityKey(
            f"entity keys lack join key column(s) {', '.join(map(repr, missing))} needed by the requested features"
            f" (got {', '.join(map(repr, entity_keys)) or 'none'})"
        )
    cols: dict[str, Sequence[Any]] = {}
    n: int | None = None
    for name, col in entity_keys.items():
        if isinstance(col, np.ndarray):
            if col.dtype.kind in "iub":
                col = col.tolist()
            elif col.dtype.kind in "UO":
                col = col.tolist()
                _check_column(name, col)
            else:
                raise InvalidEntityKey(f"join key {name!r}: values of dtype {col.dtype} are not valid keys; use integers or strings")
        elif isinstance(col, (str, bytes)) or not isinstance(col, Sequence):
            if hasattr(col, "to_pylist"):  # pyarrow arrays
                col = col.to_pylist()
            else:
                raise InvalidEntityKey(f"join key {name!r}: expected a sequence of values, got {type(col).__name__}")
            _check_column(name, col)
        else:
            _check_column(name, col)
        if n is None:
            n = len(col)
        elif len(col) != n:
            raise InvalidEntityKey(f"join key columns differ in length: {name!r} has {len(col)} values, expected {n}")
        cols[name] = col
    n = n or 0
    names = list(cols)
    keys_out = cols[names[0]] if len(names) == 1 else list(zip(*cols.values()))
    return cols, keys_out, n


_OK_TYPES = frozenset({int, str, bool})


def _check_column(name: str, values: Sequence[Any], scalar_hint: bool = False) -> None:
    """Reject key values the online layout cannot encode, or that cannot be a key: None, floats, bytes, ''."""
    types = set(map(type, values))
    if types <= {int}:
        return
    bad = types - _OK_TYPES
    if bad:
        bad = {t for t in bad if not issubclass(t, (np.integer, np.bool_, np.str_))}
    if bad:
        for i, v in enumerate(values):
            if type(v) in bad:
                hint = " (a composite key? pass entity_type for the combination)" if scalar_hint and isinstance(v, (tuple, list)) else ""
                raise InvalidEntityKey(
                    f"join key {name!r}: key #{i} {v!r} has type {type(v).__name__}; keys must be integers, strings or booleans{hint}"
                )
    if (str in types or np.str_ in types) and "" in values:  # one C-speed scan; the index only when found
        i = next(i for i, v in enumerate(values) if isinstance(v, str) and not v)
        raise InvalidEntityKey(f"join key {name!r}: key #{i} is an empty string")


def _selection_key(features: Any) -> tuple[str, Any]:
    if isinstance(features, str):
        return ("refs", (features,)) if ":" in features else ("set", features)
    if isinstance(features, (FeatureSet, ResolvedFeatureSet)):
        return ("set", features.name)
    if isinstance(features, (set, frozenset, Mapping)) or not hasattr(features, "__iter__"):
        raise InvalidFeatureReference(
            f"features must be a list of 'view:feature' references or a feature set name, not {type(features).__name__}"
        )
    refs = tuple(features)
    for ref in refs:
        if not isinstance(ref, str):
            raise InvalidFeatureReference(f"feature reference {ref!r} is not a string")
    return ("refs", refs)


def _entity_types(repo: FeatureRepo) -> dict[str, tuple[str, ...]]:
    types: dict[str, tuple[str, ...]] = {name: e.join_keys for name, e in repo.entities.items()}
    for view in repo.views.values():
        if isinstance(view, (FeatureView, WindowedFeatureView)) and len(view.entities) > 1:
            types.setdefault("_".join(e.name for e in view.entities), view.join_keys)
    return types


__all__ = [
    "FeatureClient",
    "FeaturePlan",
    "FeatureRequestError",
    "InvalidEntityKey",
    "InvalidFeatureReference",
    "InvalidRequestContext",
    "OnlineFeatures",
    "UnknownEntity",
    "UnknownFeature",
    "UnknownFeatureSet",
    "request_feature_values",
    "serving_time",
]
