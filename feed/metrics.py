"""Prometheus metrics of the feed gateway (default registry: exposed by :func:`serving.start_metrics_server`).

The per-RPC metrics (``cascade_grpc_*``) come from the serving interceptor;
these add what only the gateway knows: how long each stage took, why feeds
were degraded, and what became of the after-response tasks.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from serving.metrics import LATENCY_BUCKETS

STAGE_SECONDS = Histogram(
    "cascade_feed_stage_seconds",
    "Time the gateway spent on each stage of GetFeed (recall, features, ranking, rerank, fallback, total).",
    ["stage", "transport"],
    buckets=LATENCY_BUCKETS,
)
DEGRADED = Counter(
    "cascade_feed_degraded_total",
    "Degraded reasons attached to GetFeed responses, by stage and code.",
    ["stage", "code"],
)
RESPONSES = Counter(
    "cascade_feed_responses_total",
    "GetFeed outcomes: ok, degraded, invalid (INVALID_ARGUMENT), unavailable (nothing to serve).",
    ["outcome"],
)
BACKGROUND = Counter(
    "cascade_feed_background_total",
    "After-response tasks (history, last_good, impressions) by outcome: ok, error, dropped (too many pending).",
    ["task", "outcome"],
)
