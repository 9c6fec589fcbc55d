"""Freshness: how long from a click until a ranking replica serves a model version that learned from it.

`run(quick, config)` runs the learning loop on an embedded Kafka (and Redis, for the joiner):

* traffic at ``RATE`` requests/s (``deepfm_synthetic`` feature set, 5 impressed items each):
  each request's served-feature record goes to the features topic; clicks (drawn from the
  synthetic world's hidden click probability) happen 0.2-2 s after the impression, stamped
  with the wall clock when they happen;
* **joiner mode** (``streaming.joiner`` importable): impressions and click events go to their
  topics and the joiner turns them into labelled samples (a positive as soon as its click
  joins); **direct mode** (no joiner): the bench writes each click's positive sample itself
  at click time (negatives at impression time) -- the joiner's own latency is then missing;
* the FTRL trainer (:class:`streaming.trainer.Trainer`, in-process, on its own thread)
  learns and publishes every ``streaming.publish_every_s``;
* a ranking replica: :class:`ranking.live.ModelManager` with the default loader, its
  registry watcher polling every ``ranking.registry_poll_ms``; a probe reads the slot's live
  version every 5 ms and stamps when each version went live.

Freshness of a click = (time its including version went live in the replica) - (click
time). "Including" is exact, not guessed: an observer reads the samples topic and knows each
positive sample's (partition, offset); a version includes it iff the version's manifest says
``offsets[partition] > offset`` (:mod:`streaming.publish`). Goal: p99 <= 10 s. The components
(``join_*``: click -> its positive sample appended to the samples topic, Kafka's record time;
``wait_*``: -> the trainer's weight snapshot of a version that includes it, mostly the publish
period; ``publish_*``: snapshot -> registered; ``pickup_*``: registered -> live in the replica)
say where the time goes. Everything runs in
one process on a shared 2-core machine, so the figures are upper bounds of a quiet deployment.
"""

from __future__ import annotations

import asyncio
import heapq
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import Config

FS = "deepfm_synthetic"
ITEMS_PER_REQUEST = 5


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _joiner_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("streaming.joiner") is not None


def _make_topics(bootstrap: str, names: dict[str, int]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()])
        deadline = time.monotonic() + 20
        while not set(names) <= set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        admin.close()


class _Observer(threading.Thread):
    """Reads the samples topic (no group): (partition, offset, click time) of every positive sample."""

    def __init__(self, bootstrap: str, config: Any, topic: str) -> None:
        super().__init__(name="freshness-observer", daemon=True)
        from kafka import TopicPartition

        from stack.clients import kafka_consumer

        self.consumer = kafka_consumer(bootstrap, config.kafka, None)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.consumer.seek_to_beginning()
        self.clicks: list[tuple[int, int, int, int]] = []  # partition, offset, click ms, sample append ms
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from proto.cascade.v1 import records_pb2

        while not self.stop.is_set():
            for tp, messages in self.consumer.poll(timeout_ms=100).items():
                for m in messages:
                    s = records_pb2.LabeledSample()
                    s.ParseFromString(m.value)
                    self.samples += 1
                    if s.label > 0 and s.HasField("click_timestamp_ms"):
                        self.clicks.append((tp.partition, m.offset, int(s.click_timestamp_ms), int(m.timestamp)))
        self.consumer.close()


class _Replica(threading.Thread):
    """A ranking replica's ModelManager following the registry; stamps when each version goes live."""

    def __init__(self, config: Any, registry: Any, name: str) -> None:
        super().__init__(name="freshness-replica", daemon=True)
        self.config, self.registry, self.name = config, registry, name
        self.live_at: dict[str, int] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by the bench
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from ranking.live import ModelManager, default_loader

        mgr = ModelManager(self.registry, self.config.ranking, names=[self.name], loader=default_loader(self.config))
        await mgr.start()
        self.ready.set()
        try:
            while not self.stop.is_set():
                live = mgr.live_model(self.name)
                if live is not None and live.version not in self.live_at:
                    self.live_at[live.version] = _now_ms()
                await asyncio.sleep(0.005)
        finally:
            await mgr.close()


