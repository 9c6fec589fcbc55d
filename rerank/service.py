"""The gRPC RerankService: ``cascade.v1.RerankService/Rerank`` over :class:`rerank.engine.RerankEngine`.

    server = build_rerank_server(config, redis_url)   # a GrpcServer (health, reflection, metrics, request ids)
    await server.start()

    cascade rerank [serve] [--port N] [--redis-url URL] [--rules FILE]

The handler is the in-process path (``RerankEngine.rerank``) plus proto
conversion, so the feed gateway gets the same behaviour either way.

Errors: INVALID_ARGUMENT for a malformed request (empty or over-long user_id,
count outside [1, 100], more than 2,000 candidates or 50 injections, a
duplicate item id, a score outside [0, 1] or not finite, a wrong item kind, a
negative requested position), naming the field. Nothing else fails the call:
a Redis read that fails or times out, or a rule that raises, skips those rules
and the response says so (``degraded``, ``degraded_reasons``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc.aio

from cascade.config import Config
from proto.cascade.v1 import rerank_pb2, rerank_pb2_grpc
from rerank.engine import RerankEngine
from serving import GrpcServer

SERVICE_NAME = "cascade.v1.RerankService"


class RerankServicer(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, engine: RerankEngine) -> None:
        self.engine = engine

    async def Rerank(self, request: rerank_pb2.RerankRequest, context: grpc.aio.ServicerContext) -> rerank_pb2.RerankResponse:
        result = await self.engine.rerank(request)
        return result.to_proto()


class RerankServer(GrpcServer):
    """A :class:`GrpcServer` hosting the RerankService; stopping it also closes the engine's Redis client."""

    def __init__(self, engine: RerankEngine, config: Any, port: int = 0) -> None:
        super().__init__("rerank", config, port)
        self.engine = engine
        self.servicer = RerankServicer(engine)
        self.add_service(rerank_pb2_grpc.add_RerankServiceServicer_to_server, self.servicer, SERVICE_NAME)

    async def start(self) -> int:
        await self.engine.warm_up()
        return await super().start()

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        await self.engine.aclose()


def build_rerank_server(config: Config, redis_url: str | None, *, rules_path: Any = None, prefix: str | None = None,
                        port: int | None = None) -> RerankServer:
    """A RerankService server (not started): rules from ``rules_path`` or ``config.rerank.rules_file``.

    ``redis_url`` None serves without Redis: the Redis-backed rules are then
    skipped and every response is degraded. ``port`` defaults to ``config.ports.rerank``.
    """
    engine = RerankEngine.from_config(config, redis_url, rules_path=rules_path, prefix=prefix)
    return RerankServer(engine, config.grpc, config.ports.rerank if port is None else port)


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade rerank serve``: run the RerankService until SIGINT/SIGTERM."""
    from cascade.config import get_config
    from rerank.rules_config import RulesConfigError
    from serving.entrypoint import run_service

    parser = argparse.ArgumentParser(prog="cascade rerank serve", description="Serve the rerank rule engine over gRPC (cascade.v1.RerankService).")
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.rerank; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: config redis.url / REDIS_URL; none starts an embedded valkey)")
    parser.add_argument("--rules", type=Path, default=None, help="rule chain (default: config rerank.rules_file)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()

    def describe(server: RerankServer) -> str:
        names = ", ".join(r.name for r in server.engine.rules)
        return f"RerankService (policy {server.engine.policy_version}: {names})"

    return run_service(config, args.redis_url or config.redis.url,
                       lambda redis_url: build_rerank_server(config, redis_url, rules_path=args.rules, port=args.port),
                       describe, metrics_port=args.metrics_port, errors=(RulesConfigError,))


__all__ = ["SERVICE_NAME", "RerankServer", "RerankServicer", "build_rerank_server", "serve"]
