"""The server interceptor every Cascade service runs: metrics, request id, deadline, error mapping, access log.

grpc.aio server interceptors only see ``HandlerCallDetails`` (method name and
metadata): no ServicerContext, no request, no outcome. So this interceptor
does its work by *wrapping the handler's behaviour* in a function of the same
kind (coroutine function or async generator function, which is what the aio
server dispatches on) and returning an equivalent ``RpcMethodHandler``.

Per call the wrapper:

* binds ``x-request-id`` (client's, if sane, else a new uuid4 hex) and the
  absolute deadline into :mod:`serving.context`, and sends the id back as
  initial metadata (handlers therefore must not call ``send_initial_metadata``
  themselves);
* maps :class:`~serving.validation.ValidationError` to INVALID_ARGUMENT,
  :class:`~serving.context.DeadlineExhausted` and a downstream
  DEADLINE_EXCEEDED to DEADLINE_EXCEEDED, and anything else unexpected to
  INTERNAL (traceback logged), while statuses set by ``context.abort()`` or
  ``context.set_code()`` pass through unchanged;
* records ``cascade_grpc_*`` metrics with the final code and logs one line.

Synchronous behaviours (which grpc.aio runs on a thread pool) are passed
through untouched: Cascade handlers are ``async def``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
import grpc.aio

from serving import context as ctxmod
from serving.context import REQUEST_ID_KEY, DeadlineExhausted, new_request_id, sanitize_request_id
from serving.metrics import GRPC_IN_FLIGHT, GRPC_LATENCY, GRPC_REQUESTS
from serving.validation import ValidationError

_log = logging.getLogger("cascade.grpc")
_access_log = logging.getLogger("cascade.grpc.access")

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = frozenset({"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"})
# Probes and tooling: not worth a metric series and an access-log line per load-balancer poll.
DEFAULT_SKIP_SERVICES: frozenset[str] = frozenset({HEALTH_SERVICE}) | REFLECTION_SERVICES

# Codes that mean "the server is at fault"; their access-log line is a warning.
_SERVER_FAULT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}
# The server cancels a call a little before our monotonic estimate of its deadline.
_DEADLINE_SLACK_S = 0.005


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


def _status_code(value: Any) -> grpc.StatusCode | None:
    if value is None or isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        return _CODE_BY_VALUE.get(value)
    return None


class _Rpc:
    """Per-method state shared by all calls: names and pre-resolved metric children."""

    __slots__ = ("full_method", "service", "method", "in_flight", "latency", "_counters", "access_level")

    def __init__(self, full_method: str, access_level: int) -> None:
        self.full_method = full_method
        self.service, self.method = split_method(full_method)
        self.in_flight = GRPC_IN_FLIGHT.labels(self.service, self.method)
        self.latency = GRPC_LATENCY.labels(self.service, self.method)
        self._counters: dict[grpc.StatusCode, Any] = {}
        self.access_level = access_level

    def counter(self, code: grpc.StatusCode) -> Any:
        child = self._counters.get(code)
        if child is None:
            child = self._counters[code] = GRPC_REQUESTS.labels(self.service, self.method, code.name)
        return child


class _Call:
    """One call's bookkeeping; created at the start of the wrapped behaviour."""

    __slots__ = ("rpc", "context", "request_id", "deadline", "started", "code", "peer", "_tokens")

    def __init__(self, rpc: _Rpc, context: grpc.aio.ServicerContext) -> None:
        self.rpc = rpc
        self.context = context
        self.started = time.perf_counter()
        self.code: grpc.StatusCode | None = None
        self.peer = context.peer()  # empty once the call is cancelled, so read it now
        rid = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                rid = sanitize_request_id(value)
                break
        self.request_id = rid or new_request_id()
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self._tokens = (ctxmod.request_id.set(self.request_id), ctxmod.deadline.set(self.deadline))
        rpc.in_flight.inc()

    async def begin(self) -> None:
        await self.context.send_initial_metadata(((REQUEST_ID_KEY, self.request_id),))

    def _deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline - _DEADLINE_SLACK_S

    async def on_error(self, exc: BaseException) -> None:
        """Record the code for ``exc``; abort with a mapped status (raises AbortError) or return to re-raise."""
        if isinstance(exc, grpc.aio.AbortError):
            # abort() already sent the status; it is readable from the context.
            self.code = _status_code(self.context.code()) or grpc.StatusCode.UNKNOWN
            return
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED if self._deadline_passed() else grpc.StatusCode.CANCELLED
            return
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours to translate
            self.code = grpc.StatusCode.UNKNOWN
            return
        code, details = self._map(exc)
        self.code = code
        await self.context.abort(code, details)

    def _map(self, exc: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, ValidationError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if isinstance(exc, DeadlineExhausted):
            return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
        if isinstance(exc, grpc.aio.AioRpcError):
            downstream = exc.code()
            if downstream == grpc.StatusCode.DEADLINE_EXCEEDED:
                return grpc.StatusCode.DEADLINE_EXCEEDED, f"downstream call exceeded the deadline: {exc.details()}"
            _log.error(
                "downstream call failed in %s", self.rpc.full_method,
                extra={"downstream_code": downstream.name if downstream else None, "downstream_details": exc.details()},
            )
            return grpc.StatusCode.INTERNAL, (
                f"downstream call failed with {downstream.name if downstream else 'UNKNOWN'}: {exc.details()} "
                f"(request_id={self.request_id})"
            )
        _log.error("unhandled %s in %s", type(exc).__name__, self.rpc.full_method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, (
            f"internal error ({type(exc).__name__}) in {self.rpc.full_method}; see server logs for request_id={self.request_id}"
        )

    def finish(self) -> None:
        rpc = self.rpc
        elapsed = time.perf_counter() - self.started
        code = self.code or _status_code(self.context.code()) or grpc.StatusCode.OK
        rpc.in_flight.dec()
        rpc.latency.observe(elapsed)
        rpc.counter(code).inc()
        level = logging.WARNING if code in _SERVER_FAULT_CODES else rpc.access_level
        if _access_log.isEnabledFor(level):
            duration_ms = round(elapsed * 1000.0, 3)
            _access_log.log(
                level, "%s %s %.3fms", rpc.full_method, code.name, duration_ms,
                extra={"service": rpc.service, "method": rpc.method, "code": code.name,
                       "duration_ms": duration_ms, "peer": self.peer},
            )
        for var, token in zip((ctxmod.request_id, ctxmod.deadline), self._tokens):
            with contextlib.suppress(ValueError):  # reset from another Context (should not happen)
                var.reset(token)


def _wrap_coroutine(behaviour: Callable[..., Awaitable[Any]], rpc: _Rpc) -> Callable[..., Awaitable[Any]]:
    """Unary-response handlers, and streaming handlers written with ``context.write``/``read``."""

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(rpc, context)
        try:
            await call.begin()
            return await behaviour(request, context)
        except BaseException as exc:
            await call.on_error(exc)
            raise
        finally:
            call.finish()

    return wrapper


def _wrap_async_gen(behaviour: Callable[..., Any], rpc: _Rpc) -> Callable[..., Any]:
    """Streaming-response handlers written as async generators."""

    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _Call(rpc, context)
        try:
            await call.begin()
            async with contextlib.aclosing(behaviour(request, context)) as stream:
                async for item in stream:
                    yield item
        except BaseException as exc:
            await call.on_error(exc)
            raise
        finally:
            call.finish()

    return wrapper


_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class ServingInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, request id, deadline binding, error mapping and access log for every RPC.

    ``skip_services`` are passed through untouched (health and reflection by
    default). ``access_log_level`` is the level of the per-call line for calls
    that did not fail on the server side (raise it to quiet busy services).
    """

    def __init__(
        self,
        *,
        skip_services: Collection[str] = DEFAULT_SKIP_SERVICES,
        access_log_level: int = logging.INFO,
    ) -> None:
        self._skip = frozenset(skip_services)
        self._access_level = access_log_level
        # intercept_service runs for every call; wrap each method's handler once.
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return handler
        full_method = handler_call_details.method
        cached = self._cache.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full_method)
        self._cache[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        if split_method(full_method)[0] in self._skip:
            return handler
        attr, factory = _FACTORIES[(bool(handler.request_streaming), bool(handler.response_streaming))]
        behaviour = getattr(handler, attr)
        rpc = _Rpc(full_method, self._access_level)
        if inspect.isasyncgenfunction(behaviour):
            new_behaviour = _wrap_async_gen(behaviour, rpc)
        elif inspect.iscoroutinefunction(behaviour):
            new_behaviour = _wrap_coroutine(behaviour, rpc)
        else:
            _log.debug("passing synchronous handler %s through without instrumentation", full_method)
            return handler
        return factory(
            new_behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
