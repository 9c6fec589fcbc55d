"""`cascade streaming join`: run the impression/event joiner (see :mod:`streaming.joiner`).

    cascade streaming join                      until SIGINT / SIGTERM (graceful: flush + checkpoint)
    cascade streaming join --until-idle         stop once every input partition is consumed to its end
    cascade streaming join --drain              ... and close every open impression as a negative first
    cascade streaming join --reset              forget the group's checkpoint first (re-joins everything)

Needs the servers: ``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` (or
``--redis-url`` / ``--bootstrap``); ``cascade stack`` starts local ones.

Exit codes: 0 stopped cleanly; 1 configuration error, or replaced by a newer
joiner of the same group (fenced); 2 bad usage or no servers configured.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence

from streaming.cli_args import add_process_arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cascade streaming join",
                                description="Join impressions with events into labelled samples, exactly once.")
    p.add_argument("--impressions-topic", default=None, help="input impressions topic (default: the configured one)")
    p.add_argument("--events-topic", default=None, help="input events topic (default: the configured one)")
    p.add_argument("--samples-topic", default=None, help="output samples topic (default: the configured one)")
    p.add_argument("--group", default=None, help="joiner group: names the checkpoint (default: config streaming.joiner_group)")
    p.add_argument("--partitions", default=None,
                   help="only these input partition numbers, e.g. 0,2 (impressions and events; own checkpoint): run "
                        "several joiners on disjoint subsets to share the work")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-idle", action="store_true", help="stop once every input partition is consumed to its end")
    p.add_argument("--drain", action="store_true", help="at idle, close every open impression as a negative, then stop")
    p.add_argument("--reset", action="store_true",
                   help="delete the group's checkpoint first: the inputs are joined again from their beginning and "
                        "every sample is written again (use a fresh samples topic)")
    p.add_argument("--writer", choices=("batch", "producer"), default="batch",
                   help="sample writer: batch (own record batches, fast) or producer (KafkaProducer)")
    add_process_arguments(p, "checkpoint store")
    return p


def main(argv: Sequence[str]) -> int:
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    from cascade.config import get_config
    from stack.clients import redis_client
    from streaming.join_checkpoint import CheckpointFenced, JoinCheckpoint
    from streaming.joiner import Joiner, JoinerTopics, tune_gc

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    log = logging.getLogger("cascade.streaming.join")
    config = get_config()
    redis_url = args.redis_url or config.redis.url
    bootstrap = args.bootstrap or config.kafka.bootstrap_servers
    if not redis_url or not bootstrap:
        print("error: the joiner needs REDIS_URL and KAFKA_BOOTSTRAP_SERVERS (or --redis-url / --bootstrap); "
              "`cascade stack` starts local ones", file=sys.stderr)
        return 2
    try:
        topics = JoinerTopics.from_config(config, impressions=args.impressions_topic, events=args.events_topic,
                                          samples=args.samples_topic)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    client = redis_client(redis_url, config.redis)
    group = args.group or config.streaming.joiner_group
    if args.reset and not args.partitions:
        JoinCheckpoint(client, config.streaming.joiner_key_prefix, group).reset()
        log.info("checkpoint of group %s deleted", group)
    from serving.metrics import start_metrics_server

    port = start_metrics_server(config.ports.metrics if args.metrics_port is None else args.metrics_port)
    log.info("metrics at http://127.0.0.1:%d/metrics", port)
    try:
        partitions = [int(x) for x in args.partitions.split(",") if x.strip()] if args.partitions else None
        joiner = Joiner(config, client, bootstrap, topics=topics, group=group, partitions=partitions,
                        writer=args.writer, log_interval_s=args.log_interval)
    except ValueError as exc:
        client.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    previous = {sig: signal.signal(sig, lambda *_: joiner.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune_gc()
    try:
        if args.reset and args.partitions:
            JoinCheckpoint(client, config.streaming.joiner_key_prefix, joiner.group).reset()
            log.info("checkpoint of group %s deleted", joiner.group)
        log.info("joining %s + %s -> %s as group %s", topics.impressions, topics.events, topics.samples, joiner.group)
        stats = joiner.run(args.seconds, until_idle=args.until_idle, drain=args.drain)
    except CheckpointFenced as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        joiner.close()
        client.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.json:
        out = {k: v for k, v in vars(stats).items() if k != "counts"}
        out["counts"] = vars(stats.counts)
        print(json.dumps(out))
    else:
        print(stats.summary())
    return 0


__all__ = ["main"]
