"""Validation of a ``LogEventsRequest``, exactly the bounds events.proto states.

Pure (the server clock comes in as ``now_ms``), so it is unit-tested without a
server. The batch is all-or-nothing: the first offending event stops the
check, and the :class:`~serving.validation.ValidationError` names its index
and field, e.g. ``events[3].timestamp_ms`` (the interceptor turns it into
INVALID_ARGUMENT). Fields are checked in field-number order within an event.

Beyond the per-field bounds of events.proto: ``request_id``, when set, must be
something a GetFeedResponse can carry (feed.proto: 1 to 64 bytes of
``[A-Za-z0-9._:-]``), since the joiner matches it against impressions; a
value that never can is a client bug best reported at once.
"""

from __future__ import annotations

import math
import re

from cascade.config import EventsConfig
from proto.cascade.v1 import events_pb2
from serving.validation import ValidationError

MAX_ID_BYTES = 128  # event_id, user_id, item_id (events.proto, common.proto)
MAX_REQUEST_ID_BYTES = 64  # feed.proto: GetFeedRequest.request_id
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY_BYTES = 64
MAX_PROPERTY_VALUE_BYTES = 256

KNOWN_TYPES: frozenset[int] = frozenset(
    v.number for v in events_pb2.EventType.DESCRIPTOR.values if v.number != events_pb2.EVENT_TYPE_UNSPECIFIED
)
TYPE_NAMES: dict[int, str] = {v.number: v.name for v in events_pb2.EventType.DESCRIPTOR.values}

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9_]*\Z")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+\Z")


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _require_id(value: str, field: str, limit: int = MAX_ID_BYTES) -> None:
    if not value:
        raise ValidationError(field, "must not be empty")
    n = _nbytes(value)
    if n > limit:
        raise ValidationError(field, f"is {n} bytes, at most {limit} allowed")


def _minutes(ms: int) -> str:
    return f"{ms / 60_000:.1f} minutes"


def validate_event(event: events_pb2.Event, where: str, *, max_timestamp_ms: int, max_future_skew_ms: int) -> None:
    """Check one event; ``where`` prefixes field names (``"events[3]"``)."""
    _require_id(event.event_id, f"{where}.event_id")

    etype = event.type
    if etype not in KNOWN_TYPES:
        if etype == events_pb2.EVENT_TYPE_UNSPECIFIED:
            raise ValidationError(f"{where}.type", "must be set (EVENT_TYPE_UNSPECIFIED is not a valid event type)")
        raise ValidationError(f"{where}.type", f"unknown event type {etype}")

    _require_id(event.user_id, f"{where}.user_id")
    _require_id(event.item_id, f"{where}.item_id")

    rid = event.request_id
    if rid:
        n = _nbytes(rid)
        if n > MAX_REQUEST_ID_BYTES:
            raise ValidationError(f"{where}.request_id", f"is {n} bytes, at most {MAX_REQUEST_ID_BYTES} allowed "
                                  "(a GetFeedResponse.request_id, or empty)")
        if not _REQUEST_ID.match(rid):
            raise ValidationError(f"{where}.request_id", f"may only hold [A-Za-z0-9._:-] (a GetFeedResponse.request_id, "
                                  f"or empty), got {rid!r}")

    ts = event.timestamp_ms
    if ts <= 0:
        raise ValidationError(f"{where}.timestamp_ms", f"must be > 0 (Unix epoch ms), got {ts}")
    if ts > max_timestamp_ms:
        ahead = ts - (max_timestamp_ms - max_future_skew_ms)
        raise ValidationError(f"{where}.timestamp_ms", f"{_minutes(ahead)} ahead of server clock "
                              f"(at most {_minutes(max_future_skew_ms)} allowed)")

    value = event.value
    if not math.isfinite(value):
        raise ValidationError(f"{where}.value", f"must be finite, got {value}")
    if value < 0:
        raise ValidationError(f"{where}.value", f"must be >= 0, got {value}")
    if etype == events_pb2.EVENT_TYPE_DWELL and value <= 0:
        raise ValidationError(f"{where}.value", f"must be > 0 for EVENT_TYPE_DWELL (dwell seconds), got {value}")

    props = event.properties
    if props:
        if len(props) > MAX_PROPERTIES:
            raise ValidationError(f"{where}.properties", f"has {len(props)} entries, at most {MAX_PROPERTIES} allowed")
        for key in sorted(props):  # sorted: the same batch always names the same first offender
            field = f"{where}.properties[{key!r}]"
            if not key or _nbytes(key) > MAX_PROPERTY_KEY_BYTES:
                raise ValidationError(field, f"key must be 1 to {MAX_PROPERTY_KEY_BYTES} bytes, got {_nbytes(key)}")
            if not _SNAKE_CASE.match(key):
                raise ValidationError(field, "key must be lower snake_case ([a-z][a-z0-9_]*)")
            n = _nbytes(props[key])
            if n > MAX_PROPERTY_VALUE_BYTES:
                raise ValidationError(field, f"value is {n} bytes, at most {MAX_PROPERTY_VALUE_BYTES} allowed")


def validate_log_events(request: events_pb2.LogEventsRequest, settings: EventsConfig, now_ms: int) -> None:
    """Raise :class:`ValidationError` for the first offending event (index and field) or a bad batch size."""
    events = request.events
    n = len(events)
    if n == 0:
        raise ValidationError("events", "must hold at least 1 event")
    if n > settings.max_batch_events:
        raise ValidationError("events", f"has {n} events, at most {settings.max_batch_events} allowed")
    skew = settings.max_future_skew_ms
    max_ts = now_ms + skew
    first_index: dict[str, int] = {}
    for i, event in enumerate(events):
        where = f"events[{i}]"
        first = first_index.setdefault(event.event_id, i)
        if first != i and event.event_id:
            raise ValidationError(f"{where}.event_id", f"repeats events[{first}].event_id {event.event_id!r} "
                                  "(event_ids must be unique within a batch)")
        validate_event(event, where, max_timestamp_ms=max_ts, max_future_skew_ms=skew)


__all__ = ["KNOWN_TYPES", "TYPE_NAMES", "validate_event", "validate_log_events"]
