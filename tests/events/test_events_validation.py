"""LogEventsRequest validation (pure): every events.proto bound, naming the first offending index and field."""

from __future__ import annotations

import pytest

from cascade.config import EventsConfig
from events.validation import validate_log_events
from events_helpers import CASES, NOW, ev
from proto.cascade.v1 import events_pb2
from serving.validation import ValidationError

SETTINGS = EventsConfig()


def batch(*events: events_pb2.Event) -> events_pb2.LogEventsRequest:
    return events_pb2.LogEventsRequest(events=events)


def rejected(request: events_pb2.LogEventsRequest, settings: EventsConfig = SETTINGS) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_log_events(request, settings, NOW)
    return info.value


def test_valid_batches_pass() -> None:
    validate_log_events(batch(*(ev(i) for i in range(500))), SETTINGS, NOW)  # the largest batch
    edge = [
        ev(0, event_id="x" * 128, user_id="ü" * 64, item_id="i" * 128),  # 128 bytes each
        ev(1, type=events_pb2.EVENT_TYPE_DWELL, value=0.001),
        ev(2, type=events_pb2.EVENT_TYPE_PURCHASE, value=0.0, request_id=""),  # not from a feed
        ev(3, timestamp_ms=NOW + SETTINGS.max_future_skew_ms),  # exactly at the allowed skew
        ev(4, properties={f"k{j}": "v" * 256 for j in range(32)}),
        ev(5, properties={"a" * 64: "x", "snake_case_2": ""}, request_id="a1B2.c3:d4-e5_" + "f" * 50),
        ev(6, type=events_pb2.EVENT_TYPE_RATING, value=4.5, received_at_ms=-5),  # received_at_ms is output only
    ]
    validate_log_events(batch(*edge), SETTINGS, NOW)


@pytest.mark.parametrize("name, change, field, message", CASES, ids=[c[0] for c in CASES])
def test_each_rule_names_index_and_field(name: str, change: dict, field: str, message: str) -> None:
    # The offender is events[2]; events[3] is bad too, but only the first offender is named.
    exc = rejected(batch(ev(0), ev(1), ev(2, **change), ev(3, **change)))
    assert exc.field == f"events[2].{field}"
    assert message in exc.message
    assert f"events[2].{field}" in str(exc)


def test_duplicate_event_id_within_batch() -> None:
    exc = rejected(batch(ev(0), ev(1), ev(2, event_id="e-0")))
    assert exc.field == "events[2].event_id" and "events[0]" in exc.message


def test_batch_size_bounds() -> None:
    assert rejected(batch()).field == "events"
    exc = rejected(batch(*(ev(i) for i in range(501))))
    assert exc.field == "events" and "501" in exc.message
    small = EventsConfig(max_batch_events=2)
    assert rejected(batch(ev(0), ev(1), ev(2)), small).field == "events"


def test_first_offending_field_within_an_event() -> None:
    # Fields are checked in field-number order: type (2) comes before timestamp_ms (6) and value (7).
    exc = rejected(batch(ev(0, type=0, timestamp_ms=0, value=-1)))
    assert exc.field == "events[0].type"


def test_skew_follows_config() -> None:
    strict = EventsConfig(max_future_skew_ms=1000)
    exc = rejected(batch(ev(0, timestamp_ms=NOW + 2000)), strict)
    assert exc.field == "events[0].timestamp_ms"
    validate_log_events(batch(ev(0, timestamp_ms=NOW + 2000)), SETTINGS, NOW)
