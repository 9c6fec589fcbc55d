"""Per-request context (request id, deadline) and its propagation to downstream calls.

The server interceptor binds the caller's request id and deadline into
contextvars at the start of every call. Code running on behalf of that call
(including tasks it spawns, which copy the context) can read them without
threading a ``context`` argument through every function, and downstream
channels made by :func:`make_channel` forward both automatically: the request
id as ``x-request-id`` metadata, the deadline as the call timeout. That keeps
one request's budget shrinking across Feed -> Recall/Ranking/Rerank instead
of every hop restarting its own clock.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import grpc
import grpc.aio

from cascade.config import GrpcConfig, get_config

REQUEST_ID_KEY = "x-request-id"

# Safety margin taken off the propagated deadline before a downstream call: the
# downstream server needs time to answer and us to read the answer before our own
# caller gives up. It also absorbs grpc-timeout header rounding: grpc core encodes
# timeouts with limited precision and rounds up, so a server can see up to ~10 ms
# *more* time_remaining() than its client set for 1-2 s deadlines (measured with
# grpcio 1.85); the relative part covers that.
SAFETY_MARGIN_S = 0.005
SAFETY_MARGIN_FRACTION = 0.01

_MAX_REQUEST_ID_LEN = 128
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]+$")

request_id: ContextVar[str | None] = ContextVar("cascade_request_id", default=None)
"""The current call's request id, or None outside a call."""

deadline: ContextVar[float | None] = ContextVar("cascade_deadline", default=None)
"""Absolute ``time.monotonic()`` by which the current call must answer, or None if unbounded."""


class DeadlineExhausted(Exception):
    """No time is left for a downstream call; the interceptor maps it to DEADLINE_EXCEEDED."""


def new_request_id() -> str:
    """A fresh request id (uuid4 hex)."""
    return uuid.uuid4().hex


def sanitize_request_id(value: str | bytes | None) -> str | None:
    """Accept a client-supplied id only if it is short and log-safe; None means "generate one"."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if 0 < len(value) <= _MAX_REQUEST_ID_LEN and _REQUEST_ID_RE.match(value):
        return value
    return None


def current_request_id() -> str | None:
    """The request id of the call being served, or None outside a call."""
    return request_id.get()


def time_remaining() -> float | None:
    """Seconds left before the current call's deadline (never negative), or None if it has none."""
    end = deadline.get()
    if end is None:
        return None
    return max(0.0, end - time.monotonic())


@contextlib.contextmanager
def request_scope(rid: str | None, timeout_s: float | None) -> Iterator[None]:
    """Bind a request id and a relative deadline for the duration of the block (tests, background jobs)."""
    rid_token = request_id.set(rid)
    dl_token = deadline.set(None if timeout_s is None else time.monotonic() + timeout_s)
    try:
        yield
    finally:
        deadline.reset(dl_token)
        request_id.reset(rid_token)


def safety_margin(remaining_s: float) -> float:
    """Time kept back from a remaining budget of ``remaining_s`` when calling downstream."""
    return SAFETY_MARGIN_S + SAFETY_MARGIN_FRACTION * remaining_s


def outgoing_timeout(stage_budget_s: float | None = None, *, default_s: float | None = None) -> float:
    """Timeout for a downstream call: min(stage budget, propagated deadline minus a safety margin).

    With neither a stage budget nor a propagated deadline, ``default_s`` (or else
    ``grpc.default_deadline_s`` from the config) is used so no call can hang forever.
    Raises :class:`DeadlineExhausted` when nothing is left, so a doomed call is never sent.
    """
    candidates: list[float] = []
    if stage_budget_s is not None:
        candidates.append(stage_budget_s)
    remaining = time_remaining()
    if remaining is not None:
        candidates.append(remaining - safety_margin(remaining))
    if not candidates:
        candidates.append(get_config().grpc.default_deadline_s if default_s is None else default_s)
    timeout = min(candidates)
    if timeout <= 0:
        raise DeadlineExhausted(
            f"no time left for a downstream call (remaining={remaining}, stage_budget={stage_budget_s})"
        )
    return timeout


def _with_request_id(metadata: Any) -> grpc.aio.Metadata:
    md = metadata if isinstance(metadata, grpc.aio.Metadata) else grpc.aio.Metadata(*(metadata or ()))
    rid = current_request_id()
    if rid is not None and REQUEST_ID_KEY not in md:
        md = grpc.aio.Metadata(*md, (REQUEST_ID_KEY, rid))
    return md


class PropagatingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Forward the current request id and deadline on every outgoing unary-unary/unary-stream call.

    The timeout becomes ``min(caller's timeout, propagated deadline - margin)``;
    outside a call (no propagated deadline) a call without a timeout gets
    ``default_timeout_s``. A caller-supplied ``x-request-id`` wins.
    """

    def __init__(self, default_timeout_s: float | None = None) -> None:
        self._default_timeout_s = default_timeout_s

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout
        if time_remaining() is not None:
            propagated = outgoing_timeout(None)  # raises DeadlineExhausted when spent
            timeout = propagated if timeout is None else min(timeout, propagated)
        elif timeout is None:
            timeout = self._default_timeout_s
        return details._replace(timeout=timeout, metadata=_with_request_id(details.metadata))

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[override]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[override]
        return await continuation(self._details(client_call_details), request)


def channel_options(config: GrpcConfig) -> list[tuple[str, Any]]:
    """Channel/server options shared by both sides so size limits agree."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
    ]


def make_channel(target: str, config: GrpcConfig) -> grpc.aio.Channel:
    """An insecure aio channel to ``target`` that propagates request id and deadline.

    Create it inside the event loop that will use it, and reuse it: channels are
    expensive and multiplex many concurrent calls.
    """
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(config),
        interceptors=[PropagatingClientInterceptor(default_timeout_s=config.default_deadline_s)],
    )
