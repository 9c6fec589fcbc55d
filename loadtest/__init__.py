"""gRPC load generators for FeedService.GetFeed, and their reports.

:func:`run_open_loop` (fixed arrival rate, latency from the scheduled send time,
so queueing shows), :func:`run_closed_loop` (N clients, send-wait-repeat) and
:func:`find_max_rate` (highest rate within a p99 goal) run in spawned worker
processes and return a :class:`LoadReport`; :func:`write_plots` draws it.

Names are imported lazily: a worker process then loads only what it runs
(matplotlib alone would add ~0.3 s to every spawn).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FeedRequestFactory": "loadtest.requests",
    "RequestFactory": "loadtest.requests",
    "LatencyHistogram": "loadtest.report",
    "LatencySummary": "loadtest.report",
    "LoadReport": "loadtest.report",
    "RunSettings": "loadtest.report",
    "SecondStats": "loadtest.report",
    "build_report": "loadtest.report",
    "LoadTestError": "loadtest.runner",
    "run_closed_loop": "loadtest.runner",
    "run_open_loop": "loadtest.runner",
    "MaxRateResult": "loadtest.maxrate",
    "RateStep": "loadtest.maxrate",
    "find_max_rate": "loadtest.maxrate",
    "plot_latency_histogram": "loadtest.plots",
    "plot_latency_over_time": "loadtest.plots",
    "plot_rate_curve": "loadtest.plots",
    "write_plots": "loadtest.plots",
    "Samples": "loadtest.samples",
    "merge": "loadtest.samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loadtest' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
