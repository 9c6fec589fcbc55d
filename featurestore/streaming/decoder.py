"""Kafka record values -> logical columns of a batch source, as the offline store sees them.

A record value is either a serialized protobuf message (``cascade.v1.Event``
by default: what the EventService publishes) or a JSON object (tools, tests,
replays). Detection is unambiguous: a JSON object starts with ``{`` (after
white space), which no valid ``Event`` can (``0x7b`` is field 15 with the
deprecated group wire type).

Parsing gives a *record*: a plain dict keyed by the message's field names.
Protobuf enums become their short lower-case name (``EVENT_TYPE_CLICK`` ->
``"click"``, the spelling of the batch sources' ``event_type`` column), a map
becomes a dict, and a field with explicit presence that is unset becomes None.
A record key ``properties.<name>`` reads one entry of a map field.

:class:`EventDecoder` then maps a record onto the logical columns of one
:class:`StreamSource` (``fields``: batch column -> record key; columns not
listed read the record key of the same name), converts the event time, and
applies ``where``. Numbers given as an event time are epoch **milliseconds**
(``timestamp_ms``; a record key ending in ``_us``, ``_ns`` or ``_s`` says
micro-, nano- or whole seconds), strings are ISO-8601 (naive = UTC). Zero is
proto3's "unset" and is rejected like a missing time. When ``fields`` does not
map the source's timestamp field and a record lacks that key, its
``timestamp_ms`` (the ``Event`` field) is the event time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError as _ProtoDecodeError
from google.protobuf.message import Message

from featurestore.definitions import AggregationFunction, StreamSource, WindowedFeatureView

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_WS = b" \t\r\n"
FORMATS = ("auto", "protobuf", "json")


class DecodeError(ValueError):
    """A record value that cannot be turned into the logical columns (counted, logged and skipped)."""


# ----------------------------------------------------------------------------- record parsing


def _enum_prefix(enum_name: str) -> str:
    """'EventType' -> 'EVENT_TYPE_' (the proto style guide's value prefix)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


class _ProtoReader:
    """Turns one message type into plain dicts; the per-field work is decided once."""

    def __init__(self, message_type: type[Message]) -> None:
        self.message_type = message_type
        self.parse = message_type.FromString
        fields: list[tuple[str, str, Any]] = []
        for f in message_type.DESCRIPTOR.fields:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                fields.append((f.name, "map", None))
            elif getattr(f, "is_repeated", False) or getattr(f, "label", None) == 3:
                fields.append((f.name, "repeated", _enum_names(f) if f.enum_type is not None else None))
            elif f.enum_type is not None:
                fields.append((f.name, "enum" if not f.has_presence else "enum?", _enum_names(f)))
            elif f.message_type is not None:
                fields.append((f.name, "message", None))
            else:
                fields.append((f.name, "scalar?" if f.has_presence else "scalar", None))
        self.fields = tuple(fields)

    def __call__(self, value: bytes) -> dict[str, Any]:
        try:
            msg = self.parse(value)
        except (_ProtoDecodeError, RuntimeError) as exc:
            raise DecodeError(f"not a {self.message_type.DESCRIPTOR.full_name}: {exc}") from None
        out: dict[str, Any] = {}
        for name, kind, names in self.fields:
            v = getattr(msg, name)
            if kind == "scalar":
                out[name] = v
            elif kind == "enum":
                out[name] = names.get(v, v)
            elif kind == "map":
                out[name] = dict(v)
            elif kind == "scalar?":
                out[name] = v if msg.HasField(name) else None
            elif kind == "enum?":
                out[name] = names.get(v, v) if msg.HasField(name) else None
            elif kind == "repeated":
                out[name] = [names.get(x, x) for x in v] if names else [
                    json_format.MessageToDict(x, preserving_proto_field_name=True) if isinstance(x, Message) else x
                    for x in v]
            else:  # message
                out[name] = json_format.MessageToDict(v, preserving_proto_field_name=True) if msg.HasField(name) else None
        return out


def _enum_names(field: Any) -> dict[int, str]:
    prefix = _enum_prefix(field.enum_type.name)
    return {v.number: (v.name[len(prefix):] if v.name.startswith(prefix) else v.name).lower()
            for v in field.enum_type.values}


def _default_message_type() -> type[Message]:
    from proto.cascade.v1.events_pb2 import Event

    return Event


class RecordParser:
    """Bytes -> record dict, for protobuf (`message_type`, default ``cascade.v1.Event``) and JSON values.

    `format`: "auto" (JSON when the value starts with ``{``, else protobuf),
    "protobuf" or "json". Raises :class:`DecodeError`.
    """

    def __init__(self, format: str = "auto", message_type: type[Message] | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
        self.format = format
        self._proto = _ProtoReader(message_type or _default_message_type()) if format != "json" else None

    def __call__(self, value: bytes | bytearray | memoryview | str | Mapping[str, Any] | None) -> dict[str, Any]:
        if value is None:
            raise DecodeError("empty record value (tombstone)")
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, str):
            return self._json(value)
        if not isinstance(value, bytes):
            value = bytes(value)
        fmt = self.format
        if fmt == "auto":
            fmt = "json" if value.lstrip(_WS)[:1] == b"{" else "protobuf"
        if fmt == "json":
            return self._json(value)
        if not value:
            raise DecodeError("empty record value")
        return self._proto(value)  # type: ignore[misc]

    @staticmethod
    def _json(value: bytes | str) -> dict[str, Any]:
        try:
            out = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(out, dict):
            raise DecodeError(f"JSON value is a {type(out).__name__}, expected an object")
        return out


# ----------------------------------------------------------------------------- mapping onto a source

_UNIT_US = {"_us": 1, "_ns": None, "_ms": 1000, "_s": 1_000_000}


def _time_unit(record_key: str) -> str:
    for suffix in ("_us", "_ns", "_ms"):
        if record_key.endswith(suffix):
            return suffix
    if record_key.endswith("_s") and not record_key.endswith("_ts"):
        return "_s"
    return "_ms"


def to_event_time(value: Any, unit: str = "_ms") -> datetime:
    """An event time (number in `unit`, ISO string, datetime) -> aware UTC datetime; DecodeError if unusable."""
    if value is None or value == "" or (type(value) is int and value == 0):
        raise DecodeError("missing event time")
    if isinstance(value, bool):
        raise DecodeError(f"event time {value!r} is not a time")
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise DecodeError(f"event time {value!r} is not finite")
        try:
            if unit == "_ns":
                return _EPOCH + timedelta(microseconds=int(value) // 1000)
            if isinstance(value, int):
                return _EPOCH + timedelta(microseconds=value * _UNIT_US[unit])
            return _EPOCH + timedelta(microseconds=round(value * _UNIT_US[unit]))
        except OverflowError:
            raise DecodeError(f"event time {value!r} is out of range") from None
    if isinstance(value, str):
        try:
            return to_event_time(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            raise DecodeError(f"event time {value!r} is not ISO-8601") from None
    raise DecodeError(f"event time {value!r} of type {type(value).__name__} is not a time")


def _lookup(record: Mapping[str, Any], key: str) -> Any:
    if key in record:
        return record[key]
    head, dot, rest = key.partition(".")
    if dot:
        inner = record.get(head)
        if isinstance(inner, Mapping):
            return _lookup(inner, rest)
    return None


def _matches(actual: Any, expected: Any) -> bool:
    """`where` equality; a collection means "any of"; a string equals a number with the same text."""
    if isinstance(expected, (list, tuple, set, frozenset)):
        return any(_matches(actual, e) for e in expected)
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if actual == expected:
        return True
    if actual is None or expected is None:
        return False
    if isinstance(actual, str) != isinstance(expected, str):  # "42" (a proto string id) vs 42 (a batch int)
        return str(actual) == str(expected)
    return False


class EventDecoder:
    """Decodes record values into the logical columns one stream source (or view) reads.

    `columns`: the logical (batch) columns to produce; default every column in
    ``source.fields`` plus the ``where`` columns. `required`: columns that must be
    present and non-empty (join keys); the event time always is. Use
    :meth:`for_view` for a windowed view: its join keys, aggregated columns and
    event time.

    ``decode(value)`` returns the dict of logical columns (the event time as an
    aware UTC datetime under ``source.timestamp_field``), or None when ``where``
    rejects the record; it raises :class:`DecodeError` for an undecodable value.
    ``decode_record(record)`` does the same for an already parsed record, so one
    Kafka value is parsed once however many views read it.
    """

    def __init__(self, source: StreamSource, columns: Iterable[str] | None = None, required: Iterable[str] = (),
                 *, format: str = "auto", message_type: type[Message] | None = None,
                 parser: RecordParser | None = None) -> None:
        self.source = source
        self.parser = parser or RecordParser(format, message_type)
        ts_col = source.timestamp_field
        cols = list(columns) if columns is not None else list(source.fields)
        for c in (*source.where, *required):
            if c not in cols:
                cols.append(c)
        if ts_col not in cols:
            cols.append(ts_col)
        self.columns = tuple(cols)
        self.timestamp_column = ts_col
        self._ts_key = source.fields.get(ts_col, ts_col)
        self._ts_unit = _time_unit(self._ts_key)
        self._ts_fallback = ts_col not in source.fields  # unmapped: a record without it may carry timestamp_ms
        self._plan = tuple((c, source.fields.get(c, c)) for c in cols if c != ts_col)
        self._required = tuple(c for c in required if c != ts_col)
        self._where = tuple(source.where.items())

    @classmethod
    def for_view(cls, view: WindowedFeatureView, **kwargs: Any) -> "EventDecoder":
        if view.stream is None:
            raise ValueError(f"view {view.name!r} has no stream source")
        cols = list(view.join_keys)
        for agg in view.aggregations:
            if agg.function is not AggregationFunction.COUNT and agg.column and agg.column not in cols:
                cols.append(agg.column)
        return cls(view.stream, cols, required=view.join_keys, **kwargs)

    def parse(self, value: Any) -> dict[str, Any]:
        return self.parser(value)

    def decode(self, value: Any) -> dict[str, Any] | None:
        return self.decode_record(self.parser(value))

    def decode_record(self, record: Mapping[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for col, key in self._plan:
            out[col] = record[key] if key in record else _lookup(record, key)
        for col, expected in self._where:
            if not _matches(out.get(col), expected):
                return None
        for col in self._required:
            v = out[col]
            if v is None or v == "":
                raise DecodeError(f"missing {col!r} (record key {self.source.fields.get(col, col)!r})")
        raw_ts = record[self._ts_key] if self._ts_key in record else _lookup(record, self._ts_key)
        if raw_ts is None and self._ts_fallback and "timestamp_ms" in record:
            out[self.timestamp_column] = to_event_time(record["timestamp_ms"], "_ms")
        else:
            out[self.timestamp_column] = to_event_time(raw_ts, self._ts_unit)
        return out


__all__ = ["DecodeError", "EventDecoder", "RecordParser", "to_event_time"]
