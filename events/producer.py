"""Kafka producers of the events package: one place decides acks, idempotence and timeouts.

Both writers (the impression logger and the EventService) go through
:func:`stack.clients.kafka_producer`; this module only adds what they share:
``events.acks`` ('all' makes the producer idempotent, so its own retries never
duplicate a record) and the user_id record key that puts a user's impressions
and events on the same partition (records.proto).
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from cascade.config import Config


def acks_option(acks: str) -> int | str:
    """``events.acks`` as kafka-python wants it: 'all', 0 or 1 ('-1' is 'all')."""
    return "all" if acks in ("all", "-1") else int(acks)


def make_producer(bootstrap: str, config: Config, **overrides: Any) -> KafkaProducer:
    """A producer with the configured acks; idempotent exactly when acks is 'all'.

    Connecting is part of construction (kafka-python bootstraps eagerly), so
    callers bound it with ``bootstrap_timeout_ms`` and expect
    :class:`kafka.errors.KafkaError` when the broker is unreachable.
    """
    from stack.clients import kafka_producer

    acks = acks_option(config.events.acks)
    options: dict[str, Any] = {"acks": acks, "enable_idempotence": acks == "all"}
    options.update(overrides)
    return kafka_producer(bootstrap, config.kafka, **options)


def user_key(user_id: str) -> bytes:
    """The record key: user_id as UTF-8 (records.proto: a user's records share a partition)."""
    return user_id.encode("utf-8")


def close_producer(producer: KafkaProducer, timeout_s: float) -> bool:
    """Close within ``timeout_s``, even with records Kafka will never take; False if some were abandoned.

    kafka-python 3.0's ``close(timeout)`` flushes first and raises KafkaTimeoutError
    when that flush times out, leaving its sender thread running (and retrying
    until ``delivery_timeout_ms``). Then the sender is force-closed, which aborts
    the pending batches: their futures fail, so callers' error callbacks run.
    """
    try:
        producer.close(timeout=max(0.0, timeout_s))
        return True
    except KafkaError:
        sender = getattr(producer, "_sender", None)  # no public way to abort pending batches
        if sender is not None:
            sender.force_close()
            # Closed for good: otherwise __del__ tries close(timeout=1) again and raises during garbage collection.
            producer._closed = True
        return False
