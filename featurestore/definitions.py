"""Feature definitions: written once in Python, used by training and serving alike.

The objects here are plain frozen data: no I/O, no registry look-ups. The
offline store, the online store, materialization and the streaming updater all
interpret the same objects, which is what makes the served value equal the
trained value (Feast's separation of definitions from stores; Chronon's one
GroupBy for batch and streaming).

Naming: a feature is referenced as ``"<view>:<feature>"``. Window aggregations
name their outputs ``<column>_<function>_<window>`` (``rating_mean_7d``) or
``<name>_<window>`` when the aggregation has an explicit name.
"""

from __future__ import annotations

import enum
import hashlib
import json
import types
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must be lower_snake_case (a-z, 0-9, _), starting with a letter")


class ValueType(str, enum.Enum):
    """Types a feature value can take; lists cover embeddings and last-N histories."""

    FLOAT64 = "float64"
    INT64 = "int64"
    STRING = "string"
    BOOL = "bool"
    FLOAT_LIST = "float_list"
    INT64_LIST = "int64_list"
    STRING_LIST = "string_list"

    @property
    def is_list(self) -> bool:
        return self.value.endswith("_list")


@dataclass(frozen=True)
class Entity:
    """What features describe. Several join keys make a composite key (e.g. user × category)."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        if not self.join_keys:
            raise ValueError(f"entity {self.name!r} needs at least one join key")
        for key in self.join_keys:
            _check_name("join key", key)


@dataclass(frozen=True)
class Feature:
    """One typed column of a feature view. `default` is served for a missing entity."""

    name: str
    dtype: ValueType
    default: Any = None
    description: str = ""
    dim: int | None = None  # fixed length for FLOAT_LIST embeddings

    def __post_init__(self) -> None:
        _check_name("feature", self.name)


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files (a path or glob relative to the offline store's root, or absolute)."""

    path: str
    timestamp_field: str = "event_ts"
    created_timestamp_field: str | None = None


@dataclass(frozen=True)
class SqlSource:
    """A DuckDB query over Parquet sources; `{root}` in the query is the offline store's root."""

    query: str
    timestamp_field: str = "event_ts"
    created_timestamp_field: str | None = None


BatchSource = ParquetSource | SqlSource