def _traffic(world: Any, producer: Any, topics: dict[str, str], seconds: float, rate: float, joiner: bool) -> dict[str, int]:
    """Requests at `rate`/s for `seconds`; clicks 0.2-2 s later, at wall-clock time."""
    from featurestore.served_log import encode_record
    from proto.cascade.v1 import common_pb2, events_pb2, records_pb2

    rng = np.random.default_rng(7)
    pending: list[tuple[float, int, Any, dict[str, Any], int]] = []  # (due, seq, ...) min-heap of clicks
    seq = 0
    sent = {"requests": 0, "impressions": 0, "clicks": 0}
    t0 = time.monotonic()
    next_request = t0
    end = t0 + seconds
    while True:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, _, record, row = heapq.heappop(pending)
            click_ms = _now_ms()
            item = record["entity_keys"]["item_id"][row]
            user = record["entity_keys"]["user_id"][row]
            if joiner:
                ev = events_pb2.Event(event_id=uuid.uuid4().hex, type=events_pb2.EVENT_TYPE_CLICK, user_id=user,
                                      item_id=item, request_id=record["request_id"], timestamp_ms=click_ms,
                                      received_at_ms=click_ms)
                producer.send(topics["events"], key=user.encode(), value=ev.SerializeToString())
            else:
                s = world.sample(record, row, True, click_ms=click_ms)
                s.joined_at_ms = click_ms
                producer.send(topics["samples"], key=user.encode(), value=s.SerializeToString())
            sent["clicks"] += 1
        if now >= end and not pending:
            break
        if now < end and now >= next_request:
            ts = _now_ms()
            user = world.users[int(rng.integers(len(world.users)))]
            items = [world.items[int(j)] for j in rng.choice(len(world.items), ITEMS_PER_REQUEST, replace=False)]
            record = world.served_record(user, items, ts)
            producer.send(topics["features"], key=record["served_feature_id"].encode(), value=encode_record(record))
            clicked = rng.random(ITEMS_PER_REQUEST) < world.click_probability(user, items)
            for row, item in enumerate(items):
                if joiner:
                    imp = records_pb2.Impression(
                        request_id=record["request_id"], user_id=user, item_id=item, position=row, score=0.5,
                        served_feature_id=record["served_feature_id"], timestamp_ms=ts, surface="home_feed",
                        model_version=common_pb2.ModelVersion(model_name="deepfm", version="v0",
                                                              kind=common_pb2.MODEL_KIND_DEEPFM))
                    producer.send(topics["impressions"], key=user.encode(), value=imp.SerializeToString())
                elif not clicked[row]:
                    producer.send(topics["samples"], key=user.encode(),
                                  value=world.sample(record, row, False).SerializeToString())
                if clicked[row]:
                    seq += 1
                    heapq.heappush(pending, (now + float(rng.uniform(0.2, 2.0)), seq, None, record, row))
            sent["requests"] += 1
            sent["impressions"] += ITEMS_PER_REQUEST
            next_request += 1.0 / rate
        time.sleep(max(0.0, min(0.005, next_request - time.monotonic())))
    producer.flush()
    return sent


def _freshness(clicks: list[tuple[int, int, int, int]],
               versions: list[dict[str, Any]]) -> tuple[list[float], list[dict[str, float]], int]:
    """Per click: live time of the first live version including it minus click time (s); its components; unmatched."""
    out: list[float] = []
    parts: list[dict[str, float]] = []
    unmatched = 0
    for partition, offset, click_ms, append_ms in clicks:
        v = next((v for v in versions if v["offsets"].get(str(partition), 0) > offset), None)
        if v is None:
            unmatched += 1
            continue
        out.append((v["live_ms"] - click_ms) / 1000.0)
        parts.append({"join": (append_ms - click_ms) / 1000.0, "wait": (v["snapshot_ms"] - append_ms) / 1000.0,
                      "publish": (v["registered_ms"] - v["snapshot_ms"]) / 1000.0,
                      "pickup": (v["live_ms"] - v["registered_ms"]) / 1000.0})
    return out, parts, unmatched


