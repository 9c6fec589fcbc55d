"""`cascade feed ...`: serve the GetFeed gateway, or show one user's feed with its explanations.

    cascade feed serve [--port N] [--redis-url URL] [--kafka BOOTSTRAP] [--transport inprocess|grpc]
    cascade feed show --user ID [--count N] [--address HOST:PORT] [--json] ...
    cascade feed --user ID ...                  (same as `show`)

``show`` asks a running FeedService at ``--address``; without it, it builds
the pipeline in this process (``feed.stage_transport``: in-process stages or
the configured stage addresses) against the local stack: Redis from
``--redis-url`` / ``REDIS_URL`` / ``redis.url`` (``cascade stack`` starts one),
and logs impressions to Kafka only with ``--kafka``. The served items are
recorded in the user's impression history either way, as any served feed is.
It prints every item with its score, ranking score, recall channels and rerank
reasons, then the model versions, the experiment bucket, the degraded reasons
and (in process) the time each stage took.

Exit codes: 0 a feed was served (degraded or not); 1 UNAVAILABLE / no stack /
configuration error; 2 bad usage or INVALID_ARGUMENT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = {"feed": ("main", "feed: serve the GetFeed gateway, or show one user's feed with its explanations")}


def _request(args: argparse.Namespace) -> Any:
    from proto.cascade.v1 import common_pb2, feed_pb2

    req = feed_pb2.GetFeedRequest(user_id=args.user, count=args.count, exclude_item_ids=args.exclude or [],
                                  context=common_pb2.RequestContext(timestamp_ms=args.timestamp_ms or 0,
                                                                    surface=args.surface or "",
                                                                    platform=common_pb2.PLATFORM_OTHER))
    if args.request_id:
        req.request_id = args.request_id
    if args.bucket:
        req.experiment_overrides.bucket = args.bucket
    if args.model_version:
        req.experiment_overrides.ranking_model_version = args.model_version
    if args.disable_rule:
        req.experiment_overrides.disabled_rerank_rules.extend(args.disable_rule)
    return req


async def _remote(args: argparse.Namespace, config: Any) -> tuple[Any, dict[str, float] | None, dict[str, Any]]:
    from proto.cascade.v1 import feed_pb2_grpc
    from serving import make_channel

    async with make_channel(args.address, config.grpc) as channel:
        resp = await feed_pb2_grpc.FeedServiceStub(channel).GetFeed(_request(args), timeout=args.timeout_s)
    return resp, None, {"served by": args.address}


async def _local(args: argparse.Namespace, config: Any, redis_url: str) -> tuple[Any, dict[str, float], dict[str, Any]]:
    from feed.service import build_feed_server

    server = build_feed_server(config, redis_url, args.kafka, check_registry=not args.allow_unapplied)
    await server.pipeline.start()
    try:
        result = await server.gateway.get_feed(_request(args))
    finally:
        await server.pipeline.stop(2.0)
    extra = {"served by": f"this process ({server.pipeline.transport} stages)",
             "candidates recalled": result.candidates}
    if result.recall_index_version:
        extra["recall index"] = result.recall_index_version
    if result.user_features:
        extra["user features"] = json.dumps(result.user_features, default=str)
    return result.response, result.timings.as_dict(), extra


def show(argv: Sequence[str]) -> int:
    import grpc

    from cascade.config import get_config
    from feed.gateway import FeedUnavailable
    from feed.show import render
    from serving.validation import ValidationError

    parser = argparse.ArgumentParser(prog="cascade feed show", description="Print one feed with its explanations.")
    parser.add_argument("--user", required=True, help="user id")
    parser.add_argument("--count", type=int, default=10, help="items wanted (1-100, default 10)")
    parser.add_argument("--address", default=None, help="a running FeedService (host:port); default: build the pipeline here")
    parser.add_argument("--redis-url", default=None, help="Redis of the local stack (default: REDIS_URL / config redis.url)")
    parser.add_argument("--kafka", default=None, help="log the impressions to this Kafka (in process only; default: not logged)")
    parser.add_argument("--surface", default=None, help="RequestContext.surface (default home_feed)")
    parser.add_argument("--timestamp-ms", type=int, default=None, help="RequestContext.timestamp_ms (default: now)")
    parser.add_argument("--request-id", default=None, help="request id (default: a new UUIDv4)")
    parser.add_argument("--exclude", action="append", default=None, metavar="ITEM", help="exclude an item (repeatable)")
    parser.add_argument("--bucket", choices=("control", "treatment"), default=None, help="force the experiment bucket")
    parser.add_argument("--model-version", default=None, help="force the ranking model version")
    parser.add_argument("--disable-rule", action="append", default=None, metavar="RULE", help="skip a rerank rule (repeatable)")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="gRPC deadline with --address")
    parser.add_argument("--allow-unapplied", action="store_true", help="serve feature definitions the feature registry does not have live")
    parser.add_argument("--json", action="store_true", help="the response as JSON (plus timings in process)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()
    try:
        if args.address:
            resp, timings, extra = asyncio.run(_remote(args, config))
        else:
            redis_url = args.redis_url or config.redis.url
            if not redis_url:
                print("error: no Redis: start the stack (`cascade stack`) and set REDIS_URL, pass --redis-url, "
                      "or ask a running FeedService with --address", file=sys.stderr)
                return 1
            resp, timings, extra = asyncio.run(_local(args, config, redis_url))
    except grpc.RpcError as exc:
        print(f"error: GetFeed {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2 if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    except ValidationError as exc:
        print(f"error: INVALID_ARGUMENT: {exc}", file=sys.stderr)
        return 2
    except FeedUnavailable as exc:
        print(f"error: UNAVAILABLE: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        from google.protobuf.json_format import MessageToDict

        out = {"response": MessageToDict(resp, preserving_proto_field_name=True)}
        if timings:
            out["timings_ms"] = timings
        print(json.dumps(out))
    else:
        print(render(resp, user_id=args.user, timings=timings, extra=extra))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args[0] == "serve":
        from feed.service import serve

        return serve(args[1:])
    if args[0] == "show":
        return show(args[1:])
    if args[0].startswith("--"):
        return show(args)
    print(f"cascade feed: unknown sub-command {args[0]!r} (serve, show)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
