"""Events: impression logging and LogEvents, each read against a raw kafka-python producer of the same run.

`run(quick, config)` starts its own embedded Redis and Kafka (`Stack(config)`) and measures:

* ``impressions_from_feed_us``: building the 20 Impressions of a 20-item feed page;
* ``logger_log_us_p50/p99``: the gateway's cost per page, ``ImpressionLogger.log`` of 20
  impressions (the request path: it only buffers);
* ``logger_records_per_s``: impressions from the first ``log`` to ``close()`` returning with
  every one acked (acks=all), against ``raw_impressions_per_s``, the same records produced
  by a bare producer with the logger's settings in the same run
  (``logger_vs_raw``: what the buffer and thread cost);
* ``logevents_*``: the EventService in a child process, driven over loopback gRPC by
  ``CONCURRENCY`` callers sending batches of ``BATCH`` events (unique event_ids, so every
  event is claimed in Redis, published, acked and marked): events/s and call latency;
  ``logevents_single_*``: one event per call, one caller (the latency of a click);
  ``logevents_vs_raw``: events/s against ``raw_events_per_s``, the same Event records
  produced by a bare producer with the service's settings (acks=all, linger 2 ms).

Each pair (subject, raw producer) runs ``ROUNDS`` times, alternating, and the best round of
each is kept: other load on the machine only ever lowers a figure. The raw producer gets
its records already serialized; the logger and the service serialize their own. Two CPU
cores host the broker, Redis, the server and the load generator alike, so the absolute
figures are lower bounds; the ratios are the claim.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import signal
import time
import uuid
from typing import Any

from bench.stats import percentiles, rate
from cascade.config import Config
from proto.cascade.v1 import common_pb2, events_pb2, feed_pb2

PAGE = 20
BATCH = 50
CONCURRENCY = 8
ROUNDS = 3
PARTITIONS = 4


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _page(r: int) -> feed_pb2.GetFeedResponse:
    items = [feed_pb2.FeedItem(item_id=f"item{(r * 7 + i) % 100_000}", score=1.0 - i / PAGE, position=i,
                               recall_channels=[common_pb2.ChannelScore(channel="item2item", score=0.4, rank=i),
                                                common_pb2.ChannelScore(channel="popular", score=12.0, rank=3 * i)],
                               kind=common_pb2.ITEM_KIND_ORGANIC, ranking_score=0.05 + i / 100)
             for i in range(PAGE)]
    return feed_pb2.GetFeedResponse(
        request_id=uuid.uuid4().hex, items=items,
        model_versions=[common_pb2.ModelVersion(model_name="ctr_main", version="20250101T000000Z-ab12",
                                                kind=common_pb2.MODEL_KIND_DEEPFM)],
        experiment=common_pb2.ExperimentAssignment(experiment="ranking_ab", bucket="control"),
        served_feature_id=uuid.uuid4().hex, served_at_ms=time.time_ns() // 1_000_000)


def _raw_produce(bootstrap: str, config: Config, topic: str, records: list[tuple[bytes, bytes]], **options: Any) -> float:
    """Records per second of a bare producer (send all, flush), the ceiling of the same run."""
    from events.producer import make_producer

    producer = make_producer(bootstrap, config, **options)
    try:
        producer.partitions_for(topic)
        t0 = time.perf_counter()
        futures = [producer.send(topic, key=k, value=v) for k, v in records]
        producer.flush(timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        producer.close()
    failed = sum(1 for f in futures if not f.succeeded())
    if failed:
        raise RuntimeError(f"{failed} of {len(records)} raw sends to {topic} failed")
    return rate(len(records), elapsed)


def _impressions(config: Config, bootstrap: str, topics: dict[str, str], n_pages: int) -> dict[str, Any]:
    from events.impression_log import ImpressionLogger, impressions_from_feed
    from events.producer import user_key

    pages = [_page(r) for r in range(n_pages)]
    build_us = math.inf
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        batches = [impressions_from_feed(p, user_id=f"user{r % 5000}", surface="home_feed") for r, p in enumerate(pages)]
        build_us = min(build_us, (time.perf_counter() - t0) / n_pages * 1e6)
    n = n_pages * PAGE
    ev = config.events
    options = {"linger_ms": ev.impression_linger_ms, "batch_size": ev.impression_batch_bytes}
    records = [(user_key(i.user_id), i.SerializeToString()) for b in batches for i in b]
    raws, rates, log_s = [], [], []
    for r in range(ROUNDS):  # alternating, best of each: other load on the machine only ever lowers a figure
        raws.append(_raw_produce(bootstrap, config, f"{topics['raw_impressions']}-{r}", records, **options))
        logger = ImpressionLogger(config, bootstrap, topic=f"{topics['impressions']}-{r}", capacity=n)
        logger.start()
        time.sleep(0.5)  # connected before the clock starts, as in a gateway that has been up for a while
        t0 = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            logger.log(b)
            log_s.append(time.perf_counter() - t)
        stats = logger.close(timeout_s=120)
        elapsed = time.perf_counter() - t0
        if stats["sent"] != n:
            raise RuntimeError(f"logger delivered {stats}, expected {n}")
        rates.append(rate(n, elapsed))
        _step(f"round {r + 1}/{ROUNDS}: raw producer {raws[-1]:,.0f}/s, logger {rates[-1]:,.0f} impressions/s acked")
    raw, per_s = max(raws), max(rates)
    pct = percentiles(log_s)
    _step(f"log() of {PAGE}: p50 {pct['p50_ms'] * 1000:.1f} us, p99 {pct['p99_ms'] * 1000:.1f} us")
    return {
        "impressions": n,
        "impressions_from_feed_us": round(build_us, 1),
        "logger_log_us_p50": round(pct["p50_ms"] * 1000, 2),
        "logger_log_us_p99": round(pct["p99_ms"] * 1000, 2),
        "logger_records_per_s": round(per_s),
        "raw_impressions_per_s": round(raw),
        "logger_vs_raw": round(per_s / raw, 3),
    }


# ----------------------------------------------------------------------------- LogEvents


def _server_main(redis_url: str, bootstrap: str, topic: str, prefix: str, conn: Any) -> None:
    """Child process: the EventService on a free port until SIGTERM."""
    from cascade.config import get_config
    from events.service import build_events_server

    async def main() -> None:
        server = build_events_server(get_config(), redis_url, bootstrap, port=0, topic=topic, key_prefix=prefix)
        port = await server.start()
        await server.publisher.warm_up()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(port)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())


def _events(n: int, now_ms: int) -> list[events_pb2.Event]:
    types = (events_pb2.EVENT_TYPE_CLICK, events_pb2.EVENT_TYPE_VIEW, events_pb2.EVENT_TYPE_DWELL, events_pb2.EVENT_TYPE_LIKE)
    out = []
    for i in range(n):
        t = types[i % len(types)]
        out.append(events_pb2.Event(event_id=uuid.uuid4().hex, type=t, user_id=f"user{i % 5000}", item_id=f"item{i % 100_000}",
                                    request_id=uuid.uuid4().hex, timestamp_ms=now_ms,
                                    value=3.5 if t == events_pb2.EVENT_TYPE_DWELL else 0.0,
                                    properties={"surface": "home_feed"}))
    return out


async def _drive(address: str, duration_s: float, concurrency: int, batch: int) -> dict[str, Any]:
    import grpc.aio

    from proto.cascade.v1 import events_pb2_grpc

    latencies: list[float] = []
    failed = 0
    events = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventServiceStub(channel)
        end = time.perf_counter() + duration_s

        async def worker() -> None:
            nonlocal failed, events
            while time.perf_counter() < end:
                req = events_pb2.LogEventsRequest(events=_events(batch, time.time_ns() // 1_000_000))
                t = time.perf_counter()
                try:
                    resp = await stub.LogEvents(req, timeout=30)
                except grpc.aio.AioRpcError:
                    failed += 1
                    continue
                latencies.append(time.perf_counter() - t)
                events += resp.accepted_count

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latency": latencies, "failed": failed, "events": events, "wall": wall}


def _logevents(config: Config, stack: Any, topics: dict[str, str], duration_s: float) -> dict[str, Any]:
    from events.producer import user_key

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    prefix = f"bench:events:{uuid.uuid4().hex[:8]}"
    proc = ctx.Process(target=_server_main, args=(stack.redis_url, stack.kafka_bootstrap, topics["events"], prefix, child),
                       daemon=True)
    proc.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("the EventService process did not start")
        address = f"{config.grpc.host}:{parent.recv()}"
        _step(f"EventService (pid {proc.pid}) on {address}; warm-up")
        asyncio.run(_drive(address, 1.0, CONCURRENCY, BATCH))
        single = asyncio.run(_drive(address, duration_s / 2, 1, 1))
        pct1 = percentiles(single["latency"])
        _step(f"one event per call, one caller: p50 {pct1['p50_ms']:.2f} ms, p99 {pct1['p99_ms']:.2f} ms")
        loads = []
        raws = []
        for r in range(ROUNDS):  # alternating, best of each
            loads.append(asyncio.run(_drive(address, duration_s / ROUNDS, CONCURRENCY, BATCH)))
            records = [(user_key(e.user_id), e.SerializeToString()) for e in _events(max(loads[-1]["events"], 1000), 1)]
            raws.append(_raw_produce(stack.kafka_bootstrap, config, f"{topics['raw_events']}-{r}", records,
                                     linger_ms=config.events.publish_linger_ms))
            _step(f"round {r + 1}/{ROUNDS}: LogEvents {rate(loads[-1]['events'], loads[-1]['wall']):,.0f} events/s, "
                  f"raw producer {raws[-1]:,.0f} events/s")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    load = max(loads, key=lambda x: rate(x["events"], x["wall"]))
    raw = max(raws)
    per_s = rate(load["events"], load["wall"])
    pct = percentiles(load["latency"])
    _step(f"{CONCURRENCY} callers x {BATCH} events (best round): {per_s:,.0f} events/s, p50 {pct['p50_ms']:.1f} ms, "
          f"p99 {pct['p99_ms']:.1f} ms; {sum(x['failed'] for x in loads)} failed calls")
    return {
        "logevents_batch": BATCH,
        "logevents_concurrency": CONCURRENCY,
        "logevents_events": sum(x["events"] for x in loads),
        "logevents_failed_calls": sum(x["failed"] for x in loads) + single["failed"],
        "logevents_events_per_s": round(per_s),
        "logevents_calls_per_s": round(rate(len(load["latency"]), load["wall"]), 1),
        "logevents_p50_ms": round(pct["p50_ms"], 2),
        "logevents_p99_ms": round(pct["p99_ms"], 2),
        "logevents_single_p50_ms": round(pct1["p50_ms"], 2),
        "logevents_single_p99_ms": round(pct1["p99_ms"], 2),
        "raw_events_per_s": round(raw),
        "logevents_vs_raw": round(per_s / raw, 3),
    }


def run(quick: bool, config: Config) -> dict[str, Any]:
    from stack import Stack
    from stack.clients import ensure_topics

    n_pages, duration_s = (500, 6.0) if quick else (5_000, 15.0)
    run_id = uuid.uuid4().hex[:8]
    topics = {k: f"bench-events-{run_id}-{k}" for k in ("impressions", "raw_impressions", "events", "raw_events")}
    out: dict[str, Any] = {}
    with Stack(config) as stack:
        from cascade.config import TopicConfig

        names = [topics["events"]] + [f"{topics[k]}-{r}" for k in ("impressions", "raw_impressions", "raw_events")
                                      for r in range(ROUNDS)]
        kafka = config.kafka.model_copy(update={"topics": {t: TopicConfig(partitions=PARTITIONS) for t in names}})
        ensure_topics(stack.kafka_bootstrap, kafka)
        _step(f"{n_pages:,} feed pages of {PAGE} impressions; LogEvents for {duration_s:g} s")
        out.update(_impressions(config, stack.kafka_bootstrap, topics, n_pages))
        out.update(_logevents(config, stack, topics, duration_s))
    return out
