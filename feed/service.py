"""The gRPC FeedService (``cascade.v1.FeedService/GetFeed``) and the pipeline behind it.

    server = build_feed_server(config, redis_url, kafka_bootstrap)   # a GrpcServer (not started)
    await server.start()                  # builds/warms the stages, then listens
    server.gateway                        # the FeedGateway, for in-process callers

    cascade feed serve [--port N] [--redis-url URL] [--kafka BOOTSTRAP] [--transport inprocess|grpc]

``feed.stage_transport`` picks how the gateway reaches its stages:

* ``inprocess`` (default): recall, ranking and rerank are built in this
  process exactly as their own ``build_recall_server`` /
  ``build_ranking_server`` / ``build_rerank_server`` build them (feature
  client, model registry and live versions, rule chain; the recall channels
  of ``default_channels`` plus the embedding channel on
  ``feed.recall_embedding`` and per-category sets from ``feed.recall_items``),
  started without listening (warm-up, model loading), and called through
  their servicer objects;
* ``grpc``: the stages are separate services at ``feed.recall_address``,
  ``feed.ranking_address`` and ``feed.rerank_address``.

Either way the gateway code path is the same (:mod:`feed.stages`). The
pipeline also owns the Redis client of the fallbacks and the impression
history, the feature client of the item attributes, and the
``ImpressionLogger`` (``events.impression_log``) on ``kafka_bootstrap``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from feed.attributes import ItemAttributes
from feed.fallback import LastGoodFeeds, PopularItems
from feed.gateway import FeedGateway, FeedUnavailable
from feed.stages import (
    Stage,
    grpc_ranking,
    grpc_recall,
    grpc_rerank,
    inprocess_ranking,
    inprocess_recall,
    inprocess_rerank,
)
from proto.cascade.v1 import feed_pb2, feed_pb2_grpc
from serving import GrpcServer, make_channel

_log = logging.getLogger("cascade.feed.service")

SERVICE_NAME = "cascade.v1.FeedService"
STAGE_NAMES = ("recall", "ranking", "rerank")


class FeedServicer(feed_pb2_grpc.FeedServiceServicer):
    """GetFeed over the pipeline's gateway (created when the pipeline starts)."""

    def __init__(self, pipeline: FeedPipeline) -> None:
        self.pipeline = pipeline

    async def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.aio.ServicerContext) -> feed_pb2.GetFeedResponse:
        problem = None
        try:
            result = await self.pipeline.gateway.get_feed(request)
        except FeedUnavailable as exc:
            problem = str(exc)
        if problem is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, problem)
        return result.response


def _load_impression_log() -> tuple[Any, Any] | None:
    try:
        from events.impression_log import ImpressionLogger, impressions_from_feed
    except ImportError as exc:
        _log.warning("feed: impression logging unavailable (%s)", exc)
        return None
    return ImpressionLogger, impressions_from_feed


