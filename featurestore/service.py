"""The gRPC FeatureService: ``cascade.v1.FeatureService/GetOnlineFeatures`` over the online store.

A thin shell around :class:`featurestore.client.FeatureClient` on the shared
serving plumbing (:class:`serving.GrpcServer`: health, reflection, metrics,
request ids, deadlines)::

    server = build_feature_server(config, redis_url)   # a GrpcServer
    await server.start()

    cascade features serve [--port N] [--redis-url URL]  # featurestore.service:serve

Errors (the proto's contract)
-----------------------------
* INVALID_ARGUMENT -- malformed requests: no entity type, no or more than
  1,000 entity keys, a key with the wrong number of values (1 to 4, one per
  join key of the entity type) or an empty or over-long (> 128 bytes) value,
  no selector, no or more than 500 references, a malformed (``"view:feature"``)
  or duplicate reference, a feature not keyed by the entity type, a request
  feature whose inputs are missing from the request context.
* NOT_FOUND -- unknown entity types, feature views, features and feature sets,
  and a feature-set version other than the one served.
* UNAVAILABLE -- the online store cannot be reached.

Statuses. The online store's statuses become the proto's: a missing (or stale)
value with a declared default is served as DEFAULTED holding the default; one
without a default as NOT_FOUND (or OUTSIDE_MAX_AGE) with no value. A window with
no event is DEFAULTED (its default, e.g. a count of 0) or, without a default
(a mean), NULL_VALUE. ``event_timestamp_ms`` is the stored row's time (the
newest tile start -- or last-N value time -- inside the view's windows, the serving time for request features), also
for a stale row served as its default; 0 when no row was found or the window is empty.

Request context. ``GetOnlineFeaturesRequest`` has no request-context field yet;
request features get ``event_ts`` = the server's receive time, and any input can
be passed as gRPC metadata ``x-cascade-context-<input>: <value>`` (integers and
floats are parsed, e.g. ``x-cascade-context-event_ts: 1700000000000`` in epoch ms).

Response building. Serialising the response dominates a Python feature server
(Feast #6013: 98 % of the JSON response time went into a generic converter).
Here no ``FeatureValue`` message is ever built: :func:`encode_response` writes
the protobuf wire format of the whole response with numpy, column by column
(numeric and fixed-size embedding columns without any per-value Python; strings
and variable-length lists with one small ``bytes`` expression per value), and
the handler returns those bytes, which the method's serializer passes through.
That is ~10x faster than building the messages with the upb runtime (see
``tests/featurestore/service/test_feature_service.py::test_encoder_speed``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import redis
from prometheus_client import Counter

from featurestore.client import FeatureClient, FeatureRequestError, OnlineFeatures, UnknownFeatureSet, serving_time
from featurestore.definitions import Feature, ValueType
from featurestore.online import FeatureStatus
from proto.cascade.v1 import common_pb2, features_pb2
from serving import GrpcServer, ValidationError, require, require_max_items, require_non_empty

_log = logging.getLogger("cascade.features.service")

SERVICE_NAME = "cascade.v1.FeatureService"
MAX_ENTITY_KEYS = 1000  # features.proto: "Entities to look up, 1 to 1000"
MAX_FEATURE_REFS = 500  # features.proto: "1 to 500 unique entries"
MAX_KEY_VALUES = 4  # EntityKey.values: "1 to 4 entries"
MAX_KEY_BYTES = 128  # "each 1 to 128 bytes"
CONTEXT_METADATA_PREFIX = "x-cascade-context-"

FEATURE_VALUES = Counter(
    "cascade_features_values_total",
    "Feature values served by the FeatureService, by the status reported to the client.",
    ["status"],
)
_STATUS_NAMES = {int(v): features_pb2.FeatureStatus.Name(v) for v in features_pb2.FeatureStatus.values()}
_VALUE_COUNTERS = {v: FEATURE_VALUES.labels(name.removeprefix("FEATURE_STATUS_")) for v, name in _STATUS_NAMES.items()}

_PRESENT = int(FeatureStatus.PRESENT)
_NULL = int(FeatureStatus.NULL_VALUE)
_NOT_FOUND = int(FeatureStatus.NOT_FOUND)
_STALE = int(FeatureStatus.OUTSIDE_MAX_AGE)
_DEFAULTED = int(FeatureStatus.DEFAULTED)
# The store's and the proto's numbering agree; checked here so a change on either side cannot go unnoticed.
assert (_PRESENT, _NULL, _NOT_FOUND, _STALE, _DEFAULTED) == (
    features_pb2.FEATURE_STATUS_PRESENT, features_pb2.FEATURE_STATUS_NULL_VALUE, features_pb2.FEATURE_STATUS_NOT_FOUND,
    features_pb2.FEATURE_STATUS_OUTSIDE_MAX_AGE, features_pb2.FEATURE_STATUS_DEFAULTED)


# ============================================================================ wire-format encoding

# Field tags (field number << 3 | wire type) of the messages written here.
_TAG_NAMES = 0x0A  # GetOnlineFeaturesResponse.feature_names (1, bytes)
_TAG_ROW = 0x12  # GetOnlineFeaturesResponse.rows (2, bytes)
_TAG_SET = 0x1A  # GetOnlineFeaturesResponse.feature_set (3, bytes)
_TAG_KEY = 0x0A  # FeatureRow.entity_key (1, bytes)
_TAG_VALUE = 0x12  # FeatureRow.values (2, bytes)
_TAG_DOUBLE, _TAG_INT64, _TAG_STRING, _TAG_BOOL = 0x09, 0x10, 0x1A, 0x28  # FeatureValue.value oneof
_TAG_FLOATS, _TAG_INTS, _TAG_STRINGS = 0x32, 0x3A, 0x42
_TAG_STATUS, _TAG_TS = 0x48, 0x50  # FeatureValue.status (9), event_timestamp_ms (10)
_TAG_PACKED = 0x0A  # FloatList/Int64List/StringList.values (1)

_VARINT_BOUNDS = np.array([1 << (7 * i) for i in range(1, 10)], dtype=np.uint64)
_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    """One varint (negative ints as their 64-bit two's complement)."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varint_lens(values: np.ndarray) -> np.ndarray:
    """Bytes in the varint encoding of each value (uint64, or int64 read as two's complement)."""
    v = values.view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64, copy=False)
    return np.searchsorted(_VARINT_BOUNDS, v, side="right").astype(np.int64) + 1


