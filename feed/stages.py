"""One small client interface per pipeline stage, with an in-process and a gRPC implementation.

The gateway calls ``await stage.call(request, timeout_s)`` with the stage's own
proto request and gets its proto response back, whatever the transport
(``feed.stage_transport``):

* :class:`InProcessStage` calls the stage's servicer object directly (the
  very ``RecallServicer`` / ``RankingServicer`` / ``RerankServicer`` its gRPC
  server hosts): the slice is enforced with ``asyncio.wait_for`` and bound as
  the call's deadline in :mod:`serving.context`, so the stage sees the same
  ``time_remaining()`` it would see behind gRPC; ``context.abort`` and
  :class:`serving.ValidationError` become the same status codes;
* :class:`GrpcStage` calls the stub over a :func:`serving.make_channel`
  channel with the slice as the call timeout (the channel also forwards the
  request id).

Both raise :class:`StageError` with a gRPC status code for every failure --
late (DEADLINE_EXCEEDED), unreachable (UNAVAILABLE), rejected
(INVALID_ARGUMENT, NOT_FOUND), broken (INTERNAL) -- and nothing else, so the
gateway's fallback logic has one shape to handle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from proto.cascade.v1 import (
    ranking_pb2,
    ranking_pb2_grpc,
    recall_pb2,
    recall_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
)
from serving import context as ctxmod
from serving.context import DeadlineExhausted
from serving.validation import ValidationError

_log = logging.getLogger("cascade.feed.stages")


class StageError(Exception):
    """A stage call that produced no response: its gRPC status code and details."""

    def __init__(self, stage: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{stage}: {code.name}: {details}")
        self.stage = stage
        self.code = code
        self.details = details


class Stage(Protocol):
    """A pipeline stage behind either transport."""

    name: str

    async def call(self, request: Any, timeout_s: float) -> Any:
        """The stage's response to `request` within `timeout_s`; raises :class:`StageError`."""
        ...


# ============================================================================ in process


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class InProcessContext:
    """The part of ``grpc.aio.ServicerContext`` Cascade servicers use, for calls made in process."""

    __slots__ = ("_deadline", "_code", "_details")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        raise _Abort(code, details)

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple[Any, ...]:
        rid = ctxmod.current_request_id()
        return ((ctxmod.REQUEST_ID_KEY, rid),) if rid else ()

    async def send_initial_metadata(self, metadata: Any) -> None:
        return None

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def peer(self) -> str:
        return "inprocess"

    def cancelled(self) -> bool:
        return False


class InProcessStage:
    """Calls ``method(request, context)`` of a servicer object in this process (see the module docstring).

    `parse` turns what the method returns into the response message (the
    RecallServicer answers with serialized bytes, which are parsed here).
    """

    transport = "inprocess"

    def __init__(self, name: str, method: Callable[[Any, Any], Awaitable[Any]],
                 parse: Callable[[Any], Any] | None = None) -> None:
        self.name = name
        self.method = method
        self.parse = parse

    async def _run(self, request: Any, deadline: float) -> Any:
        ctxmod.deadline.set(deadline)  # this task's copy of the context: the stage sees its slice as the deadline
        context = InProcessContext(deadline)
        out = await self.method(request, context)
        if context.code() not in (None, grpc.StatusCode.OK):
            raise _Abort(context.code(), context.details())  # type: ignore[arg-type]
        return out

    async def call(self, request: Any, timeout_s: float) -> Any:
        if timeout_s <= 0:
            raise StageError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED, "no time left for the stage")
        try:
            out = await asyncio.wait_for(self._run(request, time.monotonic() + timeout_s), timeout_s)
        except TimeoutError:
            raise StageError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"no answer within {timeout_s * 1000:.1f} ms") from None
        except _Abort as exc:
            raise StageError(self.name, exc.code, exc.details) from None
        except ValidationError as exc:
            raise StageError(self.name, grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except DeadlineExhausted as exc:
            raise StageError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a stage bug is a failed stage, not a failed feed
            _log.exception("feed: in-process %s stage raised", self.name)
            raise StageError(self.name, grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from None
        return self.parse(out) if self.parse is not None else out


def _parse_recall(out: Any) -> recall_pb2.RecallResponse:
    return recall_pb2.RecallResponse.FromString(out) if isinstance(out, bytes) else out


def inprocess_recall(servicer: Any) -> InProcessStage:
    """The RecallServicer's ``Recall`` (it answers serialized bytes: parsed back into a RecallResponse)."""
    return InProcessStage("recall", servicer.Recall, _parse_recall)


def inprocess_ranking(servicer: Any) -> InProcessStage:
    return InProcessStage("ranking", servicer.Rank)


def inprocess_rerank(servicer: Any) -> InProcessStage:
    return InProcessStage("rerank", servicer.Rerank)


# ============================================================================ gRPC


class GrpcStage:
    """Calls a unary stub method over a channel; `timeout_s` is the call timeout."""

    transport = "grpc"

    def __init__(self, name: str, method: Callable[..., Any]) -> None:
        self.name = name
        self.method = method

    async def call(self, request: Any, timeout_s: float) -> Any:
        if timeout_s <= 0:
            raise StageError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED, "no time left for the stage")
        try:
            return await self.method(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise StageError(self.name, exc.code() or grpc.StatusCode.UNKNOWN, exc.details() or "") from None
        except DeadlineExhausted as exc:  # the client interceptor found the propagated deadline spent
            raise StageError(self.name, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None


def grpc_recall(channel: grpc.aio.Channel) -> GrpcStage:
    return GrpcStage("recall", recall_pb2_grpc.RecallServiceStub(channel).Recall)


def grpc_ranking(channel: grpc.aio.Channel) -> GrpcStage:
    return GrpcStage("ranking", ranking_pb2_grpc.RankingServiceStub(channel).Rank)


def grpc_rerank(channel: grpc.aio.Channel) -> GrpcStage:
    return GrpcStage("rerank", rerank_pb2_grpc.RerankServiceStub(channel).Rerank)


# message types, for readers of the interface
REQUESTS = {"recall": recall_pb2.RecallRequest, "ranking": ranking_pb2.RankRequest, "rerank": rerank_pb2.RerankRequest}
RESPONSES = {"recall": recall_pb2.RecallResponse, "ranking": ranking_pb2.RankResponse, "rerank": rerank_pb2.RerankResponse}

__all__ = ["GrpcStage", "InProcessContext", "InProcessStage", "REQUESTS", "RESPONSES", "Stage", "StageError",
           "grpc_ranking", "grpc_recall", "grpc_rerank", "inprocess_ranking", "inprocess_recall", "inprocess_rerank"]
