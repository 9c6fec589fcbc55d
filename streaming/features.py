"""Streaming features of the learning loop: the events the joiner joins also update the online features.

Not a second implementation: this selects the feature store's windowed views
that stream from the events topic (``config/features.py``: recent clicks per
user, click counters per item, ratings, ...) and runs the feature store's own
:class:`featurestore.streaming.StreamingUpdater` over them -- same decoder, same
tiles, same exactly-once guard (per-entity applied offsets in Redis), so the
values served equal the values trained on.

Design choice: **its own consumer group and command** (``cascade streaming
features``), not a second sink inside the joiner process, because

* the two already have independent exactly-once mechanisms (the joiner's
  checkpoint of join state + offsets; the updater's per-entity offsets next to
  the tiles); one process would not make either simpler, only couple them;
* feature freshness must not wait on the joiner: the joiner holds events for
  an attribution window and checkpoints every second, while a click should
  reach ``recent clicks`` within one poll; and a slow online-store write must
  not stall joining (or the other way round);
* they scale differently: the updater's group splits partitions among
  replicas (rebalancing is harmless thanks to its guard); the joiner is one
  instance per group with manual assignment;
* the cost is reading the events topic twice -- the small input (clicks are a
  fraction of impressions), on the same broker.

``--events-topic`` consumes a physical topic other than the one the
definitions name (tests, a staging topic); the views' storage keys do not
depend on the topic, so reads through the feature client see the same values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streaming.cli_args import add_process_arguments


def events_views(repo: Any, definitions_topic: str, consume_topic: str | None = None) -> list[Any]:
    """The online windowed views streaming from `definitions_topic`, re-pointed at `consume_topic` if given."""
    from featurestore.definitions import WindowedFeatureView

    out = []
    for view in repo.views.values():
        if isinstance(view, WindowedFeatureView) and view.online and view.stream is not None \
                and view.stream.topic == definitions_topic:
            if consume_topic and consume_topic != definitions_topic:
                view = dataclasses.replace(view, stream=dataclasses.replace(view.stream, topic=consume_topic))
            out.append(view)
    return out


def build_updater(config: Any, redis_client: Any, bootstrap: str, repo: Any, *, events_topic: str | None = None,
                  project: str | None = None, group: str | None = None, assign: bool = False,
                  log_interval_s: float = 10.0) -> Any:
    """A StreamingUpdater over the events-topic views, writing the online store of `project`."""
    from featurestore.online import OnlineStore
    from featurestore.streaming import StreamingUpdater

    logical = "events"
    if logical not in config.kafka.topics:
        raise ValueError("config.kafka.topics has no 'events' topic")
    views = events_views(repo, logical, events_topic)
    if not views:
        raise ValueError(f"no online windowed view streams from the {logical!r} topic")
    store = OnlineStore(redis_client, project or config.features.project, config.features.online_batch_keys)
    return StreamingUpdater(config, bootstrap, store, views, group_id=group or config.streaming.features_group,
                            assign=assign, format="auto", log_interval_s=log_interval_s)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade streaming features",
                                description="Keep the online features fed by the events topic live (the feature "
                                            "store's streaming updater, its own consumer group).")
    p.add_argument("--events-topic", default=None, help="consume this topic in place of the definitions' 'events'")
    p.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config features.definitions)")
    p.add_argument("--project", default=None, help="online key namespace (default: config features.project)")
    p.add_argument("--group", default=None, help="consumer group (default: config streaming.features_group)")
    p.add_argument("--assign", action="store_true", help="take every partition without joining the group (one instance)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-idle", action="store_true", help="stop once every partition is consumed to its end")
    add_process_arguments(p, "online store")
    return p


def main(argv: Sequence[str]) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    from cascade.config import get_config
    from featurestore.repository import DefinitionError, UnknownDefinition, load_repo
    from stack.clients import redis_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = get_config()
    redis_url = args.redis_url or config.redis.url
    bootstrap = args.bootstrap or config.kafka.bootstrap_servers
    if not redis_url or not bootstrap:
        print("error: set REDIS_URL and KAFKA_BOOTSTRAP_SERVERS (or --redis-url / --bootstrap); "
              "`cascade stack` starts local ones", file=sys.stderr)
        return 2
    try:
        repo = load_repo(args.definitions)
    except (DefinitionError, FileNotFoundError, UnknownDefinition, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from serving.metrics import start_metrics_server

    port = start_metrics_server(config.ports.metrics if args.metrics_port is None else args.metrics_port)
    logging.getLogger(__name__).info("metrics at http://127.0.0.1:%d/metrics", port)
    client = redis_client(redis_url, config.redis)
    try:
        updater = build_updater(config, client, bootstrap, repo, events_topic=args.events_topic, project=args.project,
                                group=args.group, assign=args.assign, log_interval_s=args.log_interval)
    except ValueError as exc:
        client.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logging.getLogger(__name__).info("streaming features %s from %s", ", ".join(v.name for v in updater.views),
                                     ", ".join(updater.topics))
    from featurestore.streaming.cli import run_until_signalled

    try:
        stats = run_until_signalled(updater, args.seconds, until_idle=args.until_idle)
    finally:
        client.close()
    if args.json:
        print(json.dumps({k: v for k, v in vars(stats).items() if k != "per_view"}))
    else:
        print(stats.summary())
    return 0


__all__ = ["build_updater", "events_views", "main"]
