"""EventDecoder: protobuf and JSON values -> a source's logical columns, event time, `where`. No servers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.streaming import DecodeError, EventDecoder, RecordParser, to_event_time
from proto.cascade.v1.events_pb2 import Event
from proto.cascade.v1.records_pb2 import Impression

TS_MS = 1_717_243_200_123  # 2024-06-01T12:00:00.123Z
TS = datetime(2024, 6, 1, 12, 0, 0, 123_000, tzinfo=timezone.utc)
RATINGS = StreamSource("events", fields={"user_id": "user_id", "item_id": "item_id", "rating": "value",
                                         "event_ts": "timestamp_ms"})


def proto(**kw) -> bytes:  # noqa: ANN003
    base = {"event_id": "e1", "type": 1, "user_id": "7", "item_id": "42", "timestamp_ms": TS_MS, "value": 4.5}
    return Event(**{**base, **kw}).SerializeToString()


def test_protobuf_event_maps_through_fields() -> None:
    d = EventDecoder(RATINGS)
    assert d.decode(proto()) == {"user_id": "7", "item_id": "42", "rating": 4.5, "event_ts": TS}


def test_json_event_maps_through_fields_and_keeps_json_types() -> None:
    d = EventDecoder(RATINGS)
    raw = json.dumps({"user_id": 7, "item_id": 42, "value": 4.5, "timestamp_ms": TS_MS}).encode()
    assert d.decode(raw) == {"user_id": 7, "item_id": 42, "rating": 4.5, "event_ts": TS}
    assert d.decode(b"  \n" + raw) == d.decode(raw)  # leading white space is still JSON
    assert d.decode(raw.decode()) == d.decode(raw)  # str values too


def test_parse_gives_every_event_field_with_enums_by_short_name() -> None:
    rec = RecordParser()(Event(event_id="e", type=6, user_id="u", item_id="i", timestamp_ms=5, value=9.5,
                               properties={"currency": "EUR"}).SerializeToString())
    assert rec == {"event_id": "e", "type": "purchase", "user_id": "u", "item_id": "i", "request_id": "",
                   "timestamp_ms": 5, "value": 9.5, "properties": {"currency": "EUR"}, "received_at_ms": 0}


def test_other_message_types_and_optional_fields() -> None:
    parser = RecordParser("protobuf", Impression)
    rec = parser(Impression(request_id="r", user_id="u", item_id="i", position=3, score=0.5,
                            timestamp_ms=TS_MS).SerializeToString())
    assert rec["position"] == 3 and rec["ranking_score"] is None  # `optional`, unset
    assert parser(Impression(ranking_score=0.0).SerializeToString())["ranking_score"] == 0.0


def test_unmapped_columns_read_the_same_key_and_map_entries_are_reachable() -> None:
    src = StreamSource("events", fields={"amount": "value", "currency": "properties.currency"})
    d = EventDecoder(src, columns=["user_id", "amount", "currency"])
    out = d.decode(Event(user_id="u", value=3.0, timestamp_ms=TS_MS, properties={"currency": "USD"}).SerializeToString())
    assert out == {"user_id": "u", "amount": 3.0, "currency": "USD", "event_ts": datetime.fromtimestamp(TS_MS / 1000, timezone.utc)}


@pytest.mark.parametrize("raw", [
    b"\xff\xff\xff", b"", b"{not json", b"[1]", b"\x1a\x05ab", None, b'"a string"',
])
def test_undecodable_values_raise_decode_error(raw: bytes | None) -> None:
    with pytest.raises(DecodeError):
        EventDecoder(RATINGS).decode(raw)


@pytest.mark.parametrize("record, message", [
    ({"item_id": 1, "value": 1.0, "timestamp_ms": TS_MS}, "user_id"),
    ({"user_id": "", "timestamp_ms": TS_MS}, "user_id"),
    ({"user_id": 1}, "event time"),
    ({"user_id": 1, "timestamp_ms": 0}, "event time"),  # proto3's "unset"
    ({"user_id": 1, "timestamp_ms": "yesterday"}, "ISO"),
    ({"user_id": 1, "timestamp_ms": True}, "time"),
    ({"user_id": 1, "timestamp_ms": float("nan")}, "finite"),
])
def test_missing_keys_and_bad_times_raise(record: dict, message: str) -> None:
    view = WindowedFeatureView("v", (Entity("user", ("user_id",)),), ParquetSource("x.parquet"),
                               (Aggregation(AggregationFunction.COUNT, (timedelta(hours=1),)),), stream=RATINGS)
    with pytest.raises(DecodeError, match=message):
        EventDecoder.for_view(view).decode_record(record)
    with pytest.raises(DecodeError):
        EventDecoder.for_view(view).decode(Event(item_id="1", timestamp_ms=TS_MS).SerializeToString())


def test_for_view_reads_join_keys_aggregated_columns_and_time() -> None:
    view = WindowedFeatureView(
        "v", (Entity("user", ("user_id",)),), ParquetSource("x.parquet"),
        (Aggregation(AggregationFunction.MEAN, (timedelta(hours=1),), column="rating"),
         Aggregation(AggregationFunction.LAST_N, (timedelta(hours=1),), column="item_id", n=2, dtype=ValueType.INT64_LIST)),
        stream=RATINGS)
    d = EventDecoder.for_view(view)
    assert d.columns == ("user_id", "rating", "item_id", "event_ts")
    assert d.decode(proto(value=1.0)) == {"user_id": "7", "rating": 1.0, "item_id": "42", "event_ts": TS}


@pytest.mark.parametrize("value, unit, expected", [
    (TS_MS, "_ms", TS),
    (TS_MS * 1000, "_us", TS),
    (TS_MS * 1_000_000 + 999, "_ns", TS),
    (TS_MS / 1000, "_s", TS),
    ("2024-06-01T12:00:00.123Z", "_ms", TS),
    ("2024-06-01T12:00:00.123", "_ms", TS),  # naive = UTC
    ("2024-06-01T14:00:00.123+02:00", "_ms", TS),
    (TS.replace(tzinfo=None), "_ms", TS),
])
def test_event_times(value: object, unit: str, expected: datetime) -> None:
    assert to_event_time(value, unit) == expected


def test_time_unit_follows_the_record_key() -> None:
    src = StreamSource("t", fields={"event_ts": "ts_us"})
    assert EventDecoder(src).decode_record({"ts_us": TS_MS * 1000})["event_ts"] == TS
    src = StreamSource("t", fields={"event_ts": "event_ts"})
    assert EventDecoder(src).decode_record({"event_ts": TS_MS})["event_ts"] == TS  # plain numbers: ms


def test_where_filters_on_logical_columns() -> None:
    src = StreamSource("events", fields={"event_type": "type", "event_ts": "timestamp_ms"}, where={"event_type": "click"})
    d = EventDecoder(src, columns=["user_id"], required=["user_id"])
    assert d.decode(proto(type=1)) is not None
    assert d.decode(proto(type=2)) is None  # a like
    assert d.decode(Event(type=2, timestamp_ms=TS_MS).SerializeToString()) is None  # filtered before checking keys
    assert d.decode_record({"user_id": 1, "type": "click", "timestamp_ms": TS_MS}) is not None


@pytest.mark.parametrize("where, record, passes", [
    ({"user_id": 7}, {"user_id": "7"}, True),  # a proto string id equals a batch int
    ({"user_id": "7"}, {"user_id": 7}, True),
    ({"user_id": 7}, {"user_id": "8"}, False),
    ({"kind": ["click", "like"]}, {"kind": "like"}, True),  # a collection means any of
    ({"kind": ("click",)}, {"kind": "view"}, False),
    ({"flag": True}, {"flag": 1}, False),  # booleans only equal booleans
    ({"flag": True}, {"flag": True}, True),
    ({"kind": "click"}, {}, False),  # missing never matches
])
def test_where_matching(where: dict, record: dict, passes: bool) -> None:
    d = EventDecoder(StreamSource("t", where=where))
    assert (d.decode_record({**record, "event_ts": TS_MS}) is not None) is passes


def test_format_can_be_forced() -> None:
    with pytest.raises(DecodeError):
        EventDecoder(RATINGS, format="json").decode(proto())
    with pytest.raises(DecodeError):
        EventDecoder(RATINGS, format="protobuf").decode(b'{"user_id": 1}')
    with pytest.raises(ValueError):
        RecordParser("avro")