def run(quick: bool, config: Config) -> dict[str, Any]:
    import torch

    from featurestore.repository import get_repo
    from ranking.artifact import read_manifest
    from ranking.registry import ModelRegistry
    from stack import Stack
    from stack.clients import kafka_producer, redis_client
    from streaming.trainer import Trainer
    from streaming.trainer_synthetic import SyntheticWorld

    torch.set_num_threads(1)
    seconds = 20.0 if quick else 90.0
    rate = 40.0 if quick else 100.0
    joiner = _joiner_available()
    repo = get_repo(config.features.definitions)
    world = SyntheticWorld(repo, FS, n_users=2_000, n_items=5_000, seed=3)
    out: dict[str, Any] = {"mode": "joiner" if joiner else "direct (no joiner: samples produced at click time)",
                           "seconds_of_traffic": seconds, "requests_per_s": rate,
                           "publish_every_s": config.streaming.publish_every_s,
                           "registry_poll_ms": config.ranking.registry_poll_ms, "hash_bits": config.streaming.hash_bits}
    _step(f"mode: {out['mode']}")
    with tempfile.TemporaryDirectory() as tmp, Stack(config, redis=joiner) as stack:
        tag = uuid.uuid4().hex[:8]
        topics = {k: f"bench-fresh-{k}-{tag}" for k in ("impressions", "events", "samples", "features")}
        _make_topics(stack.kafka_bootstrap, {topics["impressions"]: 4, topics["events"]: 4, topics["samples"]: 4,
                                             topics["features"]: 4})
        cfg = config.model_copy(update={
            "paths": config.paths.model_copy(update={"var_dir": Path(tmp) / "var", "artifacts_dir": Path(tmp) / "art"}),
            # a 5 s attribution window: the joiner's negatives flow during the run too (the trainer's real load mix)
            "streaming": config.streaming.model_copy(update={"feature_set": FS, "encoder_fit_rows": 200,
                                                             "encoder_fit_wait_s": 3.0, "attribution_window_s": 5.0})})
        name = cfg.streaming.model_name
        registry = ModelRegistry.from_config(cfg, repo=repo)
        replica = _Replica(cfg, registry, name)
        replica.start()
        replica.ready.wait(60)
        if replica.error:
            raise replica.error
        trainer = Trainer(cfg, stack.kafka_bootstrap, repo=repo, registry=registry, samples_topic=topics["samples"],
                          features_topic=topics["features"]).start()
        stop_trainer = threading.Event()
        trainer_thread = threading.Thread(target=trainer.run, args=(stop_trainer,), name="freshness-trainer", daemon=True)
        trainer_thread.start()
        join_thread = None
        j = None
        if joiner:
            from streaming.joiner import Joiner, JoinerTopics

            j = Joiner(cfg, redis_client(stack.redis_url, cfg.redis), stack.kafka_bootstrap,
                       topics=JoinerTopics(topics["impressions"], topics["events"], topics["samples"]),
                       group=f"bench-{tag}", feature_set=(FS, 1))
            join_thread = threading.Thread(target=j.run, name="freshness-joiner", daemon=True)
            join_thread.start()
        observer = _Observer(stack.kafka_bootstrap, cfg, topics["samples"])
        observer.start()
        producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka, linger_ms=2)
        _step(f"traffic: {rate:.0f} requests/s x {ITEMS_PER_REQUEST} items for {seconds:.0f}s")
        sent = _traffic(world, producer, topics, seconds, rate, joiner)
        producer.close()
        _step(f"sent {sent}; waiting for the last clicks to be served")
        deadline = time.monotonic() + cfg.streaming.publish_every_s + 30

        def versions() -> list[dict[str, Any]]:
            got = []
            for v, live_ms in sorted(replica.live_at.items(), key=lambda kv: kv[1]):
                try:
                    m = read_manifest(registry.artifact_path(v, name))
                    rec = registry.version(v, name)
                except Exception:  # noqa: BLE001 - pruned meanwhile
                    continue
                info = m.model.get("streaming", {})
                got.append({"version": v, "live_ms": live_ms, "offsets": info.get("offsets", {}),
                            "snapshot_ms": int(info.get("snapshot_ms", 0)), "registered_ms": rec.registered_at_ms})
            return got

        while time.monotonic() < deadline:
            vs = versions()
            if observer.clicks and vs and len(observer.clicks) >= sent["clicks"] and \
                    _freshness(observer.clicks, vs)[2] == 0:
                break
            time.sleep(0.5)
        vs = versions()
        fresh, parts, unmatched = _freshness(list(observer.clicks), vs)
        stop_trainer.set()
        trainer_thread.join(30)
        if j is not None:
            j.stop()
            join_thread.join(30)
            j.close()
        observer.stop.set()
        replica.stop.set()
        observer.join(10)
        replica.join(30)
        trainer.close()
    if not fresh:
        raise RuntimeError(f"no click was served by a version (clicks {len(observer.clicks)}, versions {len(vs)})")
    arr = np.asarray(fresh)
    out.update({
        "clicks": len(observer.clicks), "clicks_sent": sent["clicks"], "clicks_not_served": unmatched,
        "samples_seen": observer.samples, "versions_live": len(vs), "learned": trainer.counts["learned"],
        "no_features": trainer.counts["no_features"],
        "freshness_p50_s": float(np.percentile(arr, 50)), "freshness_p90_s": float(np.percentile(arr, 90)),
        "freshness_p99_s": float(np.percentile(arr, 99)), "freshness_max_s": float(arr.max()),
        "freshness_mean_s": float(arr.mean()), "goal_p99_s": 10.0,
    })
    for k in ("join", "wait", "publish", "pickup"):
        a = np.asarray([p[k] for p in parts])
        out[f"{k}_mean_s"] = float(a.mean())
        out[f"{k}_p99_s"] = float(np.percentile(a, 99))
    _step(f"freshness p50 {out['freshness_p50_s']:.2f}s p99 {out['freshness_p99_s']:.2f}s over {len(fresh)} clicks, "
          f"{len(vs)} versions (join {out['join_mean_s']:.2f}s + wait {out['wait_mean_s']:.2f}s + "
          f"publish {out['publish_mean_s']:.2f}s + "
          f"pickup {out['pickup_mean_s']:.2f}s on average)")
    return out