def _put_varints(out: np.ndarray, pos: np.ndarray, values: np.ndarray, lens: np.ndarray) -> None:
    """Write varint(values[i]) (lens[i] bytes) at out[pos[i]:]: one vectorized pass per byte position."""
    if not len(pos):
        return
    v = values.view(np.uint64) if values.dtype == np.int64 else values.astype(np.uint64)
    longest = int(lens.max())
    if longest == 1:
        out[pos] = v.astype(np.uint8)
        return
    uniform = int(lens.min()) == longest  # e.g. event times: all 6 bytes
    for b in range(longest):
        byte = ((v >> np.uint64(7 * b)) & np.uint64(0x7F)).astype(np.uint8)
        if uniform:
            if b < longest - 1:
                byte |= 0x80
            out[pos + b] = byte
        else:
            byte[lens > b + 1] |= 0x80
            live = lens > b
            out[pos[live] + b] = byte[live]


def _scatter(out: np.ndarray, starts: np.ndarray, data: bytes, lens: np.ndarray) -> None:
    """Copy consecutive pieces of `data` (lengths `lens`) to out[starts[i]:starts[i] + lens[i]]."""
    total = int(lens.sum())
    if not total:
        return
    ramp = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    out[np.repeat(starts, lens) + ramp] = np.frombuffer(data, dtype=np.uint8)


def _string_value(v: Any) -> bytes:
    b = v.encode() if isinstance(v, str) else str(v).encode()
    return b"\x1a" + _varint(len(b)) + b


