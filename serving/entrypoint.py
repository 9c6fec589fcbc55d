"""Run one service from the command line until SIGINT/SIGTERM: the plumbing every `serve` shares.

An embedded valkey when no Redis is configured, JSON logging, the Prometheus
endpoint, signal handlers for a graceful drain, and clear exit codes (1 for a
configuration error, 130 for Ctrl-C). Each stage only says how to build its
server and how to describe it.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from cascade.config import Config
from serving.logs import configure_logging
from serving.metrics import start_metrics_server
from serving.server import GrpcServer, install_signal_handlers


async def _run(config: Config, redis_url: str, build: Callable[[str], GrpcServer],
               describe: Callable[[GrpcServer], str], metrics_port: int | None) -> int:
    server = build(redis_url)
    port = await server.start()
    metrics = start_metrics_server(config.ports.metrics if metrics_port is None else metrics_port, config.grpc.host)
    name, _, details = describe(server).partition(" (")
    print(f"{name} on {config.grpc.host}:{port}{' (' + details if details else ''}; "
          f"metrics on :{metrics}/metrics. Ctrl-C to stop.", flush=True)
    install_signal_handlers(server)
    await server.wait()
    return 0


def run_service(config: Config, redis_url: str | None, build: Callable[[str], GrpcServer],
                describe: Callable[[GrpcServer], str], *, metrics_port: int | None = None,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """Build (inside the event loop), start and serve until a signal; `describe` gives "Name (details)"."""
    stack = None
    try:
        if redis_url is None:
            from stack import Stack

            stack = Stack(config, kafka=False).start()
            redis_url = stack.redis_url
            print(f"no Redis configured: started an embedded one at {redis_url}", flush=True)
        configure_logging()
        return asyncio.run(_run(config, redis_url, build, describe, metrics_port))
    except (*errors, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if stack is not None:
            stack.stop()
