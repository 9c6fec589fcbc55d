"""Shared gRPC server plumbing for every Cascade service (grpc.aio).

:class:`GrpcServer` hosts servicers with health checking, reflection, limits
and the :class:`ServingInterceptor` (metrics, request id, deadline, error
mapping); :func:`make_channel` gives clients that propagate request id and
deadline downstream; :mod:`serving.validation` lets handlers reject bad input
in one line; :func:`configure_logging` makes every line JSON with the request id.
"""

from serving.context import (
    REQUEST_ID_KEY,
    DeadlineExhausted,
    PropagatingClientInterceptor,
    current_request_id,
    make_channel,
    outgoing_timeout,
    request_scope,
    time_remaining,
)
from serving.interceptors import ServingInterceptor
from serving.logs import configure_logging
from serving.metrics import GRPC_IN_FLIGHT, GRPC_LATENCY, GRPC_REQUESTS, start_metrics_server
from serving.server import GrpcServer, install_signal_handlers
from serving.validation import (
    ValidationError,
    require,
    require_max_items,
    require_non_empty,
    require_range,
)

__all__ = [
    "GRPC_IN_FLIGHT",
    "GRPC_LATENCY",
    "GRPC_REQUESTS",
    "REQUEST_ID_KEY",
    "DeadlineExhausted",
    "GrpcServer",
    "PropagatingClientInterceptor",
    "ServingInterceptor",
    "ValidationError",
    "configure_logging",
    "current_request_id",
    "install_signal_handlers",
    "make_channel",
    "outgoing_timeout",
    "request_scope",
    "require",
    "require_max_items",
    "require_non_empty",
    "require_range",
    "start_metrics_server",
    "time_remaining",
]