class FeedPipeline:
    """The gateway and what it owns (see the module docstring); :meth:`start` / :meth:`stop` inside the event loop."""

    def __init__(self, config: Any, redis_url: str | None, *, kafka_bootstrap: str | None = None,
                 servers: dict[str, Any] | None = None, owned_servers: Sequence[str] = (),
                 stages: dict[str, Stage] | None = None, addresses: dict[str, str] | None = None,
                 impression_logger: Any = None, feature_client: Any = None, namespace: str | None = None,
                 closers: Sequence[Any] = (), warm_up: bool = True) -> None:
        self.config = config
        self.warm_up = warm_up
        self.redis_url = redis_url
        self.kafka_bootstrap = kafka_bootstrap
        self.servers = dict(servers or {})
        self.owned_servers = list(owned_servers)
        self.stages = dict(stages or {})
        self.addresses = dict(addresses or {})
        self.impression_logger = impression_logger
        self.feature_client = feature_client
        self.namespace = namespace or config.features.project
        self._closers = list(closers)  # async callables run at stop (recall channel clients built here)
        self._owned: list[Any] = []  # sync .close() at stop
        self._channels: list[grpc.aio.Channel] = []
        self._redis: Any = None
        self._owns_logger = False
        self._gateway: FeedGateway | None = None
        self.transport = config.feed.stage_transport  # what the stages turned out to be, after start()

    @property
    def gateway(self) -> FeedGateway:
        if self._gateway is None:
            raise RuntimeError("feed pipeline not started")
        return self._gateway

    async def _start_inprocess(self, name: str, server: Any) -> None:
        """What the stage server's start() does before it listens."""
        if name == "recall":
            for _ in range(2):  # as RecallServer.start: channels run concurrently, each wants its own connection
                warm = [w() for ch in server.servicer.merger.channels.values() if (w := getattr(ch, "warm_up", None))]
                for r in await asyncio.gather(*warm, return_exceptions=True):
                    if isinstance(r, Exception):
                        _log.warning("feed: recall channel warm-up failed: %s", r)
        elif name == "ranking":
            await server.manager.start()
        elif name == "rerank":
            await server.engine.warm_up()

    def _inprocess_stage(self, name: str) -> Stage:
        server = self.servers[name]
        if name == "recall":
            return inprocess_recall(server.servicer)
        if name == "ranking":
            return inprocess_ranking(server.ranking)
        return inprocess_rerank(server.servicer)

    async def start(self) -> None:
        """Start the owned stages, connect the clients, build the gateway and warm it up; undone on failure."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        from recall.redis_io import async_redis
        from rerank.impressions import AsyncImpressionHistory

        fc = self.config.feed
        for name in self.owned_servers:
            await self._start_inprocess(name, self.servers[name])
        for name in STAGE_NAMES:
            if name in self.stages:
                continue
            if name in self.servers:
                self.stages[name] = self._inprocess_stage(name)
            else:
                address = self.addresses.get(name) or getattr(fc, f"{name}_address")
                if not address:
                    raise ValueError(f"feed: no {name} stage: set feed.{name}_address for stage_transport = 'grpc'")
                channel = make_channel(address, self.config.grpc)
                self._channels.append(channel)
                self.stages[name] = {"recall": grpc_recall, "ranking": grpc_ranking, "rerank": grpc_rerank}[name](channel)
        self.transport = "/".join(sorted({getattr(s, "transport", "?") for s in self.stages.values()}))
        attributes = None
        if self.redis_url is not None:
            self._redis = async_redis(self.redis_url, self.config.redis)
            if self.feature_client is None and (fc.item_attributes or fc.user_features):
                from featurestore.client import FeatureClient

                self.feature_client = FeatureClient.from_config(self.config, self.redis_url, check_registry=False)
                self._owned.append(self.feature_client)
        if self.feature_client is not None:
            attributes = ItemAttributes(self.feature_client, fc.item_attributes, fc.user_features,
                                        cache_items=fc.item_attributes_cache_items, cache_ttl_s=fc.item_attributes_ttl_s)
            attributes.check()
        convert = None
        if self.impression_logger is None and self.kafka_bootstrap:
            loaded = _load_impression_log()
            if loaded is not None:
                logger_cls, convert = loaded
                self.impression_logger = logger_cls(self.config, self.kafka_bootstrap)
                self.impression_logger.start()
                self._owns_logger = True
        elif self.impression_logger is not None:
            loaded = _load_impression_log()
            convert = loaded[1] if loaded is not None else None
        redis = self._redis
        self._gateway = FeedGateway(
            self.config, self.stages["recall"], self.stages["ranking"], self.stages["rerank"], attributes=attributes,
            last_good=None if redis is None else LastGoodFeeds(redis, fc.key_prefix, fc.last_good_ttl_s, fc.last_good_items),
            popular=None if redis is None else PopularItems(redis, self.namespace, fc.popular_fallback_items,
                                                            fc.popular_cache_s),
            history=None if redis is None else AsyncImpressionHistory.from_config(redis, self.config.rerank),
            impression_logger=self.impression_logger, impressions_from_feed=convert)
        if self.warm_up:
            await self._gateway.warm_up()

    async def stop(self, grace: float | None = None) -> None:
        if self._gateway is not None:
            await self._gateway.close(self.config.events.flush_timeout_s if grace is None else max(grace, 0.5))
        if self._owns_logger and self.impression_logger is not None:
            try:
                await asyncio.to_thread(self.impression_logger.close)
            except Exception:  # noqa: BLE001
                _log.exception("feed: closing the impression logger")
            self._owns_logger = False
        for ch in self._channels:
            await ch.close()
        self._channels.clear()
        for name in self.owned_servers:
            await self.servers[name].stop(0)  # not listening: only its clean-up (models, clients) runs
        self.owned_servers.clear()
        for close in self._closers:
            try:
                await close()
            except Exception:  # noqa: BLE001
                _log.exception("feed: closing a client")
        self._closers.clear()
        for thing in self._owned:
            try:
                thing.close()
            except Exception:  # noqa: BLE001
                _log.exception("feed: closing %r", thing)
        self._owned.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class FeedServer(GrpcServer):
    """A :class:`GrpcServer` hosting the FeedService; starts and stops its :class:`FeedPipeline`."""

    def __init__(self, pipeline: FeedPipeline, config: Any, port: int = 0) -> None:
        super().__init__("feed", config.grpc, port)
        self.pipeline = pipeline
        self.servicer = FeedServicer(pipeline)
        self.add_service(feed_pb2_grpc.add_FeedServiceServicer_to_server, self.servicer, SERVICE_NAME)

    @property
    def gateway(self) -> FeedGateway:
        return self.pipeline.gateway

    async def start(self) -> int:
        await self.pipeline.start()
        try:
            return await super().start()
        except BaseException:
            await self.pipeline.stop(0)
            raise

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        await self.pipeline.stop(grace)


def _recall_items_path(config: Any) -> Path | None:
    raw = config.feed.recall_items
    if not raw:
        return None
    path = Path(raw)
    return path if path.is_absolute() else config.offline_root / path


def build_inprocess_stages(config: Any, redis_url: str, kafka_bootstrap: str | None = None, *,
                           namespace: str | None = None, check_registry: bool = True,
                           only: Sequence[str] = STAGE_NAMES) -> tuple[dict[str, Any], list[Any]]:
    """The three stage servers (not started), built as their own ``build_*_server`` do; and async closers.

    Recall: ``default_channels`` (item2item, popular, fresh on `redis_url`,
    per-category with ``feed.recall_items``) plus the embedding channel on
    ``feed.recall_embedding`` when set. Ranking: the registry's live versions
    of ``ranking.model``, served-feature log on `kafka_bootstrap`. Rerank: the
    rule chain of ``rerank.rules_file``. `only`: build just these stages.
    """
    from ranking.service import build_ranking_server
    from recall.service import build_recall_server, default_channels
    from rerank.service import build_rerank_server

    fc = config.feed
    servers: dict[str, Any] = {}
    closers: list[Any] = []
    if "recall" in only:
        categories = None
        items = _recall_items_path(config)
        if items is not None:
            from recall.categories import ItemCategories

            categories = ItemCategories.from_parquet(items, fc.recall_category_column)
        embedding = None
        if fc.recall_embedding:
            from recall.channels.embedding import EmbeddingChannel

            embedding = EmbeddingChannel.from_config(config, name=fc.recall_embedding)
        channels, closers = default_channels(config, redis_url, namespace=namespace, categories=categories,
                                             embedding=embedding)
        servers["recall"] = build_recall_server(config, redis_url, channels, namespace=namespace, port=0)
    if "ranking" in only:
        servers["ranking"] = build_ranking_server(config, redis_url, kafka_bootstrap=kafka_bootstrap,
                                                  check_registry=check_registry, port=0)
    if "rerank" in only:
        servers["rerank"] = build_rerank_server(config, redis_url, port=0)
    return servers, closers


def build_feed_server(config: Any, redis_url: str | None, kafka_bootstrap: str | None = None, *,
                      servers: dict[str, Any] | None = None, stages: dict[str, Stage] | None = None,
                      addresses: dict[str, str] | None = None, impression_logger: Any = None,
                      feature_client: Any = None, namespace: str | None = None, port: int | None = None,
                      check_registry: bool = True) -> FeedServer:
    """A FeedService server (not started); see the module docstring.

    * ``feed.stage_transport = 'inprocess'``: `servers` (``{"recall": RecallServer,
      "ranking": RankingServer, "rerank": RerankServer}``, the caller's: started and
      stopped by the caller, e.g. listening for other clients too) or, for stages
      not given, servers built by :func:`build_inprocess_stages` and owned here;
    * ``'grpc'``: channels to `addresses` (default ``feed.*_address``);
    * `stages`: ready :mod:`feed.stages` clients (either kind) win over both.

    `kafka_bootstrap`: the impression log and ranking's served-feature log (None: neither).
    `namespace`: recall's and the popular fallback's keys (default ``features.project``).
    `port` defaults to ``ports.feed``.
    """
    servers = dict(servers or {})
    owned: list[str] = []
    closers: list[Any] = []
    given = set(stages or {}) | set(servers)
    if config.feed.stage_transport == "inprocess" and not given >= set(STAGE_NAMES):
        if redis_url is None:
            raise ValueError("build_feed_server: in-process stages need a redis_url")
        built, closers = build_inprocess_stages(config, redis_url, kafka_bootstrap, namespace=namespace,
                                                check_registry=check_registry,
                                                only=[n for n in STAGE_NAMES if n not in given])
        servers.update(built)
        owned.extend(built)
    pipeline = FeedPipeline(config, redis_url, kafka_bootstrap=kafka_bootstrap, servers=servers, owned_servers=owned,
                            stages=stages, addresses=addresses, impression_logger=impression_logger,
                            feature_client=feature_client, namespace=namespace, closers=closers)
    return FeedServer(pipeline, config, config.ports.feed if port is None else port)


# ============================================================================ `cascade feed serve`


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade feed serve``: run the FeedService until SIGINT/SIGTERM."""
    from cascade.config import get_config
    from featurestore.registry import RegistryError
    from featurestore.repository import DefinitionError
    from rerank.rules_config import RulesConfigError
    from serving.entrypoint import run_service

    parser = argparse.ArgumentParser(prog="cascade feed serve", description="Serve cascade.v1.FeedService (the GetFeed gateway) over gRPC.")
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.feed; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: config redis.url / REDIS_URL; none starts an embedded valkey)")
    parser.add_argument("--kafka", default=None, help="Kafka bootstrap for impressions and served features (default: config kafka.bootstrap_servers; none: not logged)")
    parser.add_argument("--transport", choices=("inprocess", "grpc"), default=None, help="how to reach the stages (default: config feed.stage_transport)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    parser.add_argument("--allow-unapplied", action="store_true", help="serve feature definitions the feature registry does not have live")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()
    if args.transport:
        config = config.model_copy(update={"feed": config.feed.model_copy(update={"stage_transport": args.transport})})
    kafka = args.kafka or config.kafka.bootstrap_servers

    def build(redis_url: str) -> FeedServer:
        return build_feed_server(config, redis_url, kafka, port=args.port, check_registry=not args.allow_unapplied)

    def describe(server: FeedServer) -> str:
        p = server.pipeline
        return (f"FeedService (stages {p.transport}, deadline {config.feed.deadline_ms:g} ms, "
                f"experiment {config.feed.experiment_name or 'none'}, impressions {'to ' + kafka if p.impression_logger else 'not logged'})")

    return run_service(config, args.redis_url or config.redis.url, build, describe, metrics_port=args.metrics_port,
                       errors=(DefinitionError, RegistryError, RulesConfigError, ValueError))


__all__ = ["FeedPipeline", "FeedServer", "FeedServicer", "SERVICE_NAME", "build_feed_server", "build_inprocess_stages",
           "serve"]
