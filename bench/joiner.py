"""Joiner: events/s through the streaming joiner against the raw consume rate of the same broker and client.

`run(quick, config)` starts its own embedded Redis and Kafka (`Stack(config)`),
writes impressions and clicks to fresh 4-partition topics (keyed by user, 10 %
of impressions clicked 50-5,000 ms after serving, event time advancing 1 ms per
impression; real-shaped records: ids, model version, experiment, served-feature
id, two recall channels), then measures, alternately on the very same records:

* ``raw``: the kafka-python consumer the joiner uses (same factory and settings,
  every input partition assigned, read from the beginning) doing nothing but
  consuming -- records/s from the first poll to the last record;
* ``joiner``: `streaming.joiner.Joiner` from its first poll to its final
  checkpoint with ``drain`` (every impression becomes a sample: the window's
  closes by the watermark plus a drain of the last window): decoding, the join,
  building and writing every sample (acknowledged), and the Redis checkpoints
  once a second (state changes + offsets, one MULTI/EXEC), a fresh group each
  round so every round does the whole work.

``ratio`` = joiner records/s / raw records/s (goal >= 0.5), wall clock, medians
over the rounds. The machine is shared (the broker and Redis run on it too, and
the joiner's writes make the broker work where the raw consumer's reads barely
do), so ``cpu_ratio`` -- raw consumer CPU seconds / joiner CPU seconds, this
process only, for the same records -- is reported as well. The joiner runs with
the CLI's GC settings (`streaming.joiner.tune_gc`). The samples topic is checked
afterwards: one record per impression.

``two_process_records_per_s``: the same work split over two joiner processes
(``--partitions 0,1`` and ``2,3``, spawned, timed from a common start line to
the later one's final checkpoint) -- how the joiner scales out, not part of the
ratio (that compares one consumer with one joiner).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from typing import Any

from kafka import TopicPartition

from cascade.config import Config, TopicConfig
from proto.cascade.v1.common_pb2 import ChannelScore, ExperimentAssignment, ModelVersion
from proto.cascade.v1.events_pb2 import Event
from proto.cascade.v1.records_pb2 import Impression, LabeledSample
from stack import Stack
from stack.clients import ensure_topics, kafka_consumer, kafka_producer, redis_client

PARTITIONS = 4
CTR = 0.10


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def produce(bootstrap: str, config: Config, imp_topic: str, ev_topic: str, n: int, seed: int = 0) -> tuple[int, int]:
    """n impressions (+ ~CTR clicks) in serving order; returns (impressions, clicks)."""
    rng = random.Random(seed)
    producer = kafka_producer(bootstrap, config.kafka, linger_ms=20, batch_size=512 * 1024)
    t0 = 1_700_000_000_000
    clicks: list[tuple[int, Event]] = []
    n_clicks = 0
    mv = ModelVersion(model_name="ctr_main", version="20250101T120000Z-3f2a9c", kind=1)
    exp = ExperimentAssignment(experiment="ranking_ab", bucket="control")
    page = 10
    user = ""
    for i in range(n):
        req = i // page
        if i % page == 0:  # one feed page of 10 items per request
            user = f"user{rng.randrange(50_000)}"
        ts = t0 + i
        item = f"item{rng.randrange(200_000)}-{i % page}"  # distinct within a page: (request_id, item_id) is unique
        imp = Impression(request_id=f"req-{seed}-{req:09d}", user_id=user, item_id=item, position=i % page,
                         score=rng.random(), ranking_score=rng.random(), model_version=mv, experiment=exp,
                         served_feature_id=f"sf-{seed}-{req:09d}", timestamp_ms=ts,
                         recall_channels=[ChannelScore(channel="embedding", score=rng.random(), rank=rng.randrange(500)),
                                          ChannelScore(channel="popular", score=rng.random(), rank=rng.randrange(150))],
                         kind=1, surface="home_feed")
        producer.send(imp_topic, key=user.encode(), value=imp.SerializeToString())
        if rng.random() < CTR:
            delay = rng.randint(50, 5000)
            clicks.append((ts + delay, Event(event_id=uuid.UUID(int=rng.getrandbits(128)).hex, type=1, user_id=user,
                                             item_id=item, request_id=imp.request_id, timestamp_ms=ts + delay,
                                             received_at_ms=ts + delay + 30)))
        while clicks and clicks[0][0] <= ts:  # events in the order the EventService would publish them
            ev = clicks.pop(0)[1]
            producer.send(ev_topic, key=ev.user_id.encode(), value=ev.SerializeToString())
            n_clicks += 1
    for _, ev in clicks:
        producer.send(ev_topic, key=ev.user_id.encode(), value=ev.SerializeToString())
        n_clicks += 1
    producer.flush()
    producer.close()
    return n, n_clicks


def raw_consume(bootstrap: str, config: Config, topics: list[str], total: int) -> tuple[float, float]:
    """(records/s, CPU seconds) of the plain consumer over every partition of `topics`, first poll to last record."""
    from streaming.joiner import input_consumer_options

    consumer = kafka_consumer(bootstrap, config.kafka, None, **input_consumer_options(config))
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        seen = 0
        t0, c0 = time.perf_counter(), time.process_time()
        deadline = time.monotonic() + 300
        while seen < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200, max_records=config.streaming.joiner_poll_max_records).values():
                seen += len(records)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        if seen < total:
            raise RuntimeError(f"raw consumer read {seen} of {total} records")
        return seen / dt, cpu
    finally:
        consumer.close(autocommit=False)


def count_samples(bootstrap: str, config: Config, topic: str) -> tuple[int, int, int]:
    """(records, distinct sample ids, positives) on the samples topic, read to its end."""
    from streaming.sample_writer import OutputTail

    tail = OutputTail(bootstrap, config.kafka, topic)
    try:
        n, ids, pos = 0, set(), 0
        for value in tail.read({}):
            s = LabeledSample.FromString(value)
            n += 1
            ids.add(s.sample_id)
            pos += s.label >= 0.5
        return n, len(ids), pos
    finally:
        tail.close()


def _worker(config: Config, redis_url: str, bootstrap: str, topics: tuple[str, str, str], group: str,
            partitions: list[int], barrier: Any, out: Any) -> None:
    """One joiner process of the two-process round: ready, wait for the start line, drain, report."""
    from streaming.joiner import Joiner, JoinerTopics, tune_gc

    client = redis_client(redis_url, config.redis)
    joiner = Joiner(config, client, bootstrap, topics=JoinerTopics(*topics), group=group, partitions=partitions,
                    feature_set=None)
    try:
        joiner.start()
        tune_gc()
        barrier.wait(timeout=120)
        stats = joiner.run(drain=True)
        out.put((stats.records, time.monotonic()))
    finally:
        joiner.close()
        client.close()


def two_processes(config: Config, redis_url: str, bootstrap: str, topics: tuple[str, str, str], group: str) -> float:
    """Records/s of two joiner processes on disjoint partition halves, start line to the later finish."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    halves = [list(range(PARTITIONS // 2)), list(range(PARTITIONS // 2, PARTITIONS))]
    procs = [ctx.Process(target=_worker, args=(config, redis_url, bootstrap, topics, group, h, barrier, out))
             for h in halves]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    t0 = time.monotonic()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return sum(r for r, _ in results) / (max(t for _, t in results) - t0)


