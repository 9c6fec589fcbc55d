"""Helpers of the events tests: a fresh topic per test, reading a topic back with manual assignment."""

from __future__ import annotations

import time

from kafka import TopicPartition

from cascade.config import Config, TopicConfig
from stack.clients import ensure_topics, kafka_consumer


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
