"""Helpers of the events tests: a fresh topic per test, reading a topic back with manual assignment."""

from __future__ import annotations

import math
import time

from kafka import TopicPartition

from proto.cascade.v1 import events_pb2

from cascade.config import Config, TopicConfig
from stack.clients import ensure_topics, kafka_consumer


NOW = 1_717_171_717_000


def ev(i: int, now_ms: int = NOW, **kw) -> events_pb2.Event:
    """A valid event (index `i` makes the ids distinct); keyword arguments change fields."""
    base = dict(event_id=f"e-{i}", type=events_pb2.EVENT_TYPE_CLICK, user_id="u1", item_id=f"item{i}",
                request_id="req-1", timestamp_ms=now_ms - 1000, properties={"currency": "USD"})
    base.update(kw)
    return events_pb2.Event(**base)


def rule_cases(now_ms: int = NOW) -> list[tuple[str, dict, str, str]]:
    """(name, change to a valid event, field after "events[i].", part of the message): one per events.proto rule."""
    return [
        ("empty event_id", dict(event_id=""), "event_id", "must not be empty"),
        ("long event_id", dict(event_id="x" * 129), "event_id", "129 bytes"),
        ("multibyte event_id", dict(event_id="é" * 65), "event_id", "130 bytes"),
        ("unspecified type", dict(type=events_pb2.EVENT_TYPE_UNSPECIFIED), "type", "EVENT_TYPE_UNSPECIFIED"),
        ("unknown type", dict(type=42), "type", "unknown event type 42"),
        ("empty user_id", dict(user_id=""), "user_id", "must not be empty"),
        ("long user_id", dict(user_id="u" * 129), "user_id", "129 bytes"),
        ("empty item_id", dict(item_id=""), "item_id", "must not be empty"),
        ("long item_id", dict(item_id="i" * 129), "item_id", "129 bytes"),
        ("long request_id", dict(request_id="r" * 65), "request_id", "65 bytes"),
        ("bad request_id", dict(request_id="req 1"), "request_id", "[A-Za-z0-9._:-]"),
        ("zero timestamp", dict(timestamp_ms=0), "timestamp_ms", "must be > 0"),
        ("negative timestamp", dict(timestamp_ms=-5), "timestamp_ms", "must be > 0"),
        ("future timestamp", dict(timestamp_ms=now_ms + 10 * 60_000), "timestamp_ms", "10.0 minutes ahead of server clock"),
        ("just past skew", dict(timestamp_ms=now_ms + 300_000 + 1), "timestamp_ms", "ahead of server clock"),
        ("nan value", dict(value=math.nan), "value", "finite"),
        ("inf value", dict(value=math.inf), "value", "finite"),
        ("negative value", dict(value=-0.5), "value", ">= 0"),
        ("zero dwell", dict(type=events_pb2.EVENT_TYPE_DWELL, value=0.0), "value", "EVENT_TYPE_DWELL"),
        ("too many properties", dict(properties={f"k{j}": "v" for j in range(33)}), "properties", "33 entries"),
        ("empty property key", dict(properties={"": "v"}), "properties['']", "1 to 64 bytes"),
        ("long property key", dict(properties={"k" * 65: "v"}), "properties['" + "k" * 65 + "']", "1 to 64 bytes"),
        ("camelCase key", dict(properties={"currencyCode": "USD"}), "properties['currencyCode']", "snake_case"),
        ("key with dash", dict(properties={"a-b": "v"}), "properties['a-b']", "snake_case"),
        ("leading digit key", dict(properties={"1st": "v"}), "properties['1st']", "snake_case"),
        ("long property value", dict(properties={"note": "n" * 257}), "properties['note']", "257 bytes"),
    ]


CASES = rule_cases()


def create_topic(bootstrap: str, config: Config, name: str, partitions: int = 2) -> str:
    """Create `name` (through stack.clients.ensure_topics) and wait until it is visible."""
    kafka = config.kafka.model_copy(update={"topics": {name: TopicConfig(partitions=partitions)}})
    ensure_topics(bootstrap, kafka)
    return name


def end_offsets(bootstrap: str, config: Config, topic: str) -> dict[int, int]:
    """Per-partition end offsets: comparing two snapshots shows whether anything was written in between."""
    consumer = kafka_consumer(bootstrap, config.kafka, None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def consume(bootstrap: str, config: Config, topic: str, expected: int, timeout_s: float = 20.0,
            settle_s: float = 0.3) -> list[tuple[bytes | None, bytes]]:
    """Every (key, value) on `topic` from the beginning: waits for `expected` records, then `settle_s`
    more so that any extra record (a duplicate) would show up too."""
    consumer = kafka_consumer(bootstrap, config.kafka, None, consumer_timeout_ms=200)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.05)
            parts = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[bytes | None, bytes]] = []
        settle_until = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=100)
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
            if len(out) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return out
    finally:
        consumer.close()
