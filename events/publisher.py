"""Publish a batch of events to Kafka and wait for every ack, without blocking the event loop.

kafka-python is thread-based: ``send`` can block (connecting, first metadata of a
topic, a full producer buffer), so sends run on one dedicated thread; acks come
back on the producer's I/O thread and resolve an asyncio future. Every wait is
bounded by ``events.publish_timeout_s`` (bootstrap, metadata and the producer's
``delivery_timeout_ms``), so a batch that fails has *finished* failing when the
caller learns it: the producer will not deliver it later behind the caller's back.

A batch is not atomic on Kafka: if the broker fails half way, some records of a
failed batch may have been written. The EventService answers UNAVAILABLE and
does not mark any of them as published, so the retry writes them again:
duplicates (same event_id) are possible, losses are not.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import Histogram

from cascade.config import Config
from events.producer import close_producer, make_producer, user_key
from proto.cascade.v1 import events_pb2
from serving.metrics import LATENCY_BUCKETS

_log = logging.getLogger("cascade.events.publisher")

TOPIC_KEY = "events"

PUBLISH_SECONDS = Histogram(
    "cascade_events_publish_seconds",
    "LogEvents: time from handing a batch to the Kafka producer to the last ack (successful batches).",
    buckets=LATENCY_BUCKETS,
)


class PublishError(Exception):
    """Kafka did not ack the whole batch (unreachable, timed out, or refused a record)."""


class EventPublisher:
    """A lazily connected producer for the events topic (key user_id, value the serialized Event)."""

    def __init__(self, config: Config, bootstrap: str, *, topic: str | None = None, **producer_overrides: Any) -> None:
        if topic is None and TOPIC_KEY not in config.kafka.topics:
            raise ValueError(f"no {TOPIC_KEY!r} topic in config.kafka.topics")
        ev = config.events
        self.config = config
        self.bootstrap = bootstrap
        self.topic = topic or TOPIC_KEY
        self.timeout_s = ev.publish_timeout_s
        timeout_ms = max(1, int(ev.publish_timeout_s * 1000))
        self._options: dict[str, Any] = {
            "linger_ms": ev.publish_linger_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": max(1, timeout_ms - ev.publish_linger_ms),
            "delivery_timeout_ms": max(timeout_ms, ev.publish_linger_ms + 1),
            **producer_overrides,
        }
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-publish")
        self._producer: Any = None
        self._failed_connect_at: float | None = None
        self._closed = False

    # -- runs on the publish thread ---------------------------------------------------

    def _connected(self) -> Any:
        if self._closed:
            raise PublishError("publisher is closed")
        if self._producer is not None:
            return self._producer
        # After a failed connect, fail fast for one timeout instead of queueing every call behind another wait.
        if self._failed_connect_at is not None and time.monotonic() - self._failed_connect_at < self.timeout_s:
            raise PublishError(f"Kafka at {self.bootstrap} is unreachable (retrying at most every {self.timeout_s:g}s)")
        try:
            self._producer = make_producer(self.bootstrap, self.config, **self._options)
        except (KafkaError, OSError) as exc:
            self._failed_connect_at = time.monotonic()
            raise PublishError(f"cannot connect to Kafka at {self.bootstrap}: {exc}") from exc
        self._failed_connect_at = None
        return self._producer

    def _send(self, events: Sequence[events_pb2.Event]) -> list[Any]:
        producer = self._connected()
        topic = self.topic
        futures = []
        try:
            for event in events:
                futures.append(producer.send(topic, key=user_key(event.user_id), value=event.SerializeToString()))
        except (KafkaError, OSError) as exc:
            raise PublishError(f"Kafka send failed after {len(futures)} of {len(events)} events: {exc}") from exc
        return futures

    def _warm_up(self) -> None:
        self._connected().partitions_for(self.topic)  # topic metadata now, not on the first call

    # -- the asyncio side -----------------------------------------------------------------

    async def warm_up(self) -> bool:
        """Connect and fetch the topic's metadata before the first call; False (logged) if Kafka is unreachable."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._warm_up)
            return True
        except (PublishError, KafkaError, OSError) as exc:
            _log.warning("events publisher cannot reach Kafka yet: %s", exc)
            return False

    async def publish(self, events: Sequence[events_pb2.Event]) -> None:
        """Send every event and wait for all acks; raises :class:`PublishError` otherwise."""
        if not events:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        futures = await loop.run_in_executor(self._executor, self._send, events)
        done: asyncio.Future[None] = loop.create_future()
        lock = threading.Lock()
        state = {"pending": len(futures), "error": None}

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def on_result(result: Any) -> None:  # the producer's I/O thread (or here, if already done)
            with lock:
                if isinstance(result, BaseException) and state["error"] is None:
                    state["error"] = result
                state["pending"] -= 1
                last = state["pending"] == 0
            if last:
                try:
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:  # the loop is gone (shutdown)
                    pass

        for future in futures:
            future.add_both(on_result)
        try:
            # delivery_timeout_ms bounds the acks; twice that is only a backstop against a stuck producer.
            await asyncio.wait_for(asyncio.shield(done), timeout=2 * self.timeout_s)
        except TimeoutError as exc:
            raise PublishError(f"Kafka did not ack {state['pending']} of {len(futures)} events "
                               f"within {2 * self.timeout_s:g}s") from exc
        if state["error"] is not None:
            raise PublishError(f"Kafka did not ack the batch: {state['error']!r}")
        PUBLISH_SECONDS.observe(time.perf_counter() - started)

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and close the producer (blocking; call from a thread when inside the event loop)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s

        def shut() -> None:
            self._closed = True
            if self._producer is not None:
                close_producer(self._producer, timeout)

        # On the publish thread, after any send already queued there.
        try:
            self._executor.submit(shut).result(timeout=2 * timeout + 1)
        except Exception as exc:  # noqa: BLE001 - closing must not raise on the way out
            _log.warning("events publisher did not close cleanly: %r", exc)
        self._executor.shutdown(wait=False)


__all__ = ["PUBLISH_SECONDS", "EventPublisher", "PublishError"]
