"""The gRPC EventService: ``cascade.v1.EventService/LogEvents`` -> the Kafka ``events`` topic.

    server = build_events_server(config, redis_url, kafka_bootstrap)   # GrpcServer: health, reflection, metrics
    await server.start()

    cascade events [serve] [--port N] [--redis-url URL] [--bootstrap HOST:PORT]

One call:

1. validate the whole batch (:mod:`events.validation`): any bad event ->
   INVALID_ARGUMENT naming ``events[i].field``, nothing published, nothing claimed;
2. stamp ``received_at_ms`` (server clock) on every event;
3. claim the event_ids in Redis (:mod:`events.dedup`, one pipelined round trip):
   ids acked before are duplicates and are not published again; an id being
   published by a concurrent call -> UNAVAILABLE (retry);
4. publish the rest (key user_id, value the serialized Event) and wait for every
   Kafka ack (:mod:`events.publisher`); Kafka unreachable, slow or refusing ->
   release the claims and answer UNAVAILABLE, so the client's retry of the same
   batch publishes it;
5. mark the published ids done (one more round trip) and answer
   ``accepted_count`` = batch size, ``duplicate_count``.

Steps 3-5 run in a task shielded from the caller: a client whose deadline
passes mid-publish does not interrupt it, so its claims end marked done or
released, never left pending. A crash at any point loses nothing; at worst a retry publishes an event twice
with the same event_id (see :mod:`events.dedup` for each case). Without Redis
(``redis_url`` None, or Redis failing) the service still accepts and publishes,
just without de-duplication.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from prometheus_client import Counter

from cascade.config import Config
from events.dedup import Claim, Dedup, async_redis_client
from events.publisher import EventPublisher, PublishError
from events.validation import TYPE_NAMES, validate_log_events
from proto.cascade.v1 import events_pb2, events_pb2_grpc
from serving import GrpcServer, ValidationError

_log = logging.getLogger("cascade.events.service")

SERVICE_NAME = "cascade.v1.EventService"

EVENTS_ACCEPTED = Counter("cascade_events_accepted_total",
                          "Events of successful LogEvents calls (duplicates included), by type.", ["type"])
EVENTS_REJECTED = Counter("cascade_events_rejected_total",
                          "Events of batches rejected as INVALID_ARGUMENT, by the field that failed first.", ["field"])
EVENTS_DUPLICATES = Counter("cascade_events_duplicates_total",
                            "Events recognised as already published (same event_id) and not published again.")
EVENTS_UNAVAILABLE = Counter("cascade_events_unavailable_total",
                             "Events of batches answered UNAVAILABLE, by cause (kafka, in_flight).", ["cause"])

_TYPE_LABELS = {n: name.removeprefix("EVENT_TYPE_").lower() for n, name in TYPE_NAMES.items()}


def _field_label(path: str) -> str:
    """``events[3].properties['x']`` -> ``properties``: a bounded label set."""
    tail = path.split("].", 1)[-1] if "]." in path else path
    return tail.split("[", 1)[0]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(self, config: Config, publisher: EventPublisher, dedup: Dedup | None) -> None:
        self.settings = config.events
        self.publisher = publisher
        self.dedup = dedup
        self.in_flight: set[asyncio.Future[int]] = set()  # publishes still running (their callers may be gone)
        # Claim tokens: unique per call and per process, without a urandom read per call.
        process = uuid.uuid4().hex
        self._tokens = (f"{process}:{n}" for n in itertools.count())

    async def LogEvents(self, request: events_pb2.LogEventsRequest, context: grpc.aio.ServicerContext) -> events_pb2.LogEventsResponse:
        received = now_ms()
        events = request.events
        try:
            validate_log_events(request, self.settings, received)
        except ValidationError as exc:
            EVENTS_REJECTED.labels(_field_label(exc.field)).inc(len(events))
            raise
        for event in events:
            event.received_at_ms = received
        # Shielded: a caller that gives up (deadline, cancel) must not interrupt a publish half way, or the
        # claims would stay pending until they expire; the task finishes and records the outcome either way.
        task = asyncio.ensure_future(self._record(events))
        self.in_flight.add(task)
        task.add_done_callback(self._forget)
        try:
            outcome = await asyncio.shield(task)
        except _Busy as busy:
            EVENTS_UNAVAILABLE.labels("in_flight").inc(len(events))
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"events[{busy.index}].event_id {busy.event_id!r} is being published by a concurrent "
                                "call; nothing from this batch was published, retry the same batch")
        except PublishError as exc:
            EVENTS_UNAVAILABLE.labels("kafka").inc(len(events))
            _log.warning("LogEvents: %s", exc, extra={"events": len(events)})
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{exc}; no event of this batch is recorded as published, retry the same batch")
        for type_label, n in collections.Counter(_TYPE_LABELS[event.type] for event in events).items():
            EVENTS_ACCEPTED.labels(type_label).inc(n)
        if outcome:
            EVENTS_DUPLICATES.inc(outcome)
        return events_pb2.LogEventsResponse(accepted_count=len(events), duplicate_count=outcome)

    def _forget(self, task: asyncio.Future[int]) -> None:
        self.in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left must not cause "exception never retrieved"

    async def _record(self, events: Sequence[events_pb2.Event]) -> int:
        """Claim, publish, mark done; returns the number of duplicates. Raises _Busy or PublishError."""
        ids = [event.event_id for event in events]
        dedup = self.dedup
        claim = await dedup.claim(ids, next(self._tokens)) if dedup is not None \
            else Claim(owned=list(range(len(ids))), degraded=True)
        owned_ids = [ids[i] for i in claim.owned]
        keeps_claims = dedup is not None and not claim.degraded
        if claim.busy:
            if keeps_claims:
                await dedup.release(owned_ids)
            raise _Busy(claim.busy[0], ids[claim.busy[0]])
        if claim.owned:
            try:
                await self.publisher.publish([events[i] for i in claim.owned])
            except PublishError:
                if keeps_claims:
                    await dedup.release(owned_ids)
                raise
            if keeps_claims:
                await dedup.mark_done(owned_ids)
        return len(claim.done)


class _Busy(Exception):
    """An event_id of the batch is claimed by another call that is publishing it now."""

    def __init__(self, index: int, event_id: str) -> None:
        super().__init__(index, event_id)
        self.index = index
        self.event_id = event_id


class EventsServer(GrpcServer):
    """A :class:`GrpcServer` hosting the EventService; stopping it flushes the producer and closes Redis."""

    def __init__(self, config: Config, publisher: EventPublisher, redis_factory: Any, port: int = 0,
                 key_prefix: str | None = None) -> None:
        super().__init__("events", config.grpc, port)
        self.cascade_config = config
        self.publisher = publisher
        self._redis_factory = redis_factory
        self._key_prefix = key_prefix
        self.dedup: Dedup | None = None
        self._warm_up: asyncio.Future[bool] | None = None
        self.servicer = EventServicer(config, publisher, None)
        self.add_service(events_pb2_grpc.add_EventServiceServicer_to_server, self.servicer, SERVICE_NAME)

    async def start(self) -> int:
        # The Redis client belongs to the loop that uses it: create it here, not in the builder.
        if self._redis_factory is None:
            _log.warning("EventService without Redis: events are not de-duplicated")
        elif self.dedup is None:
            self.dedup = Dedup(self._redis_factory(), self.cascade_config, self._key_prefix)
        self.servicer.dedup = self.dedup
        # Connect to Kafka in the background: an unreachable broker must not stop the server from answering.
        self._warm_up = asyncio.ensure_future(self.publisher.warm_up())
        return await super().start()

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        if self._warm_up is not None:
            self._warm_up.cancel()
        if self.servicer.in_flight:  # publishes whose callers left: let them record their outcome
            await asyncio.wait(list(self.servicer.in_flight), timeout=2 * self.publisher.timeout_s)
        await asyncio.to_thread(self.publisher.close)
        if self.dedup is not None:
            await self.dedup.aclose()
            self.dedup = self.servicer.dedup = None


def build_events_server(config: Config, redis_url: str | None, kafka_bootstrap: str, *, port: int | None = None,
                        topic: str | None = None, key_prefix: str | None = None) -> EventsServer:
    """An EventService server (not started) publishing to ``topic`` (default the configured ``events`` topic).

    ``redis_url`` None serves without de-duplication. ``port`` defaults to
    ``config.ports.events``; ``key_prefix`` to ``config.events.key_prefix``.
    """
    publisher = EventPublisher(config, kafka_bootstrap, topic=topic)
    factory = None if redis_url is None else (lambda: async_redis_client(redis_url, config))
    return EventsServer(config, publisher, factory, config.ports.events if port is None else port, key_prefix)


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade events serve``: run the EventService until SIGINT/SIGTERM."""
    from cascade.config import get_config
    from serving.entrypoint import run_service

    parser = argparse.ArgumentParser(prog="cascade events serve",
                                     description="Serve event ingestion over gRPC (cascade.v1.EventService) into Kafka.")
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.events; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="Redis for de-duplication (default: config redis.url / REDIS_URL; "
                        "none starts an embedded valkey)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topic", default=None, help="topic (default: the configured 'events' topic)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()
    bootstrap = args.bootstrap or config.kafka.bootstrap_servers
    if not bootstrap:
        print("error: no Kafka configured: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap "
              "(`cascade stack` starts a local one)", file=sys.stderr)
        return 1

    def describe(server: EventsServer) -> str:
        return f"EventService (Kafka {bootstrap}, topic {server.publisher.topic})"

    return run_service(config, args.redis_url or config.redis.url,
                       lambda redis_url: build_events_server(config, redis_url, bootstrap, port=args.port, topic=args.topic),
                       describe, metrics_port=args.metrics_port)


__all__ = ["SERVICE_NAME", "EventServicer", "EventsServer", "build_events_server", "serve"]