def _float_list_value(v: Any) -> bytes:
    body = np.asarray(v, dtype="<f4").tobytes()
    inner = b"\x0a" + _varint(len(body)) + body if body else b""
    return b"\x32" + _varint(len(inner)) + inner


def _int64_list_value(v: Any) -> bytes:
    arr = np.asarray(v, dtype=np.int64).ravel()
    if not len(arr):
        return b"\x3a\x00"
    if len(arr) <= 4:
        body = b"".join(_varint(int(x)) for x in arr.tolist())
    else:
        lens = _varint_lens(arr)
        buf = np.empty(int(lens.sum()), dtype=np.uint8)
        _put_varints(buf, np.cumsum(lens) - lens, arr, lens)
        body = buf.tobytes()
    inner = b"\x0a" + _varint(len(body)) + body
    return b"\x3a" + _varint(len(inner)) + inner


def _string_list_value(v: Any) -> bytes:
    parts = []
    for s in v:
        b = s.encode() if isinstance(s, str) else str(s).encode()
        parts.append(b"\x0a" + _varint(len(b)) + b)
    inner = b"".join(parts)
    return b"\x42" + _varint(len(inner)) + inner


_VARLEN_ENCODERS = {
    ValueType.STRING: _string_value,
    ValueType.FLOAT_LIST: _float_list_value,
    ValueType.INT64_LIST: _int64_list_value,
    ValueType.STRING_LIST: _string_list_value,
}


