"""``cascade recall`` sub-commands of the non-embedding channels and the service.

    cascade recall serve [--port N] [--items PATH] [--embedding NAME] ...     the RecallService (gRPC)
    cascade recall covisit [--dataset movielens|synthetic | --events PATH] [--as-of ISO]   build + publish
    cascade recall trending [--dataset ... | --events PATH] [--items PATH] [--as-of ISO]  bootstrap the sets
    cascade recall trending --stream [--seconds S]                                  then follow Kafka "events"
    cascade recall fresh [--dataset synthetic | --items PATH] [--now ISO]           bootstrap the fresh index

They register through :func:`recall.cli.subcommand` when this module is
imported (``recall.cli`` imports it). Every command takes ``--redis-url``
(default: config / ``REDIS_URL``) and ``--namespace`` (default: the
feature-store project, which is what the service reads).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recall.cli import subcommand

_DATASETS = {
    "movielens": ("movielens/ratings.parquet", "movielens/items.parquet", "genres"),
    "synthetic": ("synthetic/events.parquet", "synthetic/items.parquet", "category"),
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default=None, help="Redis (default: config redis.url / REDIS_URL)")
    p.add_argument("--namespace", default=None, help="key namespace (default: config features.project)")


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=tuple(_DATASETS), default="movielens")
    p.add_argument("--events", type=Path, default=None, help="event log Parquet (default: the dataset's)")
    p.add_argument("--items", type=Path, default=None, help="catalogue Parquet with a category column (default: the dataset's)")
    p.add_argument("--category-column", default=None, help="category column of --items (default: the dataset's)")


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value)
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _paths(args: argparse.Namespace, config: Any) -> tuple[Path, Path, str]:
    events, items, column = _DATASETS[args.dataset]
    root = config.offline_root
    return (args.events or root / events, args.items or root / items, args.category_column or column)


def _redis(args: argparse.Namespace, config: Any) -> Any:
    from stack.clients import redis_client

    url = args.redis_url or config.redis.url
    if not url:
        raise ValueError("no Redis: pass --redis-url or set REDIS_URL (`cascade stack` starts one)")
    return redis_client(url, config.redis)


def _categories(path: Path, column: str) -> Any:
    from recall.categories import ItemCategories

    return ItemCategories.from_parquet(path, column) if path.exists() else None


# ----------------------------------------------------------------------------- serve


def _serve_args(p: argparse.ArgumentParser) -> None:
    from recall.service import add_serve_arguments

    add_serve_arguments(p)


@subcommand("serve", "serve RecallService over gRPC (item2item, popular, fresh, optionally embedding)", _serve_args)
def run_serve(args: argparse.Namespace, config: Any) -> int:
    from recall.service import serve_with

    return serve_with(args, config)


# ----------------------------------------------------------------------------- covisit


def _covisit_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _source(p)
    p.add_argument("--as-of", default=None, help="use events before this time (ISO; default: all)")
    p.add_argument("--version", default=None, help="version name (default: UTC time + suffix)")
    p.add_argument("--keep", type=int, default=2, help="published versions kept in Redis")


@subcommand("covisit", "compute co-visitation from the event log (DuckDB) and publish it to Redis", _covisit_args)
def run_covisit(args: argparse.Namespace, config: Any) -> int:
    from recall.covisit import CovisitSpec, build_and_publish

    events, _, _ = _paths(args, config)
    client = _redis(args, config)
    try:
        t0 = time.perf_counter()
        stats, pub = build_and_publish(client, args.namespace or config.features.project, events,
                                       CovisitSpec.from_config(config.recall), as_of=_when(args.as_of),
                                       version=args.version, keep_versions=args.keep)
    finally:
        client.close()
    print(json.dumps({"version": pub.version, "items": pub.items, "neighbors": pub.neighbors, "pairs": stats.pairs,
                      "user_items": stats.events, "bytes": pub.bytes, "deleted_versions": pub.deleted_versions,
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


# ----------------------------------------------------------------------------- trending


def _trending_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _source(p)
    p.add_argument("--as-of", default=None, help="bootstrap with events before this time (ISO; default: all)")
    p.add_argument("--no-bootstrap", action="store_true", help="do not rebuild from the log (just --stream)")
    p.add_argument("--stream", action="store_true", help="then keep the sets current from the Kafka events topic")
    p.add_argument("--topic", default="events")
    p.add_argument("--seconds", type=float, default=None, help="stream this long (default: until Ctrl-C)")
    p.add_argument("--kafka", default=None, help="bootstrap servers (default: config / KAFKA_BOOTSTRAP_SERVERS)")


@subcommand("trending", "bootstrap the popular channel's decayed counts from the log; --stream follows Kafka", _trending_args)
def run_trending(args: argparse.Namespace, config: Any) -> int:
    from recall.trending import TrendingStore, TrendingUpdater

    events, items, column = _paths(args, config)
    client = _redis(args, config)
    try:
        store = TrendingStore.from_config(client, config, args.namespace, _categories(items, column))
        if not args.no_bootstrap:
            res = store.bootstrap(events, _when(args.as_of))
            print(json.dumps({"bootstrap": res.__dict__}), flush=True)
        if args.stream:
            upd = TrendingUpdater(config, store, args.kafka, topic=args.topic)
            try:
                stats = upd.run_for(args.seconds)
            except KeyboardInterrupt:
                stats = upd.stats
            finally:
                upd.close()
            print(json.dumps({"stream": {k: v for k, v in stats.__dict__.items() if k != "per_partition"}}))
    finally:
        client.close()
    return 0


# ----------------------------------------------------------------------------- fresh


def _fresh_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _source(p)
    p.add_argument("--now", default=None, help="index items published in the window ending here (ISO; default: now)")
    p.add_argument("--published-column", default="published_ts")


@subcommand("fresh", "index recently published items for the fresh channel", _fresh_args)
def run_fresh(args: argparse.Namespace, config: Any) -> int:
    import pyarrow.parquet as pq

    from recall.fresh import FreshIndex

    _, items, column = _paths(args, config)
    client = _redis(args, config)
    try:
        idx = FreshIndex.from_config(client, config, args.namespace, _categories(items, column))
        n = idx.bootstrap(pq.read_table(items, columns=["item_id", args.published_column]), _when(args.now),
                          published_column=args.published_column)
    finally:
        client.close()
    print(json.dumps({"fresh_items": n}))
    return 0


__all__ = ["run_covisit", "run_fresh", "run_serve", "run_trending"]
