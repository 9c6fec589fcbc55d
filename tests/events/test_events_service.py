"""EventService over loopback gRPC with the real Redis and Kafka: publish, reject, de-duplicate, fail safely."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from cascade.config import Config
from events.dedup import CLAIM_PREFIX, DONE
from events.service import SERVICE_NAME, build_events_server
from events_helpers import consume, end_offsets, ev, rule_cases
from proto.cascade.v1 import events_pb2, events_pb2_grpc
from test_events_impressions import dead_bootstrap


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fast(config: Config, **events_settings) -> Config:
    """Short Kafka and Redis timeouts, so the failure tests take about a second."""
    settings = {"publish_timeout_s": 0.5, "dedup_timeout_s": 0.5, **events_settings}
    return config.model_copy(update={"events": config.events.model_copy(update=settings)})


def serve(config: Config, redis_url: str | None, bootstrap: str, topic: str, prefix: str, calls):
    """Start a server, run ``await calls(stub, channel)`` against it, stop it; returns what calls returned."""

    async def scenario():
        server = build_events_server(config, redis_url, bootstrap, port=0, topic=topic, key_prefix=prefix)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                return await calls(events_pb2_grpc.EventServiceStub(channel), channel)
        finally:
            await server.stop(0)

    return asyncio.run(scenario())


def request(*events: events_pb2.Event) -> events_pb2.LogEventsRequest:
    return events_pb2.LogEventsRequest(events=events)


def published(bootstrap: str, config: Config, topic: str, expected: int) -> list[events_pb2.Event]:
    out = []
    for key, value in consume(bootstrap, config, topic, expected):
        event = events_pb2.Event.FromString(value)
        assert key == event.user_id.encode()  # keyed by user_id
        out.append(event)
    return out


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_valid_batch_lands_in_the_events_topic(config, stack, redis, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()
    sent = [
        ev(0, now, type=events_pb2.EVENT_TYPE_CLICK, user_id="u1"),
        ev(1, now, type=events_pb2.EVENT_TYPE_DWELL, value=12.5, user_id="u2", properties={}),
        ev(2, now, type=events_pb2.EVENT_TYPE_PURCHASE, value=9.99, user_id="u3", request_id="",
           properties={"currency": "EUR", "coupon_code": "x" * 256}),
        ev(3, now, type=events_pb2.EVENT_TYPE_RATING, value=4.0, user_id="ü-user", received_at_ms=123),
    ]
    clicks_before = metric("cascade_events_accepted_total", {"type": "click"})

    async def calls(stub, channel):
        before = now_ms()
        resp = await stub.LogEvents(request(*sent), timeout=10)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        return before, now_ms(), resp, health

    before, after, resp, health = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, calls)
    assert (resp.accepted_count, resp.duplicate_count) == (4, 0)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    got = {e.event_id: e for e in published(stack.kafka_bootstrap, config, topic, len(sent))}
    assert len(got) == len(sent)
    for event in sent:
        out = got[event.event_id]
        assert before <= out.received_at_ms <= after  # stamped by the server, the client's value ignored
        expected = events_pb2.Event()
        expected.CopyFrom(event)
        expected.received_at_ms = out.received_at_ms
        assert out == expected
    # Marked as published in Redis, under the test's prefix.
    assert redis.get(f"{unique_prefix}:eid:e-0") == DONE
    assert metric("cascade_events_accepted_total", {"type": "click"}) - clicks_before == 1


def test_every_invalid_batch_is_rejected_and_nothing_published(config, stack, redis, new_topic, unique_prefix) -> None:
    topic = new_topic()
    offsets_before = end_offsets(stack.kafka_bootstrap, config, topic)
    rejected_before = metric("cascade_events_rejected_total", {"field": "timestamp_ms"})
    # 'just past skew' is 1 ms past the bound: exact only with one clock (the pure tests cover it).
    cases = [c for c in rule_cases(now_ms()) if c[0] != "just past skew"]

    async def calls(stub, channel):
        out = []
        for name, change, field, message in cases:
            now = now_ms()
            # Valid events before and after the offender: all-or-nothing means none of them is published either.
            batch = request(ev(0, now, event_id=f"{name}-0"), ev(1, now, event_id=f"{name}-1"),
                            ev(2, now, **({"event_id": f"{name}-2"} | change)), ev(3, now, event_id=f"{name}-3"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.LogEvents(batch, timeout=10)
            out.append((name, field, message, info.value.code(), info.value.details()))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(request(), timeout=10)
        out.append(("empty batch", None, "at least 1", info.value.code(), info.value.details()))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(request(*(ev(i, now_ms()) for i in range(config.events.max_batch_events + 1))), timeout=10)
        out.append(("oversized batch", None, str(config.events.max_batch_events + 1), info.value.code(), info.value.details()))
        return out

    results = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, calls)
    for name, field, message, code, details in results:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert (f"events[2].{field}" if field else "'events'") in details, (name, details)
        assert message in details, (name, details)
    assert end_offsets(stack.kafka_bootstrap, config, topic) == offsets_before
    assert list(redis.scan_iter(f"{unique_prefix}:*")) == []  # nothing claimed either
    assert metric("cascade_events_rejected_total", {"field": "timestamp_ms"}) - rejected_before == 3 * 4


def test_far_future_timestamp_is_rejected(config, stack, new_topic, unique_prefix) -> None:
    topic = new_topic()

    async def calls(stub, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(request(ev(0, now_ms()), ev(1, now_ms() + 3_600_000)), timeout=10)
        return info.value

    err = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, calls)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].timestamp_ms" in err.details() and "minutes ahead of server clock" in err.details()


def test_retried_batch_reports_duplicates_and_is_published_once(config, stack, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()
    first = [ev(i, now, user_id=f"u{i}") for i in range(3)]
    dup_before = metric("cascade_events_duplicates_total")

    async def calls(stub, channel):
        a = await stub.LogEvents(request(*first), timeout=10)
        b = await stub.LogEvents(request(*first), timeout=10)  # the client retries the same batch
        c = await stub.LogEvents(request(first[1], ev(7, now), first[0], ev(8, now)), timeout=10)  # overlapping batch
        return a, b, c

    a, b, c = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, calls)
    assert (a.accepted_count, a.duplicate_count) == (3, 0)
    assert (b.accepted_count, b.duplicate_count) == (3, 3)
    assert (c.accepted_count, c.duplicate_count) == (4, 2)
    events = published(stack.kafka_bootstrap, config, topic, 5)
    assert sorted(e.event_id for e in events) == ["e-0", "e-1", "e-2", "e-7", "e-8"]  # each exactly once
    assert metric("cascade_events_duplicates_total") - dup_before == 5


def test_kafka_unavailable_is_unavailable_and_the_retry_publishes(config, stack, redis, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()
    batch = request(*(ev(i, now, user_id=f"u{i}") for i in range(3)))

    async def failing(stub, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(batch, timeout=10)
        return info.value

    err = serve(fast(config), stack.redis_url, dead_bootstrap(), topic, unique_prefix, failing)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry the same batch" in err.details()
    assert list(redis.scan_iter(f"{unique_prefix}:*")) == []  # claims released: nothing recorded as published

    async def retry(stub, channel):
        return await stub.LogEvents(batch, timeout=10)

    resp = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, retry)
    assert (resp.accepted_count, resp.duplicate_count) == (3, 0)
    assert sorted(e.event_id for e in published(stack.kafka_bootstrap, config, topic, 3)) == ["e-0", "e-1", "e-2"]


def test_event_claimed_by_a_concurrent_call_is_unavailable(config, stack, redis, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()
    # Another call (perhaps on a server that then crashed) is publishing e-1 right now.
    redis.set(f"{unique_prefix}:eid:e-1", CLAIM_PREFIX + b"another-call", px=60_000)
    offsets_before = end_offsets(stack.kafka_bootstrap, config, topic)

    async def calls(stub, channel):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(request(ev(0, now), ev(1, now), ev(2, now)), timeout=10)
        return info.value

    err = serve(config, stack.redis_url, stack.kafka_bootstrap, topic, unique_prefix, calls)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "events[1].event_id" in err.details()
    assert end_offsets(stack.kafka_bootstrap, config, topic) == offsets_before
    # Its own claims on e-0 and e-2 were released; the other call's claim is untouched.
    assert sorted(k.decode() for k in redis.scan_iter(f"{unique_prefix}:*")) == [f"{unique_prefix}:eid:e-1"]


def test_without_redis_events_are_still_published(config, stack, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()
    batch = request(ev(0, now), ev(1, now))

    async def calls(stub, channel):
        return [await stub.LogEvents(batch, timeout=10) for _ in range(2)]

    down = "redis://" + dead_bootstrap()  # Redis unreachable: de-duplication is skipped, never the events
    responses = serve(fast(config), down, stack.kafka_bootstrap, topic, unique_prefix, calls)
    assert [(r.accepted_count, r.duplicate_count) for r in responses] == [(2, 0), (2, 0)]
    assert sorted(e.event_id for e in published(stack.kafka_bootstrap, config, topic, 4)) == ["e-0", "e-0", "e-1", "e-1"]


def test_a_caller_that_gives_up_leaves_no_claim_behind(config, stack, redis, new_topic, unique_prefix) -> None:
    topic = new_topic()
    now = now_ms()

    async def calls(stub, channel):
        # Kafka is down and connecting takes publish_timeout_s: the caller's 0.2 s deadline passes first.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.LogEvents(request(ev(0, now), ev(1, now)), timeout=0.2)
        return info.value

    err = serve(fast(config, publish_timeout_s=1.0), stack.redis_url, dead_bootstrap(), topic, unique_prefix, calls)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The publish ran to its end after the caller left (stop() waits for it) and released its claims.
    assert list(redis.scan_iter(f"{unique_prefix}:*")) == []


def test_broker_lost_after_start_is_unavailable_and_nothing_is_marked(config, stack, redis, tmp_path, unique_prefix) -> None:
    from stack.kafka_broker import EmbeddedKafka

    from events_helpers import create_topic

    broker = EmbeddedKafka(tmp_path).start()  # a private broker this test may kill
    try:
        topic = create_topic(broker.bootstrap_servers, config, f"{unique_prefix}-private")
        now = now_ms()
        before, after = request(ev(0, now), ev(1, now)), request(ev(2, now), ev(3, now))

        async def calls(stub, channel):
            ok = await stub.LogEvents(before, timeout=10)
            os.kill(broker.pid, signal.SIGKILL)  # Kafka crashes while the service runs
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.LogEvents(after, timeout=10)
            return ok, info.value

        ok, err = serve(fast(config, publish_timeout_s=1.0), stack.redis_url, broker.bootstrap_servers, topic,
                        unique_prefix, calls)
    finally:
        broker.stop()
    assert (ok.accepted_count, ok.duplicate_count) == (2, 0)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "retry the same batch" in err.details()
    keys = sorted(k.decode().rsplit(":", 1)[-1] for k in redis.scan_iter(f"{unique_prefix}:*"))
    assert keys == ["e-0", "e-1"]  # only the acked batch is remembered: the retry of the other one publishes
