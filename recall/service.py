"""The gRPC RecallService: ``cascade.v1.RecallService/Recall`` over the merged channels.

Per request:

1. validate (recall.proto's bounds; :class:`serving.ValidationError` ->
   INVALID_ARGUMENT): ``user_id`` 1 to 128 bytes; ``count`` in
   [1, ``recall.max_candidates``]; ``channel_quotas`` names a configured (or
   loaded) channel, each in [0, ``recall.max_candidates``]; at most 10,000
   ``exclude_item_ids``, each 1 to 128 bytes (ids that are not integers cannot
   match a catalogue item and are ignored);
2. build the :class:`~recall.channel.RecallQuery` once, from **one** online
   feature read of the user (``FeatureClient.get_online_features``): the
   recent-items list (``recall.recent_items_feature``, most recent first),
   the category features, ``recall.user_features`` and whatever the channels
   declare in ``required_features`` (the embedding channel's query-tower
   inputs). The request time is ``context.timestamp_ms`` unless it is unset or
   more than 5 minutes ahead of the server clock (common.proto), and the
   features are read as of it. A failed feature read degrades the response
   (stage FEATURES) and recall goes on without history;
3. :meth:`recall.merge.RecallMerger.recall`: channels concurrently under their
   budgets, filtering, quotas, backfill, fusion;
4. answer: candidates (item id, every channel with score and rank, merged
   score), one ``ChannelStats`` per configured channel in configuration order,
   ``degraded`` with one reason per late or failed channel, and the loaded
   index versions. Every queried channel failing is UNAVAILABLE.

``build_recall_server(config, redis_url, channels)`` returns a (not started)
:class:`serving.GrpcServer` with health and reflection; ``serve(argv)`` backs
``cascade recall serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import mmh3
import numpy as np

from proto.cascade.v1 import common_pb2, recall_pb2
from recall.categories import ItemCategories
from recall.channel import Channel, RecallQuery
from recall.merge import ChannelStatus, RecallMerger, RecallResult
from recall.wire import encode_candidates
from serving import GrpcServer, require, require_max_items, require_range
from serving.context import safety_margin, time_remaining

_log = logging.getLogger("cascade.recall.service")

SERVICE_NAME = "cascade.v1.RecallService"
MAX_ID_BYTES = 128
MAX_EXCLUDE = 10_000
MAX_QUOTA = 5000
CLOCK_SKEW_MS = 5 * 60 * 1000  # common.proto: a client time more than 5 minutes ahead is not trusted
_INT64_MAX = 2**63 - 1

_STATUS = {
    ChannelStatus.OK: recall_pb2.CHANNEL_STATUS_OK,
    ChannelStatus.TIMEOUT: recall_pb2.CHANNEL_STATUS_TIMEOUT,
    ChannelStatus.ERROR: recall_pb2.CHANNEL_STATUS_ERROR,
    ChannelStatus.SKIPPED: recall_pb2.CHANNEL_STATUS_SKIPPED,
}


def user_key(user_id: str) -> int:
    """RecallQuery.user_id: the integer id when `user_id` is one, else a stable 63-bit hash of it."""
    if user_id.isdigit() or (user_id[:1] == "-" and user_id[1:].isdigit()):
        v = int(user_id)
        if -_INT64_MAX <= v <= _INT64_MAX:
            return v
    return mmh3.hash64(user_id.encode(), signed=False)[0] & _INT64_MAX


def _check_id(value: str, field: str) -> str:
    require(value != "", field, "must not be empty")
    if len(value) > MAX_ID_BYTES // 4:
        n = len(value.encode())
        require(n <= MAX_ID_BYTES, field, f"is {n} bytes, at most {MAX_ID_BYTES} allowed")
    return value


class RecallServicer:
    """The RecallService handler (see the module docstring)."""

    def __init__(self, merger: RecallMerger, config: Any, *, feature_client: Any = None,
                 clock: Any = time.time, features_inline: bool = True) -> None:
        self.merger = merger
        self.features_inline = features_inline
        self.config = config
        self.rc = config.recall
        self.feature_client = feature_client
        self.clock = clock
        self.max_count = min(MAX_QUOTA, int(self.rc.max_candidates))
        self.max_exclude = min(MAX_EXCLUDE, int(config.grpc.max_request_items))
        self.features_budget_s = max(self.rc.channel_timeouts_ms.values(), default=10.0) / 1000.0
        self._closers: list[Any] = []

    # ------------------------------------------------------------------ validation

    def validate(self, request: recall_pb2.RecallRequest) -> tuple[str, int, dict[str, int], np.ndarray]:
        user_id = _check_id(request.user_id, "user_id")
        count = require_range(int(request.count), "count", 1, self.max_count)
        quotas: dict[str, int] = {}
        known = set(self.merger.names)
        for name, q in request.channel_quotas.items():
            require(name in known, f"channel_quotas[{name!r}]",
                    f"unknown channel (configured: {', '.join(self.merger.names)})")
            quotas[name] = require_range(int(q), f"channel_quotas[{name!r}]", 0, self.max_count)
        excl = require_max_items(request.exclude_item_ids, "exclude_item_ids", self.max_exclude)
        ints: list[int] = []
        for i, item in enumerate(excl):
            _check_id(item, f"exclude_item_ids[{i}]")
            if item.isdigit():
                v = int(item)
                if v <= _INT64_MAX:
                    ints.append(v)
        ctx = request.context
        require(ctx.page_index >= 0, "context.page_index", f"must be >= 0, got {ctx.page_index}")
        return user_id, count, quotas, np.asarray(ints, dtype=np.int64)

    def request_time_ms(self, request: recall_pb2.RecallRequest) -> int:
        now = int(self.clock() * 1000)
        ts = int(request.context.timestamp_ms)
        if ts <= 0 or ts > now + CLOCK_SKEW_MS:
            return now
        return ts

    # ------------------------------------------------------------------ query

    def feature_refs(self) -> list[str]:
        refs: list[str] = []
        for r in (self.rc.recent_items_feature, *self.rc.category_features, *self.rc.user_features):
            if r and r not in refs:
                refs.append(r)
        for ch in self.merger.channels.values():
            try:
                extra = getattr(ch, "required_features", ()) or ()
            except Exception:  # noqa: BLE001 - e.g. no index loaded yet: the channel will fail on its own
                extra = ()
            for r in extra:
                if r not in refs:
                    refs.append(r)
        return refs

    async def build_query(self, user_id: str, request: recall_pb2.RecallRequest,
                          now_ms: int) -> tuple[RecallQuery, list[common_pb2.DegradedReason]]:
        reasons: list[common_pb2.DegradedReason] = []
        features: dict[str, Any] = {}
        recent: Sequence[int] = ()
        refs = self.feature_refs()
        if self.feature_client is not None and refs:
            key: Any = int(user_id) if user_id.isdigit() else user_id
            budget = self.features_budget_s
            remaining = time_remaining()
            if remaining is not None:
                budget = min(budget, remaining - safety_margin(remaining))
            at = datetime.fromtimestamp(now_ms / 1000.0, tz=timezone.utc)
            try:
                if self.features_inline:
                    # One small blocking read (~0.5 ms, bounded by the socket timeout): cheaper in the loop than a
                    # thread hop, which costs 1-3 ms of GIL hand-over on a busy 2-core machine (measured).
                    rows = self.feature_client.get_online_features("user", [key], refs, now=at)
                else:
                    rows = await asyncio.wait_for(
                        self.feature_client.get_online_features_async("user", [key], refs, now=at), max(budget, 1e-4))
                features = rows.to_rows()[0]
            except asyncio.TimeoutError:
                reasons.append(common_pb2.DegradedReason(
                    stage=common_pb2.STAGE_FEATURES, code=common_pb2.DEGRADATION_CODE_TIMEOUT,
                    component="user", fallback="default_features",
                    message=f"user features not read within {budget * 1000:.1f} ms"))
            except Exception as exc:  # noqa: BLE001 - no history is a worse answer, not a failed call
                _log.warning("recall: user feature read failed: %s", exc)
                reasons.append(common_pb2.DegradedReason(
                    stage=common_pb2.STAGE_FEATURES, code=common_pb2.DEGRADATION_CODE_UNAVAILABLE,
                    component="user", fallback="default_features", message=f"{type(exc).__name__}: {exc}"[:1024]))
            r = features.get(self.rc.recent_items_feature)
            if r:
                recent = [int(x) for x in r if x is not None][: max(self.rc.recent_items, 1)]
        ctx = request.context
        context = {k: v for k, v in (("surface", ctx.surface), ("country", ctx.country), ("locale", ctx.locale),
                                      ("platform", common_pb2.Platform.Name(ctx.platform))) if v}
        context.update(ctx.attributes)
        query = RecallQuery(user_id=user_key(user_id), now_ms=now_ms, recent_items=tuple(recent), context=context,
                            user_features=features)
        return query, reasons

    # ------------------------------------------------------------------ handler

    async def Recall(self, request: recall_pb2.RecallRequest, context: grpc.aio.ServicerContext) -> bytes:
        user_id, count, quotas, exclude = self.validate(request)
        now_ms = self.request_time_ms(request)
        query, reasons = await self.build_query(user_id, request, now_ms)
        result = await self.merger.recall(query, count, quotas=quotas, exclude=exclude)
        if result.all_failed:
            detail = "; ".join(f"{o.name}: {ChannelStatus(o.status).name} {o.message}" for o in result.outcomes
                               if o.status != ChannelStatus.SKIPPED)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"every recall channel failed ({detail})"[:2048])
        return self.encode(result, reasons)

    def encode(self, result: RecallResult, reasons: list[common_pb2.DegradedReason]) -> bytes:
        """The serialized RecallResponse: candidates written in bulk (recall.wire), the rest by protobuf."""
        head = encode_candidates(result.items, result.merged_scores, result.attr_offsets, result.attr_channel,
                                 result.attr_score, result.attr_rank, result.channels)
        return head + self.response(result, reasons, with_candidates=False).SerializeToString()

    def response(self, result: RecallResult, reasons: list[common_pb2.DegradedReason], *,
                 with_candidates: bool = True) -> recall_pb2.RecallResponse:
        """The RecallResponse as a message (in-process callers; the handler sends :meth:`encode`'s bytes)."""
        stats = []
        for o in result.outcomes:
            stats.append(recall_pb2.ChannelStats(
                channel=o.name, status=_STATUS[o.status], quota=o.quota,
                returned_count=min(o.returned, o.quota) if o.status == ChannelStatus.OK else 0,
                latency_ms=float(o.latency_ms), message=o.message))
            if o.status in (ChannelStatus.TIMEOUT, ChannelStatus.ERROR):
                reasons.append(common_pb2.DegradedReason(
                    stage=common_pb2.STAGE_RECALL,
                    code=common_pb2.DEGRADATION_CODE_TIMEOUT if o.status == ChannelStatus.TIMEOUT else common_pb2.DEGRADATION_CODE_ERROR,
                    component=o.name, fallback="other_channels", message=o.message))
        return recall_pb2.RecallResponse(
            candidates=self.candidates(result) if with_candidates else (), channel_stats=stats, degraded=bool(reasons),
            degraded_reasons=reasons, index_version=",".join(self.merger.versions))

    @staticmethod
    def candidates(result: RecallResult) -> list[recall_pb2.RecallCandidate]:
        Cand, Score = recall_pb2.RecallCandidate, common_pb2.ChannelScore
        names = result.channels
        off = result.attr_offsets.tolist()
        chans = result.attr_channel.tolist()
        scores = result.attr_score.tolist()
        ranks = result.attr_rank.tolist()
        out = []
        for i, (item, merged) in enumerate(zip(result.items.tolist(), result.merged_scores.tolist())):
            a, b = off[i], off[i + 1]
            out.append(Cand(item_id=str(item), merged_score=merged,
                            channels=[Score(channel=names[chans[j]], score=scores[j], rank=ranks[j]) for j in range(a, b)]))
        return out

    def close(self) -> None:
        for c in self._closers:
            try:
                c()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                _log.exception("recall: error closing a resource")


def _serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def register_recall_service(servicer: RecallServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_RecallServiceServicer_to_server``, but the handler returns serialized bytes."""
    handlers = {
        "Recall": grpc.unary_unary_rpc_method_handler(
            servicer.Recall,
            request_deserializer=recall_pb2.RecallRequest.FromString,
            response_serializer=_serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class RecallServer(GrpcServer):
    """A :class:`GrpcServer` hosting the RecallService; stopping it releases the channels' clients."""

    def __init__(self, servicer: RecallServicer, config: Any, port: int = 0) -> None:
        super().__init__("recall", config.grpc, port)
        self.servicer = servicer
        self.add_service(register_recall_service, servicer, SERVICE_NAME)
        self._async_closers: list[Any] = []

    async def start(self) -> int:
        """Warm the channels up (connections, versions) before serving: a first call must not pay for them."""
        for _ in range(2):  # twice concurrently: the channels run concurrently, each wants its own connection
            results = await asyncio.gather(*[w() for ch in self.servicer.merger.channels.values()
                                             if (w := getattr(ch, "warm_up", None)) is not None], return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):
                    _log.warning("recall: channel warm-up failed: %s", r)
        return await super().start()

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        for c in self._async_closers:
            try:
                await c()
            except Exception:  # noqa: BLE001
                _log.exception("recall: error closing a client")
        self._async_closers.clear()
        self.servicer.close()


def default_channels(config: Any, redis_url: str, *, namespace: str | None = None,
                     categories: ItemCategories | None = None, embedding: Any = None) -> tuple[list[Channel], list[Any]]:
    """item2item, popular and fresh on one asyncio Redis client (+ `embedding` when given); and their closers."""
    from recall.channels.fresh import FreshChannel
    from recall.channels.item2item import Item2ItemChannel
    from recall.channels.popular import PopularChannel
    from recall.redis_io import async_redis

    client = async_redis(redis_url, config.redis)
    channels: list[Channel] = []
    if embedding is not None:
        channels.append(embedding)
    cached = [PopularChannel.from_config(client, config, namespace, categories),
              FreshChannel.from_config(client, config, namespace, categories)]
    channels += [Item2ItemChannel.from_config(client, config, namespace), *cached]

    async def close() -> None:
        for ch in cached:  # their background head refresh first: it reads through the client
            ch.close()
        await client.aclose()

    return channels, [close]


def build_recall_server(config: Any, redis_url: str, channels: Sequence[Channel] | None = None, *,
                        feature_client: Any = None, namespace: str | None = None,
                        categories: ItemCategories | None = None, port: int | None = None) -> RecallServer:
    """A RecallService server (not started).

    `channels` defaults to :func:`default_channels` (item2item, popular, fresh
    on `redis_url`, keys under `namespace`, default ``features.project``).
    `feature_client` (a :class:`featurestore.client.FeatureClient`) reads the
    user's features; None builds one on `redis_url` from the configured
    definitions (registry check off: recall needs no set versions); pass
    ``False`` to run without user features. `port` defaults to ``ports.recall``.
    """
    async_closers: list[Any] = []
    if channels is None:
        channels, async_closers = default_channels(config, redis_url, namespace=namespace, categories=categories)
    closers: list[Any] = []
    if feature_client is None:
        from featurestore.client import FeatureClient

        feature_client = FeatureClient.from_config(config, redis_url, check_registry=False)
        closers.append(feature_client.close)
    elif feature_client is False:
        feature_client = None
    merger = RecallMerger.from_config(list(channels), config.recall)
    servicer = RecallServicer(merger, config, feature_client=feature_client)
    servicer._closers.extend(closers)
    if feature_client is not None:  # a misnamed feature is a deployment error: refuse to start, do not degrade forever
        refs = servicer.feature_refs()
        if refs:
            try:
                feature_client.plan(refs, "user")
            except ValueError as exc:
                servicer.close()
                raise ValueError(f"recall: the user features to read are not servable: {exc}") from exc
    server = RecallServer(servicer, config, config.ports.recall if port is None else port)
    server._async_closers.extend(async_closers)
    return server


# ============================================================================ `cascade recall serve`


def _build_from_args(config: Any, args: argparse.Namespace, redis_url: str) -> RecallServer:
    categories = ItemCategories.from_parquet(args.items, args.category_column) if args.items else None
    embedding = None
    if args.embedding:
        from recall.channels.embedding import EmbeddingChannel

        embedding = EmbeddingChannel.from_config(config, name=args.embedding, watch_s=args.watch_s)
    channels, closers = default_channels(config, redis_url, namespace=args.namespace, categories=categories,
                                         embedding=embedding)
    server = build_recall_server(config, redis_url, channels, namespace=args.namespace, port=args.port)
    server._async_closers.extend(closers)
    return server


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cascade recall serve`` (shared by :func:`serve` and ``recall.jobs``)."""
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.recall; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="Redis (default: config redis.url / REDIS_URL; none starts an embedded valkey)")
    parser.add_argument("--namespace", default=None, help="key namespace of the recall tables (default: config features.project)")
    parser.add_argument("--items", type=Path, default=None, help="catalogue Parquet with item_id and a category column (per-category popular/fresh)")
    parser.add_argument("--category-column", default="category", help="category column of --items (scalar or list), default 'category'")
    parser.add_argument("--embedding", default=None, metavar="NAME", help="also serve the embedding channel on artifact set NAME")
    parser.add_argument("--watch-s", type=float, default=5.0, help="how often the embedding channel looks for a new index version")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")


def serve_with(args: argparse.Namespace, config: Any) -> int:
    """Run the RecallService for parsed `args` until SIGINT/SIGTERM (starts an embedded valkey without a Redis URL)."""
    from serving.entrypoint import run_service

    return run_service(config, args.redis_url or config.redis.url,
                       lambda redis_url: _build_from_args(config, args, redis_url),
                       lambda s: f"RecallService (channels {', '.join(s.servicer.merger.names)})",
                       metrics_port=args.metrics_port)


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade recall serve``: run the RecallService until SIGINT/SIGTERM."""
    from cascade.config import get_config

    parser = argparse.ArgumentParser(prog="cascade recall serve", description="Serve multi-channel recall over gRPC (cascade.v1.RecallService).")
    add_serve_arguments(parser)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return serve_with(args, get_config())


__all__ = ["RecallServer", "RecallServicer", "SERVICE_NAME", "add_serve_arguments", "build_recall_server", "default_channels",
           "register_recall_service", "serve", "serve_with", "user_key"]