def run(quick: bool, config: Config) -> dict[str, Any]:
    from streaming.joiner import Joiner, JoinerTopics, tune_gc

    n = 60_000 if quick else 300_000
    rounds = 1 if quick else 3
    prefix = f"bench-joiner-{uuid.uuid4().hex[:6]}"
    imp_topic, ev_topic = f"{prefix}-impressions", f"{prefix}-events"
    # Event time spans n ms; a window of a sixth of it closes most impressions by the watermark, the rest by drain.
    cfg = config.model_copy(update={"streaming": config.streaming.model_copy(update={
        "attribution_window_s": n / 6000, "joiner_allowed_lateness_s": 2.0})})
    with Stack(config) as stack:
        bootstrap, redis_url = stack.kafka_bootstrap, stack.redis_url
        assert bootstrap and redis_url
        topics = {imp_topic: TopicConfig(partitions=PARTITIONS), ev_topic: TopicConfig(partitions=PARTITIONS)}
        samples_topics = [f"{prefix}-samples-{r}" for r in range(rounds + 1)]  # the last: two processes
        topics.update({t: TopicConfig(partitions=PARTITIONS) for t in samples_topics})
        ensure_topics(bootstrap, config.kafka.model_copy(update={"topics": topics}))
        _step(f"producing {n:,} impressions + ~{int(n * CTR):,} clicks")
        t0 = time.perf_counter()
        n_imp, n_clicks = produce(bootstrap, config, imp_topic, ev_topic, n)
        total = n_imp + n_clicks
        _step(f"produced {total:,} records in {time.perf_counter() - t0:.1f}s")
        client = redis_client(redis_url, config.redis)
        raw_rates, join_rates, raw_cpus, join_cpus, runs = [], [], [], [], []
        raw_consume(bootstrap, config, [imp_topic, ev_topic], total)  # warm the broker's cache and the client
        tune_gc()
        for r in range(rounds):
            raw, raw_cpu = raw_consume(bootstrap, config, [imp_topic, ev_topic], total)
            raw_rates.append(raw)
            raw_cpus.append(raw_cpu)
            joiner = Joiner(cfg, client, bootstrap, topics=JoinerTopics(imp_topic, ev_topic, samples_topics[r]),
                            group=f"{prefix}-{r}", feature_set=None)
            try:
                joiner.start()
                c0 = time.process_time()
                stats = joiner.run(drain=True)
                join_cpus.append(time.process_time() - c0)
            finally:
                joiner.close()
            rate = stats.records / stats.seconds
            join_rates.append(rate)
            runs.append(stats)
            _step(f"round {r + 1}/{rounds}: raw {raw:,.0f} records/s ({raw_cpu:.2f} CPU s), joiner {rate:,.0f} "
                  f"records/s ({join_cpus[-1]:.2f} CPU s): ratio {rate / raw:.2f}, cpu ratio "
                  f"{raw_cpu / join_cpus[-1]:.2f}; {stats.summary()}")
        written, distinct, positives = count_samples(bootstrap, config, samples_topics[rounds - 1])
        two = two_processes(cfg, redis_url, bootstrap, (imp_topic, ev_topic, samples_topics[-1]), f"{prefix}-two")
        two_written, two_distinct, _ = count_samples(bootstrap, config, samples_topics[-1])
        _step(f"two joiner processes: {two:,.0f} records/s; samples {two_written:,} ({two_distinct:,} distinct)")
        client.close()
    raw_med, join_med = statistics.median(raw_rates), statistics.median(join_rates)
    raw_cpu_us = statistics.median(raw_cpus) / total * 1e6
    join_cpu_us = statistics.median(join_cpus) / total * 1e6
    last = runs[-1]
    return {
        "impressions": n_imp,
        "clicks": n_clicks,
        "records": total,
        "rounds": rounds,
        "raw_records_per_s": round(raw_med),
        "joiner_records_per_s": round(join_med),
        "ratio": round(join_med / raw_med, 3),
        "goal_ratio": 0.5,
        "raw_cpu_us_per_record": round(raw_cpu_us, 2),
        "joiner_cpu_us_per_record": round(join_cpu_us, 2),
        "cpu_ratio": round(raw_cpu_us / join_cpu_us, 3),
        "joiner_seconds": round(last.seconds, 2),
        "samples_written": written,
        "samples_distinct": distinct,
        "samples_expected": n_imp,
        "positives": positives,
        "two_process_records_per_s": round(two),
        "two_process_samples_written": two_written,
        "two_process_samples_distinct": two_distinct,
        "checkpoints": last.checkpoints,
        "closed_by_watermark": last.counts.closed_watermark,
        "closed_by_drain": last.counts.closed_drain,
        "attribution_window_s": cfg.streaming.attribution_window_s,
    }
