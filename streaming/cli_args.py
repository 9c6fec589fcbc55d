"""Arguments every long-running streaming process takes (servers, metrics, progress, output)."""

from __future__ import annotations

import argparse


def add_process_arguments(p: argparse.ArgumentParser, redis_role: str) -> None:
    """--redis-url (`redis_role` says what it is for), --bootstrap, --metrics-port, --log-interval, --json."""
    p.add_argument("--redis-url", default=None, help=f"{redis_role} (default: REDIS_URL / config redis.url)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus /metrics port (default: config ports.metrics; 0: any free port)")
    p.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--json", action="store_true", help="print the final counts as JSON")
