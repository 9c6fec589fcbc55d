"""A tiny Echo service (google.protobuf.StringValue in and out) for exercising serving/ over real sockets.

The request value is a JSON command, e.g. ``{"op": "sleep", "s": 0.5}``; see EchoServicer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2

import serving
from cascade.config import GrpcConfig
from serving.validation import ValidationError

SERVICE = "cascade.test.Echo"


class EchoServicer:
    """Behaviour chosen by the request; ``downstream`` is the address of another Echo server for "chain"."""

    def __init__(self, downstream: str | None = None, config: GrpcConfig | None = None) -> None:
        self.downstream = downstream
        self.config = config
        self._channel: grpc.aio.Channel | None = None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def Echo(self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> wrappers_pb2.StringValue:
        cmd: dict[str, Any] = json.loads(request.value) if request.value.startswith("{") else {"op": "echo"}
        op = cmd["op"]
        if op == "echo":
            return request
        if op == "invalid":
            raise ValidationError("query.user_id", "must not be empty")
        if op == "boom":
            raise RuntimeError("secret internal detail")
        if op == "exhausted":
            serving.outgoing_timeout(0.0)  # no budget left: raises DeadlineExhausted
        if op == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such user")
        if op == "sleep":
            await asyncio.sleep(cmd["s"])
            return wrappers_pb2.StringValue(value="slept")
        if op == "info":  # what the server sees of the propagated context
            return wrappers_pb2.StringValue(value=json.dumps({
                "request_id": serving.current_request_id(),
                "time_remaining": serving.time_remaining(),
                "grpc_time_remaining": context.time_remaining(),
            }))
        if op == "chain":  # call the downstream Echo "info" through make_channel
            assert self.downstream is not None and self.config is not None
            if self._channel is None:
                self._channel = serving.make_channel(self.downstream, self.config)
            before = serving.time_remaining()
            timeout = serving.outgoing_timeout(cmd["budget"]) if cmd.get("budget") else None
            reply = await echo_stub(self._channel)(wrappers_pb2.StringValue(value='{"op": "info"}'), timeout=timeout)
            return wrappers_pb2.StringValue(value=json.dumps({
                "upstream_request_id": serving.current_request_id(),
                "upstream_remaining": before,
                "downstream": json.loads(reply.value),
            }))
        raise AssertionError(f"unknown op {op}")

    async def Count(self, request: wrappers_pb2.StringValue, context: grpc.aio.ServicerContext) -> AsyncIterator[wrappers_pb2.StringValue]:
        """Streams "0", "1", ...; a request "n!" fails with RuntimeError after n items."""
        n = int(request.value.rstrip("!"))
        for i in range(n):
            yield wrappers_pb2.StringValue(value=str(i))
        if request.value.endswith("!"):
            raise RuntimeError("stream broke")


def register_echo(servicer: EchoServicer, server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(
            servicer.Echo, wrappers_pb2.StringValue.FromString, wrappers_pb2.StringValue.SerializeToString),
        "Count": grpc.unary_stream_rpc_method_handler(
            servicer.Count, wrappers_pb2.StringValue.FromString, wrappers_pb2.StringValue.SerializeToString),
    })])


def echo_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/{SERVICE}/Echo",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


def count_stub(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable:
    return channel.unary_stream(
        f"/{SERVICE}/Count",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


def cmd(op: str, **kw: Any) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=json.dumps({"op": op, **kw}))


async def start_echo(config: GrpcConfig, servicer: EchoServicer | None = None, name: str = "echo") -> serving.GrpcServer:
    server = serving.GrpcServer(name, config)
    server.add_service(register_echo, servicer or EchoServicer(), SERVICE)
    await server.start()
    return server


@pytest.fixture
def grpc_config() -> GrpcConfig:
    return GrpcConfig(host="127.0.0.1", max_message_bytes=64 * 1024, shutdown_grace_s=2.0, default_deadline_s=2.0)


@pytest.fixture
def echo() -> SimpleNamespace:
    """The Echo test kit (tests dirs have no __init__.py, so helpers travel as a fixture)."""
    return SimpleNamespace(
        SERVICE=SERVICE, Servicer=EchoServicer, register=register_echo, stub=echo_stub,
        count_stub=count_stub, cmd=cmd, start=start_echo,
    )
