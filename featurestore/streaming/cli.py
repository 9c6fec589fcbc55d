"""`cascade features stream`: run the streaming updater for the project's streaming views.

    cascade features stream                         every online windowed view with a stream source
    cascade features stream --views user_activity   only these views
    cascade features stream --until-idle            stop once every partition is consumed to its end
    cascade features stream --seconds 60            stop after a minute

Needs the servers serving reads from: ``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``
(or ``--redis-url`` / ``--bootstrap``); start local ones with ``cascade stack``.
SIGINT / SIGTERM stop gracefully: the batch in hand is applied and committed.

Exit codes: 0 stopped cleanly; 1 bad definitions or an unknown / non-streaming
view; 2 bad usage or no servers configured.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def run_until_signalled(updater: Any, seconds: float | None, *, until_idle: bool = False) -> Any:
    """Run `updater` (forever, for `seconds`, or until idle) with SIGINT/SIGTERM stopping it cleanly; closes it."""
    previous = {sig: signal.signal(sig, lambda *_: updater.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if seconds is None and not until_idle:
            return updater.run()
        return updater.run_for(seconds, until_idle=until_idle)
    finally:
        updater.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade features stream",
                                description="Apply the stream topics' events to the online store's window tiles.")
    p.add_argument("--views", nargs="+", metavar="VIEW", help="views to update (default: every streaming online view)")
    p.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config features.definitions)")
    p.add_argument("--group", default=None, help="consumer group (default: config features.stream_group)")
    p.add_argument("--project", default=None, help="online key namespace (default: config features.project)")
    p.add_argument("--assign", action="store_true",
                   help="take every partition without joining the group (a single instance; fastest start)")
    p.add_argument("--format", choices=("auto", "protobuf", "json"), default="auto", help="record value format")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-idle", action="store_true", help="stop once every assigned partition is consumed to its end")
    p.add_argument("--redis-url", default=None, help="online store server (default: REDIS_URL / config redis.url)")
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (0: any free port)")
    p.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--json", action="store_true", help="print the final counts as JSON")
    return p


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def select_views(repo: Any, names: list[str] | None) -> list[Any]:
    """The named views (each must be a windowed view with a stream), or every online streaming view."""
    from featurestore.definitions import WindowedFeatureView

    if not names:
        return [v for v in repo.views.values()
                if isinstance(v, WindowedFeatureView) and v.stream is not None and v.online]
    out = []
    for name in names:
        view = repo.view(name)
        if not isinstance(view, WindowedFeatureView) or view.stream is None:
            raise ValueError(f"view {name!r} is not a windowed view with a stream source")
        out.append(view)
    return out


def cli_main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)

    from cascade.config import get_config
    from featurestore.online import OnlineStore
    from featurestore.repository import DefinitionError, UnknownDefinition, load_repo
    from featurestore.streaming.updater import StreamingUpdater
    from stack.clients import redis_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = get_config()
    try:
        repo = load_repo(args.definitions)
        views = select_views(repo, args.views)
    except (DefinitionError, FileNotFoundError, UnknownDefinition, ValueError) as exc:
        _err(str(exc))
        return 1
    if not views:
        _err("no online windowed view has a stream source; nothing to do")
        return 1
    redis_url = args.redis_url or config.redis.url
    bootstrap = args.bootstrap or config.kafka.bootstrap_servers
    if not redis_url or not bootstrap:
        _err("the updater writes the servers serving reads: set REDIS_URL and KAFKA_BOOTSTRAP_SERVERS "
             "(or --redis-url / --bootstrap); `cascade stack` starts local ones")
        return 2
    if args.metrics_port is not None:
        from serving.metrics import start_metrics_server

        port = start_metrics_server(args.metrics_port)
        logging.getLogger(__name__).info("metrics at http://127.0.0.1:%d/metrics", port)

    client = redis_client(redis_url, config.redis)
    store = OnlineStore(client, args.project or config.features.project, config.features.online_batch_keys)
    updater = StreamingUpdater(config, bootstrap, store, views, group_id=args.group, assign=args.assign,
                               format=args.format, log_interval_s=args.log_interval)
    logging.getLogger(__name__).info("streaming %s from %s into %s", ", ".join(v.name for v in views),
                                     ", ".join(updater.topics), redis_url)
    try:
        stats = run_until_signalled(updater, args.seconds, until_idle=args.until_idle)
    finally:
        client.close()
    if args.json:
        out = {k: v for k, v in vars(stats).items() if k != "per_view"}
        out["per_view"] = {name: vars(c) for name, c in stats.per_view.items()}
        print(json.dumps(out, indent=1))
    else:
        print(stats.summary())
    return 0