@dataclass(frozen=True)
class StreamSource:
    """A Kafka topic carrying the same events as a batch source, for streaming updates.

    `fields` maps batch-source column names to keys of the decoded event record,
    so both paths read the same logical columns.
    """

    topic: str
    timestamp_field: str = "event_ts"
    fields: Mapping[str, str] = field(default_factory=dict)
    # Only records whose (mapped) fields equal these values count, e.g. {"event_type": "click"};
    # the batch source must select the same rows (its query's WHERE) so both paths agree.
    where: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity read from a batch source: the latest row as of a time, within `ttl`."""

    name: str
    entities: tuple[Entity, ...]
    source: BatchSource
    features: tuple[Feature, ...]
    ttl: timedelta | None = None  # None: values never expire
    online: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        _unique(self.name, [f.name for f in self.features])

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


class AggregationFunction(str, enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    LAST_N = "last_n"


_WINDOW_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def window_label(window: timedelta) -> str:
    """24h -> '24h', 7 days -> '7d', 90 minutes -> '90m'."""
    seconds = int(window.total_seconds())
    for unit, size in _WINDOW_UNITS.items():
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise ValueError(f"window {window} is not a whole number of seconds")


@dataclass(frozen=True)
class Aggregation:
    """One aggregate of a column over trailing windows (count ignores `column`)."""

    function: AggregationFunction
    windows: tuple[timedelta, ...]
    column: str | None = None
    n: int | None = None  # LAST_N: how many of the most recent values
    name: str | None = None
    dtype: ValueType | None = None  # LAST_N: type of the list (default INT64_LIST)

    def __post_init__(self) -> None:
        if self.function is not AggregationFunction.COUNT and not self.column:
            raise ValueError(f"{self.function.value} aggregation needs a column")
        if self.function is AggregationFunction.LAST_N and not (self.n and self.n > 0):
            raise ValueError("last_n aggregation needs n > 0")
        if not self.windows:
            raise ValueError("aggregation needs at least one window")

    def output_names(self) -> tuple[str, ...]:
        base = self.name or (f"{self.column}_{self.function.value}" if self.column else self.function.value)
        if self.function is AggregationFunction.LAST_N and not self.name:
            base = f"{self.column}_last{self.n}"
        return tuple(f"{base}_{window_label(w)}" for w in self.windows)

    def output_type(self) -> ValueType:
        if self.function is AggregationFunction.COUNT:
            return ValueType.INT64
        if self.function is AggregationFunction.LAST_N:
            return self.dtype or ValueType.INT64_LIST
        return ValueType.FLOAT64


HOP_LADDER: tuple[timedelta, ...] = (timedelta(minutes=5), timedelta(hours=1), timedelta(hours=6), timedelta(days=1))
"""The hops a window may get by default, finest first (Chronon's resolutions)."""
MAX_HOPS_PER_WINDOW = 48
"""A window gets the finest ladder hop that divides it into at most this many hops."""


def default_hop(window: timedelta) -> timedelta:
    """The hop of a window without an explicit `tile`: the smallest hop of `HOP_LADDER` that divides the
    window into at most `MAX_HOPS_PER_WINDOW` hops (1d -> 1h: 24 hops; 7d -> 6h: 28; 30d -> 1d: 30; 1h -> 5m: 12).

    A window no ladder hop divides into few enough hops (90 days) gets the coarsest ladder hop that divides
    it (1d: 90 hops); one no ladder hop divides at all (7 minutes) needs an explicit `tile`.
    """
    w = int(window.total_seconds())
    dividing = [h for h in HOP_LADDER if w % int(h.total_seconds()) == 0 and w > 0]
    for h in dividing:
        if w // int(h.total_seconds()) <= MAX_HOPS_PER_WINDOW:
            return h
    if dividing:
        return dividing[-1]
    raise ValueError(f"window {window_label(window)} is not a multiple of any default hop "
                     f"({', '.join(window_label(h) for h in HOP_LADDER)}): set the view's `tile`")


@dataclass(frozen=True)
class WindowedFeatureView:
    """Window aggregations over an event source, computed identically in batch and streaming.

    Every window hops by its own `hop` (Chronon's sawtooth windows): the value
    as of time t aggregates the events with
    ``hop_start(t) - window + hop <= ts <= t`` where ``hop_start(t) = floor(t / hop) * hop``
    (epoch-aligned UTC). So a window is exact at its new end and moves by whole
    hops at its old end; it spans between ``window - hop`` and ``window``.

    The hop of a window is `tile` when the view sets it (every window then hops
    by it and must be a multiple of it), else `default_hop(window)`: with the
    default ladder 1d windows hop by 1h, 7d by 6h, 30d by 1d. Coarser hops for
    longer windows keep the state small (24 + 28 + 30 hops for 1d/7d/30d
    instead of 720 one-hour tiles). Changing a window's hop changes what is
    stored (the registry treats it as breaking).

    COUNT/SUM/MEAN are sums of per-hop partial aggregates ("tiles"), the same
    in batch and streaming, so the online value equals the offline one
    exactly. A LAST_N aggregation keeps the n most recent non-null values
    (ties on time broken by arrival order) with ``ts`` in its window, with the
    same per-window hop rule; it is not tiled: the n most recent values in a
    window are the in-window members of the n most recent values overall.
    """

    name: str
    entities: tuple[Entity, ...]
    source: BatchSource
    aggregations: tuple[Aggregation, ...]
    tile: timedelta | None = None  # None: each window its default hop; set: every window hops by it
    stream: StreamSource | None = None
    online: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        if self.tile is not None:
            tile_s = int(self.tile.total_seconds())
            if tile_s <= 0 or self.tile != timedelta(seconds=tile_s):
                raise ValueError(f"{self.name}: tile must be positive (whole seconds)")
            for agg in self.aggregations:
                for w in agg.windows:
                    if int(w.total_seconds()) % tile_s:
                        raise ValueError(f"{self.name}: window {window_label(w)} is not a multiple of tile {window_label(self.tile)}")
        else:
            for agg in self.aggregations:
                for w in agg.windows:
                    try:
                        default_hop(w)
                    except ValueError as exc:
                        raise ValueError(f"{self.name}: {exc}") from None
        _unique(self.name, [n for a in self.aggregations for n in a.output_names()])

    def hop(self, window: timedelta) -> timedelta:
        """The hop of `window`: `tile` when set, else `default_hop(window)`."""
        return self.tile if self.tile is not None else default_hop(window)

    @property
    def hops(self) -> tuple[timedelta, ...]:
        """The distinct hops of the view's windows, finest first."""
        return tuple(sorted({self.hop(w) for a in self.aggregations for w in a.windows}))

    def hop_windows(self) -> dict[timedelta, timedelta]:
        """Each hop of a COUNT/SUM/MEAN window -> the longest such window with that hop (its ring spans it)."""
        out: dict[timedelta, timedelta] = {}
        for a in self.aggregations:
            if a.function is AggregationFunction.LAST_N:
                continue
            for w in a.windows:
                h = self.hop(w)
                out[h] = max(out.get(h, w), w)
        return dict(sorted(out.items()))

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def features(self) -> tuple[Feature, ...]:
        default_for = {ValueType.INT64: 0, ValueType.FLOAT64: None}
        return tuple(
            Feature(name, agg.output_type(), default=default_for.get(agg.output_type(), []))
            for agg in self.aggregations
            for name in agg.output_names()
        )

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def ttl(self) -> timedelta:
        """Nothing older than the longest window can contribute."""
        return max(w for a in self.aggregations for w in a.windows)


@dataclass(frozen=True)
class RequestFeatureView:
    """Features computed at request time from the request context, by the same function offline.

    `function` maps a dict of the named `inputs` (request-context keys, or
    label-table columns offline) to a dict of feature values.
    """

    name: str
    inputs: tuple[str, ...]
    features: tuple[Feature, ...]
    function: Callable[[Mapping[str, Any]], Mapping[str, Any]]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


AnyView = FeatureView | WindowedFeatureView | RequestFeatureView


@dataclass(frozen=True)
class FeatureSet:
    """The named list of features one model reads; its schema is derived, never hand-kept."""

    name: str
    features: tuple[str, ...]  # "view:feature" references, or "view:*" for every feature of a view
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature set", self.name)
        for ref in self.features:
            parse_ref(ref)


def parse_ref(ref: str) -> tuple[str, str]:
    """'view:feature' -> ('view', 'feature'), with a clear error for anything else."""
    view, sep, feat = ref.partition(":")
    if not sep or not view or not feat:
        raise ValueError(f"feature reference {ref!r} must look like 'view:feature'")
    return view, feat


def _unique(owner: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{owner}: feature {name!r} is defined twice")
        seen.add(name)


def _code_hash(code: types.CodeType) -> str:
    """Bytecode, constants and names (not file or line): `.hour` -> `.minute` changes it, a move does not."""
    digest = hashlib.sha256(code.co_code)
    for const in code.co_consts:
        digest.update(_code_hash(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    digest.update(repr((code.co_names, code.co_varnames)).encode())
    return digest.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, timedelta):
        return {"seconds": obj.total_seconds()}
    if isinstance(obj, enum.Enum):
        return obj.value
    if callable(obj):
        code = getattr(obj, "__code__", None)
        return {"callable": getattr(obj, "__qualname__", repr(obj)), "code": _code_hash(code) if code else None}
    if isinstance(obj, Mapping):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def spec(obj: Any) -> dict[str, Any]:
    """A JSON-able description of a definition: what the registry stores and diffs."""
    out = {k: _jsonable(v) for k, v in asdict(obj).items()} if not callable(obj) else _jsonable(obj)
    out["kind"] = type(obj).__name__
    return out


def fingerprint(obj: Any) -> str:
    """Stable content hash of a definition (used for versions and compatibility checks)."""
    return hashlib.sha256(json.dumps(spec(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]
