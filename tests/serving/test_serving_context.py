"""Request id / deadline contextvars and the outgoing-timeout arithmetic."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.protobuf import wrappers_pb2

import serving
from cascade.config import GrpcConfig
from serving.context import (
    DeadlineExhausted,
    PropagatingClientInterceptor,
    current_request_id,
    outgoing_timeout,
    request_scope,
    safety_margin,
    sanitize_request_id,
    time_remaining,
)


def test_outside_a_call_nothing_is_bound():
    assert current_request_id() is None
    assert time_remaining() is None
    assert outgoing_timeout(None, default_s=1.5) == 1.5
    assert outgoing_timeout(0.3, default_s=1.5) == 0.3


def test_outgoing_timeout_is_min_of_budget_and_deadline_minus_margin():
    with request_scope("r1", 1.0):
        assert current_request_id() == "r1"
        remaining = time_remaining()
        assert remaining is not None and 0.9 < remaining <= 1.0
        t = outgoing_timeout(None)
        assert t <= remaining - safety_margin(0.9) + 1e-3
        assert outgoing_timeout(0.1) == 0.1  # stage budget is tighter
        assert outgoing_timeout(5.0) == pytest.approx(t, abs=0.01)  # deadline is tighter
    assert current_request_id() is None and time_remaining() is None  # scope restored


def test_exhausted_deadline_raises():
    with request_scope("r2", 0.001):
        time.sleep(0.005)
        assert time_remaining() == 0.0
        with pytest.raises(DeadlineExhausted):
            outgoing_timeout(0.5)
    with pytest.raises(DeadlineExhausted):
        outgoing_timeout(0.0)


def test_sanitize_request_id():
    assert sanitize_request_id("abc-123_x.y") == "abc-123_x.y"
    assert sanitize_request_id(b"abc") == "abc"
    for bad in (None, "", "x" * 129, "has space", "new\nline", "é"):
        assert sanitize_request_id(bad) is None


def test_tasks_spawned_in_a_call_inherit_the_context():
    async def scenario():
        with request_scope("parent", 1.0):
            return await asyncio.create_task(asyncio.sleep(0, result=(current_request_id(), time_remaining())))

    rid, remaining = asyncio.run(scenario())
    assert rid == "parent" and remaining is not None


def test_client_interceptor_refuses_a_call_with_no_time_left(echo):
    """The interceptor's DeadlineExhausted reaches the caller as-is (grpc.aio does not wrap it)."""
    config = GrpcConfig()

    async def scenario():
        server = await echo.start(config)
        try:
            async with serving.make_channel(server.address, config) as ch:
                with request_scope("r3", 0.001):
                    await asyncio.sleep(0.005)
                    with pytest.raises(DeadlineExhausted):
                        await echo.stub(ch)(echo.cmd("echo"))
                with request_scope("r4", 0.5):
                    reply = await echo.stub(ch)(echo.cmd("info"))
                    streamed = [m.value async for m in echo.count_stub(ch)(wrappers_pb2.StringValue(value="2"))]
                assert streamed == ["0", "1"]  # unary-stream calls go through the interceptor too
        finally:
            await server.stop(0)
        return reply


    info = json.loads(asyncio.run(scenario()).value)
    assert info["request_id"] == "r4"
    assert info["grpc_time_remaining"] <= 0.5


def test_client_interceptor_keeps_a_shorter_caller_timeout_and_caller_request_id():
    seen = {}

    async def continuation(details, request):
        seen["details"] = details
        return "call"

    async def scenario():
        interceptor = PropagatingClientInterceptor(default_timeout_s=2.0)
        base = grpc.aio.ClientCallDetails("/s/M", None, None, None, None)
        await interceptor.intercept_unary_unary(continuation, base, None)
        no_scope = seen["details"]
        with request_scope("rid", 1.0):
            await interceptor.intercept_unary_unary(continuation, base._replace(timeout=0.05), None)
            shorter = seen["details"]
            await interceptor.intercept_unary_unary(
                continuation, base._replace(timeout=30.0, metadata=grpc.aio.Metadata(("x-request-id", "mine"))), None)
            longer = seen["details"]
        return no_scope, shorter, longer

    no_scope, shorter, longer = asyncio.run(scenario())
    assert no_scope.timeout == 2.0 and "x-request-id" not in no_scope.metadata
    assert shorter.timeout == 0.05 and shorter.metadata["x-request-id"] == "rid"
    assert longer.timeout < 1.0 and longer.metadata["x-request-id"] == "mine"