def _proto_statuses(st: np.ndarray, has_default: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(proto status, value is set, event time is kept) of one column, from the store's statuses."""
    keep_ts = (st == _PRESENT) | (st == _NULL) | (st == _STALE)
    if has_default:
        has = (st != _NULL) & (st != 0)
        pst = np.where((st == _NOT_FOUND) | (st == _STALE), np.uint8(_DEFAULTED), st)
    else:
        has = st == _PRESENT
        pst = np.where(st == _DEFAULTED, np.uint8(_NULL), st)
    return pst.astype(np.uint8), has, keep_ts


class _Column:
    """One feature column's value fields: their lengths (0 where unset) and a writer for them."""

    __slots__ = ("vlen", "write")

    def __init__(self, f: Feature, col: Any, has: np.ndarray, pst: np.ndarray) -> None:
        n = len(has)
        dt = f.dtype
        rows = np.flatnonzero(has)
        if dt is ValueType.FLOAT64:
            vals = np.ascontiguousarray(np.asarray(col, dtype="<f8")[rows])
            self.vlen = np.where(has, 9, 0)

            def write(out: np.ndarray, pos: np.ndarray) -> None:
                out[pos] = _TAG_DOUBLE
                out[(pos[:, None] + np.arange(1, 9)).ravel()] = vals.view(np.uint8)
        elif dt is ValueType.INT64:
            vals = np.asarray(col, dtype=np.int64)[rows]
            lens = _varint_lens(vals)
            self.vlen = np.zeros(n, dtype=np.int64)
            self.vlen[rows] = lens + 1

            def write(out: np.ndarray, pos: np.ndarray) -> None:
                out[pos] = _TAG_INT64
                _put_varints(out, pos + 1, vals, lens)
        elif dt is ValueType.BOOL:
            vals = np.asarray(col, dtype=bool)[rows].astype(np.uint8)
            self.vlen = np.where(has, 2, 0)

            def write(out: np.ndarray, pos: np.ndarray) -> None:
                out[pos] = _TAG_BOOL
                out[pos + 1] = vals
        elif dt is ValueType.FLOAT_LIST and isinstance(col, np.ndarray) and col.ndim == 2:
            d = col.shape[1]
            body = 4 * d
            inner = (1 + len(_varint(body)) + body) if d else 0
            head = np.frombuffer(bytes((_TAG_FLOATS,)) + _varint(inner) + ((b"\x0a" + _varint(body)) if d else b""), dtype=np.uint8)
            floats = np.ascontiguousarray(col[rows], dtype="<f4").view(np.uint8).reshape(len(rows), body)
            self.vlen = np.where(has, len(head) + body, 0)

            def write(out: np.ndarray, pos: np.ndarray) -> None:
                out[(pos[:, None] + np.arange(len(head))).ravel()] = np.tile(head, len(pos))
                if body:
                    out[(pos[:, None] + (len(head) + np.arange(body))).ravel()] = floats.ravel()
        else:
            enc = _VARLEN_ENCODERS[dt]
            pieces: list[bytes] = []
            lens_list: list[int] = []
            for i in rows.tolist():
                v = col[i]
                if v is None:  # no value after all: report it as null, never as an empty value
                    has[i] = False
                    pst[i] = _NULL if pst[i] in (_PRESENT, _DEFAULTED) else pst[i]
                    continue
                b = enc(v)
                pieces.append(b)
                lens_list.append(len(b))
            data = b"".join(pieces)
            lens = np.asarray(lens_list, dtype=np.int64)
            self.vlen = np.zeros(n, dtype=np.int64)
            self.vlen[has] = lens

            def write(out: np.ndarray, pos: np.ndarray) -> None:
                _scatter(out, pos, data, lens)
        self.write = write


def feature_names_field(refs: Sequence[str]) -> bytes:
    """The encoded ``feature_names`` field of a response (constant per request shape: cache it)."""
    out = []
    for ref in refs:
        b = ref.encode()
        out.append(bytes((_TAG_NAMES,)) + _varint(len(b)) + b)
    return b"".join(out)


def feature_set_field(name: str, version: int | None) -> bytes:
    """The encoded ``feature_set`` field of a response."""
    body = common_pb2.FeatureSetRef(name=name, version=version or 0).SerializeToString()
    return bytes((_TAG_SET,)) + _varint(len(body)) + body


def encode_response(result: OnlineFeatures, entity_keys: Sequence[bytes], *, names: bytes | None = None,
                    feature_set: bytes = b"") -> bytes:
    """The serialized ``GetOnlineFeaturesResponse`` of `result`, built column-wise with numpy.

    `entity_keys` are the serialized ``EntityKey`` of each row (echoed);
    `names` the :func:`feature_names_field` of ``result.refs`` (computed when
    None); `feature_set` the :func:`feature_set_field`, or empty. Equal, message
    for message, to building the response with the protobuf runtime.
    """
    n, k = len(result), len(result.refs)
    if names is None:
        names = feature_names_field(result.refs)
    if len(entity_keys) != n:
        raise ValueError(f"{len(entity_keys)} entity keys for {n} rows")
    pst = np.empty((n, k), dtype=np.uint8)
    has = np.empty((n, k), dtype=bool)
    vlen = np.empty((n, k), dtype=np.int64)
    ts = np.zeros((n, k), dtype=np.int64)
    writers = []
    ts_by_view: dict[str, np.ndarray] = {}
    for j, f in enumerate(result.features):
        st = result.status[:, j]
        p, h, keep = _proto_statuses(st, f.default is not None)
        column = _Column(f, result.column(result.refs[j]), h, p)  # may clear `h` / adjust `p` (None values)
        pst[:, j], has[:, j], vlen[:, j] = p, h, column.vlen
        view = result.views[j]
        vts = ts_by_view.get(view)
        if vts is None:
            vts = ts_by_view[view] = result.event_ts_ms(j)
        ts[:, j] = np.where(keep, vts, 0)
        writers.append(column.write)
    ts_set = ts != 0
    tslen = np.where(ts_set, _varint_lens(ts) + 1, 0)
    body = vlen + 2 + tslen  # value field, status (2 bytes: status < 128), event time
    body_len = _varint_lens(body)
    cell = 1 + body_len + body
    key_lens = np.fromiter(map(len, entity_keys), dtype=np.int64, count=n)
    key_len_len = _varint_lens(key_lens)
    key_field = 1 + key_len_len + key_lens
    row_body = key_field + cell.sum(axis=1)
    row_len_len = _varint_lens(row_body)
    row = 1 + row_len_len + row_body
    head = len(names)
    total = head + int(row.sum()) + len(feature_set)
    out = np.empty(total, dtype=np.uint8)
    if head:
        out[:head] = np.frombuffer(names, dtype=np.uint8)
    row_start = head + np.cumsum(row) - row
    out[row_start] = _TAG_ROW
    _put_varints(out, row_start + 1, row_body, row_len_len)
    key_start = row_start + 1 + row_len_len
    out[key_start] = _TAG_KEY
    _put_varints(out, key_start + 1, key_lens, key_len_len)
    _scatter(out, key_start + 1 + key_len_len, b"".join(entity_keys), key_lens)
    cell_start = (key_start + key_field)[:, None] + (np.cumsum(cell, axis=1) - cell)
    out[cell_start] = _TAG_VALUE
    _put_varints(out, (cell_start + 1).ravel(), body.ravel(), body_len.ravel())
    value_start = cell_start + 1 + body_len
    for j, write in enumerate(writers):
        write(out, value_start[has[:, j], j])
    status_start = value_start + vlen
    out[status_start] = _TAG_STATUS
    out[status_start + 1] = pst
    ts_pos = status_start[ts_set] + 2
    out[ts_pos] = _TAG_TS
    _put_varints(out, ts_pos + 1, ts[ts_set], tslen[ts_set] - 1)
    if feature_set:
        out[total - len(feature_set):] = np.frombuffer(feature_set, dtype=np.uint8)
    counts = np.bincount(pst.ravel(), minlength=6)
    for status, count in enumerate(counts.tolist()):
        if count and status in _VALUE_COUNTERS:
            _VALUE_COUNTERS[status].inc(count)
    return out.tobytes()


def build_response(result: OnlineFeatures, entity_keys: Sequence[Any] | None = None,
                   feature_set: tuple[str, int | None] | None = None) -> features_pb2.GetOnlineFeaturesResponse:
    """The response as a protobuf message (convenience for in-process callers and tests; not the hot path).

    `entity_keys`: ``EntityKey`` messages, or None for the result's own keys as strings.
    """
    keys = _key_messages(result) if entity_keys is None else list(entity_keys)
    data = encode_response(
        result, [k.SerializeToString() for k in keys],
        feature_set=feature_set_field(*feature_set) if feature_set else b"",
    )
    return features_pb2.GetOnlineFeaturesResponse.FromString(data)


def _key_messages(result: OnlineFeatures) -> list[features_pb2.EntityKey]:
    out = []
    for key in result.entity_keys:
        parts = key if isinstance(key, tuple) else (key,)
        out.append(features_pb2.EntityKey(values=[_key_text(p) for p in parts]))
    return out


def _key_text(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return str(v)


# ============================================================================ the servicer


def _context_value(raw: str | bytes) -> Any:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    return raw


class FeatureServicer:
    """``cascade.v1.FeatureService`` over a :class:`FeatureClient`; register with :func:`register_feature_service`.

    The handler returns the serialized response (bytes); the method handler
    registered by :func:`register_feature_service` passes bytes through.
    """

    def __init__(self, client: FeatureClient, *, max_entity_keys: int = MAX_ENTITY_KEYS,
                 max_features: int = MAX_FEATURE_REFS) -> None:
        self.client = client
        self.max_entity_keys = max_entity_keys
        self.max_features = max_features
        self._names: dict[tuple[str, ...], bytes] = {}
        self._set_fields: dict[tuple[str, int | None], bytes] = {}

    def close(self) -> None:
        self.client.close()

    async def GetOnlineFeatures(self, request: features_pb2.GetOnlineFeaturesRequest,
                                context: grpc.aio.ServicerContext) -> bytes:
        try:
            prepared = self.prepare(request, context.invocation_metadata())
            return await asyncio.to_thread(self.serve_prepared, *prepared)
        except FeatureRequestError as exc:
            code = grpc.StatusCode.NOT_FOUND if exc.not_found else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            _log.warning("online store unreachable: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the online store cannot be reached: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")  # pragma: no cover - abort() raises

    def get_online_features(self, request: features_pb2.GetOnlineFeaturesRequest,
                            metadata: Sequence[tuple[str, Any]] | None = None, *, now: datetime | None = None) -> bytes:
        """The serialized response of `request`, synchronously (tests, benchmarks, in-process use)."""
        return self.serve_prepared(*self.prepare(request, metadata, now=now))

    # -- request handling

    def prepare(self, request: features_pb2.GetOnlineFeaturesRequest, metadata: Sequence[tuple[str, Any]] | None,
                *, now: datetime | None = None) -> tuple[Any, ...]:
        """Validate `request`; returns the arguments of :meth:`serve_prepared`. Raises ValidationError / FeatureRequestError."""
        entity_type = require_non_empty(request.entity_type, "entity_type")
        join_keys = self.client.join_keys_of(entity_type)
        keys = request.entity_keys
        require_non_empty(keys, "entity_keys")
        require_max_items(keys, "entity_keys", self.max_entity_keys)
        columns, key_bytes = _key_columns(keys, entity_type, join_keys)
        which = request.WhichOneof("selector")
        require(which is not None, "features", "set either features (a list of references) or feature_set")
        set_field = b""
        if which == "features":
            refs = list(request.features.refs)
            require_non_empty(refs, "features.refs")
            require_max_items(refs, "features.refs", self.max_features)
            plan = self.client.plan(refs, entity_type)
        else:
            fs = request.feature_set
            require_non_empty(fs.name, "feature_set.name")
            require(fs.version >= 0, "feature_set.version", f"must be >= 0 (0 = the live version), got {fs.version}")
            plan = self.client.plan(fs.name, entity_type)
            live = plan.feature_set_version
            if fs.version and fs.version != live:
                raise UnknownFeatureSet(
                    f"feature set {fs.name!r} version {fs.version} is not served here "
                    f"(this server serves version {live if live else 'unknown: registry not applied'}); ask for version 0 or {live}"
                )
            set_key = (fs.name, live)
            set_field = self._set_fields.get(set_key) or self._set_fields.setdefault(set_key, feature_set_field(*set_key))
        names = self._names.get(plan.refs)
        if names is None:
            if len(self._names) >= 1024:
                self._names.clear()
            names = self._names[plan.refs] = feature_names_field(plan.refs)
        context: dict[str, Any] = {}
        for key, value in metadata or ():
            if key.startswith(CONTEXT_METADATA_PREFIX):
                context[key[len(CONTEXT_METADATA_PREFIX):]] = _context_value(value)
        served_at = serving_time(now)
        return plan, columns, key_bytes, context, served_at, names, set_field

    def serve_prepared(self, plan: Any, columns: dict[str, list[str]], key_bytes: list[bytes], context: Mapping[str, Any],
                       served_at: datetime, names: bytes, set_field: bytes) -> bytes:
        """Read and encode (blocking: run it in a worker thread)."""
        n = len(key_bytes)
        keys_out = next(iter(columns.values())) if len(columns) == 1 else list(zip(*columns.values()))
        result = self.client.read_plan(plan, columns, keys_out, n, context, served_at)
        return encode_response(result, key_bytes, names=names, feature_set=set_field)


def _key_columns(keys: Sequence[features_pb2.EntityKey], entity_type: str,
                 join_keys: tuple[str, ...]) -> tuple[dict[str, list[str]], list[bytes]]:
    """Validated string columns per join key, and each key's serialized form (echoed in the response)."""
    arity = len(join_keys)
    values = [k.values for k in keys]
    for i, vals in enumerate(values):
        if len(vals) != arity:
            if not vals:
                raise ValidationError(f"entity_keys[{i}].values", "must not be empty")
            if len(vals) > MAX_KEY_VALUES:
                raise ValidationError(f"entity_keys[{i}].values", f"has {len(vals)} values, at most {MAX_KEY_VALUES} allowed")
            raise ValidationError(
                f"entity_keys[{i}].values",
                f"has {len(vals)} value(s), but entity type {entity_type!r} has {arity} join key(s) ({', '.join(join_keys)})",
            )
    columns: dict[str, list[str]] = {}
    for j, name in enumerate(join_keys):
        col = [v[j] for v in values]
        if "" in col:
            i = col.index("")
            raise ValidationError(f"entity_keys[{i}].values[{j}]", f"({name}) must not be empty")
        for i, s in enumerate(col):
            if len(s) > MAX_KEY_BYTES // 4 and len(s.encode()) > MAX_KEY_BYTES:
                raise ValidationError(f"entity_keys[{i}].values[{j}]", f"({name}) is {len(s.encode())} bytes, at most {MAX_KEY_BYTES} allowed")
        columns[name] = col
    return columns, [k.SerializeToString() for k in keys]


def _serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def register_feature_service(servicer: FeatureServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_FeatureServiceServicer_to_server``, but the response may be pre-serialized bytes."""
    handlers = {
        "GetOnlineFeatures": grpc.unary_unary_rpc_method_handler(
            servicer.GetOnlineFeatures,
            request_deserializer=features_pb2.GetOnlineFeaturesRequest.FromString,
            response_serializer=_serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# ============================================================================ server


class FeatureServer(GrpcServer):
    """A :class:`GrpcServer` hosting the FeatureService; stopping it also closes its Redis client."""

    def __init__(self, servicer: FeatureServicer, config: Any, port: int = 0) -> None:
        super().__init__("features", config, port)
        self.servicer = servicer
        self.add_service(register_feature_service, servicer, SERVICE_NAME)

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        self.servicer.close()


def build_feature_server(config: Any, redis_url: str, *, repo: Any = None, registry: Any = None,
                         feature_set_versions: Mapping[str, int] | None = None, port: int | None = None,
                         check_registry: bool = True) -> FeatureServer:
    """A FeatureService server (not started) for the configured project, definitions and ports.

    The definitions (`repo`, default: ``config.features.definitions`` loaded
    once) must be what the registry (`registry`: a :class:`Registry` or its
    directory, default ``config.registry_dir``) has live, which supplies the
    feature-set versions reported to clients -- unless `feature_set_versions`
    is given, or ``check_registry=False`` (then unapplied definitions are
    served without versions). `port` defaults to ``config.ports.features``.
    """
    client = FeatureClient.from_config(config, redis_url, repo=repo, registry=registry,
                                       feature_set_versions=feature_set_versions, check_registry=check_registry)
    servicer = FeatureServicer(client, max_entity_keys=min(MAX_ENTITY_KEYS, config.grpc.max_request_items))
    return FeatureServer(servicer, config.grpc, config.ports.features if port is None else port)


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade features serve``: run the FeatureService until SIGINT/SIGTERM."""
    from cascade.config import get_config
    from featurestore.registry import RegistryError
    from featurestore.repository import DefinitionError, load_repo
    from serving.entrypoint import run_service

    parser = argparse.ArgumentParser(prog="cascade features serve", description="Serve online features over gRPC (cascade.v1.FeatureService).")
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.features; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="online store (default: config redis.url / REDIS_URL; none starts an embedded valkey)")
    parser.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config features.definitions)")
    parser.add_argument("--registry", type=Path, default=None, help="registry directory (default: config registry_dir)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    parser.add_argument("--allow-unapplied", action="store_true", help="serve definitions the registry does not have live (no set versions)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()

    def build(redis_url: str) -> FeatureServer:
        repo = load_repo(args.definitions) if args.definitions else None
        return build_feature_server(config, redis_url, repo=repo, registry=args.registry, port=args.port,
                                    check_registry=not args.allow_unapplied)

    return run_service(config, args.redis_url or config.redis.url, build,
                       lambda s: f"FeatureService (project {config.features.project!r})",
                       metrics_port=args.metrics_port, errors=(DefinitionError, RegistryError))


__all__ = [
    "CONTEXT_METADATA_PREFIX",
    "FeatureServer",
    "FeatureServicer",
    "MAX_ENTITY_KEYS",
    "MAX_FEATURE_REFS",
    "SERVICE_NAME",
    "build_feature_server",
    "build_response",
    "encode_response",
    "register_feature_service",
    "serve",
]
