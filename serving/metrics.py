"""Prometheus metrics for every Cascade gRPC service, and the /metrics HTTP endpoint.

The per-RPC metrics below are recorded by :class:`serving.interceptors.ServingInterceptor`,
so services get request counts, latency and concurrency without any code of
their own. Stages add their own metrics to prometheus_client's default
registry; :func:`start_metrics_server` exposes all of them.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

_log = logging.getLogger(__name__)

# Sub-millisecond (cache hits, health checks) up to the multi-second default deadlines.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

GRPC_REQUESTS = Counter(
    "cascade_grpc_requests_total",
    "gRPC calls handled, by final status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "cascade_grpc_request_seconds",
    "Server-side gRPC call duration in seconds (handler start to final status).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
GRPC_IN_FLIGHT = Gauge(
    "cascade_grpc_in_flight",
    "gRPC calls currently being handled.",
    ["service", "method"],
)

_lock = threading.Lock()
_bound_port: int | None = None


def start_metrics_server(port: int = 0, host: str = "127.0.0.1") -> int:
    """Serve the default registry at ``http://host:port/metrics`` on a daemon thread; returns the bound port.

    One endpoint per process: later calls return the first call's port whatever
    they ask for, so several services started in one process (tests, the demo
    stack) share it. ``port=0`` picks a free port.
    """
    global _bound_port
    with _lock:
        if _bound_port is not None:
            if port not in (0, _bound_port):
                _log.warning("metrics server already on port %d; ignoring request for %d", _bound_port, port)
            return _bound_port
        httpd, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        _bound_port = int(httpd.server_address[1])
        _log.info("metrics endpoint listening", extra={"host": host, "port": _bound_port})
        return _bound_port
