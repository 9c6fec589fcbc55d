"""Helpers of the streaming tests: events as the EventService writes them, topics, producing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from cascade.config import Config
from proto.cascade.v1.events_pb2 import Event
from stack.clients import kafka_producer

TYPES = {"click": 1, "like": 2, "share": 3, "dwell": 4, "hide": 5, "purchase": 6, "comment": 7, "view": 8}


def ms(ts: datetime) -> int:
    return int(round(ts.timestamp() * 1000))


def event(user_id: int, item_id: int, ts: datetime, value: float = 0.0, type: str = "click", event_id: str = "") -> Event:
    """A `cascade.v1.Event`: ids as strings, the time in epoch ms (what EventService publishes)."""
    return Event(event_id=event_id or f"{user_id}-{item_id}-{ms(ts)}", type=TYPES[type], user_id=str(user_id),
                 item_id=str(item_id), timestamp_ms=ms(ts), value=value)


def json_value(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def create_topic(bootstrap: str, config: Config, name: str, partitions: int = 1, timeout_s: float = 20.0) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{config.kafka.client_id}-test-admin",
                             request_timeout_ms=config.kafka.request_timeout_ms)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
        deadline = time.monotonic() + timeout_s
        while name not in set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} not visible after {timeout_s}s")
            time.sleep(0.05)
    finally:
        admin.close()
    return name


def produce(bootstrap: str, config: Config, topic: str, values: Iterable[bytes | Event],
            keys: Iterable[bytes | None] | None = None, partition: int | None = None) -> int:
    """Send the values in order (Events serialized), wait for every ack; returns how many were sent."""
    producer = kafka_producer(bootstrap, config.kafka, max_in_flight_requests_per_connection=1)
    n = 0
    try:
        key_list = list(keys) if keys is not None else None
        for i, v in enumerate(values):
            raw = v.SerializeToString() if isinstance(v, Event) else v
            key = key_list[i] if key_list is not None else None
            producer.send(topic, value=raw, key=key, partition=partition).get(timeout=30)
            n += 1
    finally:
        producer.close()
    return n


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)
