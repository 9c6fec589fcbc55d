"""The trainer on real Kafka, Redis and a ranking server: learns, publishes v1 then v2, ranking swaps without a failed call."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncio  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ftrl_trainer_helpers import DEFS, FS, make_topics, produce, trainer_config  # noqa: E402

from featurestore.repository import load_repo  # noqa: E402
from streaming.trainer import Trainer  # noqa: E402
from streaming.trainer_state import LearnedSet  # noqa: E402
from streaming.trainer_synthetic import SyntheticWorld  # noqa: E402


@pytest.fixture(scope="module")
def repo() -> Any:
    return load_repo(DEFS)


def _learn_until(trainer: Trainer, learned: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while trainer.counts["learned"] < learned:
        assert time.monotonic() < deadline, f"learned {trainer.counts} of {learned}"
        trainer.step()


def _publish(trainer: Trainer) -> str:
    """A version holding everything learned so far (the first one went out on its own after the first batch)."""
    trainer.wait_published()
    before = len(trainer.versions)
    if trainer.maybe_publish(force=True):
        trainer.wait_published()
        assert len(trainer.versions) == before + 1
    assert not trainer.publish_errors, trainer.publish_errors
    return trainer.versions[-1]


def test_trainer_publishes_versions_ranking_swaps_them_in_without_a_failed_call(
        stack: Any, config: Any, redis: Any, unique_prefix: str, tmp_path: Path, repo: Any) -> None:
    import grpc.aio

    from featurestore.client import FeatureClient, serving_time
    from featurestore.online import OnlineStore
    from proto.cascade.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
    from ranking.artifact import load_scorer, read_manifest
    from ranking.registry import ModelRegistry
    from ranking.service import build_ranking_server
    from stack.clients import kafka_producer

    cfg = trainer_config(config, tmp_path)
    cfg = cfg.model_copy(update={"ranking": cfg.ranking.model_copy(update={
        "model": cfg.streaming.model_name, "registry_poll_ms": 50, "deadline_ms": 10_000.0, "fallback_model": "",
        "preferred_batch_sizes": (16,), "max_batch_size": 256, "threads": 1, "max_queue_delay_us": 500})})
    samples_topic, features_topic = f"{unique_prefix}-samples", f"{unique_prefix}-features"
    make_topics(stack.kafka_bootstrap, {samples_topic: 2, features_topic: 1})
    world = SyntheticWorld(repo, FS, n_users=20, n_items=60, seed=1)
    store = OnlineStore(redis, unique_prefix)
    at = serving_time() - timedelta(hours=1)
    for view in ("st_user", "st_item"):
        store.write_rows(repo.view(view), world.view_table(view, at))
    client = FeatureClient(store, repo, feature_set_versions={FS: 1})
    registry = ModelRegistry.from_config(cfg, repo=repo)
    producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka)
    now = int(time.time() * 1000)
    first = produce(producer, world, 150, samples_topic=samples_topic, features_topic=features_topic, start_ms=now)

    trainer = Trainer(cfg, stack.kafka_bootstrap, repo=repo, registry=registry, samples_topic=samples_topic,
                      features_topic=features_topic).start()
    try:
        _learn_until(trainer, len(first))
        v1 = _publish(trainer)
        assert trainer.counts["no_features"] == 0 and registry.live(cfg.streaming.model_name).version == v1

        user = world.users[3]
        items = world.items[:12]
        ts = now

        def expected(version: str) -> np.ndarray:
            scorer = load_scorer(registry.artifact_path(version), "eager", 1)
            feats = client.get_online_features(None, {"user_id": [user] * len(items), "item_id": items}, FS,
                                               {"event_ts": ts})
            return scorer.score(feats).astype(np.float64)

        responses: list[Any] = []
        errors: list[BaseException] = []

        async def scenario() -> None:
            server = build_ranking_server(cfg, None, feature_client=client, registry=registry, port=0)
            await server.start()
            try:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    rank = ranking_pb2_grpc.RankingServiceStub(channel)
                    stop = asyncio.Event()

                    async def call_loop() -> None:
                        while not stop.is_set():
                            try:
                                responses.append(await rank.Rank(ranking_pb2.RankRequest(
                                    user_id=user, item_ids=items, context=common_pb2.RequestContext(timestamp_ms=ts)),
                                    timeout=20))
                            except Exception as exc:  # noqa: BLE001 - asserted on below
                                errors.append(exc)

                    clients = [asyncio.ensure_future(call_loop()) for _ in range(4)]
                    while len(responses) < 20:
                        await asyncio.sleep(0.01)
                    # new samples arrive, the trainer learns them and publishes v2 while Rank calls keep coming
                    second = produce(producer, world, 150, samples_topic=samples_topic, features_topic=features_topic,
                                     start_ms=int(time.time() * 1000))
                    await asyncio.to_thread(_learn_until, trainer, len(first) + len(second))
                    v2 = await asyncio.to_thread(_publish, trainer)
                    for _ in range(2000):
                        if any(r.model_version.version == v2 for r in responses[-5:]):
                            break
                        await asyncio.sleep(0.01)
                    n = len(responses)
                    while len(responses) < n + 20:
                        await asyncio.sleep(0.01)
                    stop.set()
                    await asyncio.gather(*clients)
                    ns.update(v2=v2, second=second)
            finally:
                await server.stop(1.0)

        ns: dict[str, Any] = {}
        asyncio.run(asyncio.wait_for(scenario(), 120))
        v2 = ns["v2"]
        assert not errors, errors[:3]
        versions = [r.model_version.version for r in responses]
        assert versions[0] == v1 and set(versions) == {v1, v2}
        assert set(versions[-10:]) == {v2}  # (calls in flight at the swap finish on v1, after some v2 ones started)
        assert all(r.model_version.kind == common_pb2.MODEL_KIND_FTRL for r in responses)
        assert not any(r.degraded for r in responses)
        want = {v: expected(v) for v in (v1, v2)}
        assert not np.allclose(want[v1], want[v2])
        for r in responses:  # every response was scored by the version it names
            np.testing.assert_allclose(list(r.scores), want[r.model_version.version], rtol=1e-5, atol=1e-6)

        # each version says which samples it includes and its newest click
        every = first + ns["second"]
        m1, m2 = read_manifest(registry.artifact_path(v1)), read_manifest(registry.artifact_path(v2))
        clicks1 = [s for s in first if s.label > 0]
        newest = max(clicks1, key=lambda s: s.click_timestamp_ms)
        assert m1.metrics["newest_click_ms"] == newest.click_timestamp_ms
        assert m1.model["streaming"]["newest_click_ms"] == newest.click_timestamp_ms
        assert m1.metrics["samples_learned"] == len(first) and m2.metrics["samples_learned"] == len(every)
        assert sum(m1.model["streaming"]["offsets"].values()) == len(first)
        assert sum(m2.model["streaming"]["offsets"].values()) == len(every)
        assert m2.model["streaming"]["learned_set"] == LearnedSet.of(s.sample_id for s in every).to_json()
        assert registry.version(v2).metrics["newest_click_ms"] == max(s.click_timestamp_ms for s in every if s.label > 0)
        assert 0.0 < m2.metrics["auc_window"] <= 1.0 and m2.model["config"]["layout"]["crosses"]
    finally:
        trainer.close()
        producer.close()


def test_duplicates_are_learned_once_and_missing_vectors_come_from_the_online_store(
        stack: Any, config: Any, redis: Any, unique_prefix: str, tmp_path: Path, repo: Any) -> None:
    from featurestore.client import FeatureClient, serving_time
    from featurestore.online import OnlineStore
    from stack.clients import kafka_producer
    from streaming.trainer_state import load_checkpoint

    cfg = trainer_config(config, tmp_path)
    samples_topic, features_topic = f"{unique_prefix}-samples", f"{unique_prefix}-features"
    make_topics(stack.kafka_bootstrap, {samples_topic: 2, features_topic: 1})
    world = SyntheticWorld(repo, FS, n_users=10, n_items=30, seed=2)
    store = OnlineStore(redis, unique_prefix)
    at = serving_time() - timedelta(hours=1)
    for view in ("st_user", "st_item"):
        store.write_rows(repo.view(view), world.view_table(view, at))
    client = FeatureClient(store, repo, feature_set_versions={FS: 1})
    producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka)
    now = int(time.time() * 1000)
    samples = produce(producer, world, 30, samples_topic=samples_topic, features_topic=features_topic, start_ms=now)
    # a joiner replay: 25 samples again; and 10 samples whose served vector was never logged
    for s in samples[:25]:
        producer.send(samples_topic, key=s.user_id.encode(), value=s.SerializeToString())
    record, _ = next(world.requests(1, items_per_request=10, start_ms=now + 5))
    unlogged = [world.sample(record, i, i % 3 == 0, with_features=i % 2 == 0) for i in range(10)]
    for s in unlogged:  # half point at a record that is not on the topic, half point at none
        producer.send(samples_topic, key=s.user_id.encode(), value=s.SerializeToString())
    producer.send(samples_topic, key=b"x", value=b"\xff not a protobuf")
    producer.flush()
    total = len(samples) + 25 + len(unlogged) + 1

    from prometheus_client import REGISTRY

    def metric(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {o: metric("cascade_streaming_trainer_samples_total", outcome=o) for o in ("learned", "duplicate")}
    learned_log = tmp_path / "learned.txt"
    trainer = Trainer(cfg, stack.kafka_bootstrap, repo=repo, feature_client=client, samples_topic=samples_topic,
                      features_topic=features_topic, learned_log=learned_log).start()
    try:
        deadline = time.monotonic() + 60
        while sum(trainer.offsets.values()) < total:
            assert time.monotonic() < deadline, trainer.counts
            trainer.step()
        trainer.checkpoint()
    finally:
        trainer.close()
    c = trainer.counts
    assert c["learned"] == len(samples) + len(unlogged) and c["duplicate"] == 25 and c["bad_record"] == 1
    assert c["no_features"] == 0
    assert metric("cascade_streaming_trainer_samples_total", outcome="learned") - before["learned"] == c["learned"]
    assert metric("cascade_streaming_trainer_samples_total", outcome="duplicate") - before["duplicate"] == 25
    assert 0.0 < metric("cascade_streaming_trainer_logloss") < 5.0  # the progressive-validation gauge is live
    ids = learned_log.read_text().split()
    assert sorted(ids) == sorted(s.sample_id for s in samples + unlogged)
    ckpt = load_checkpoint(tmp_path / "var" / cfg.streaming.checkpoint_subdir / f"trainer-{cfg.streaming.model_name}")
    assert ckpt is not None and LearnedSet.from_json(ckpt["meta"]["learned_set"]) == LearnedSet.of(ids)
    assert json.loads(json.dumps(ckpt["meta"]["offsets"])) == {str(p): o for p, o in trainer.offsets.items()}

    # without an online store, samples with no logged vector are skipped and counted, not learned (another
    # consumer group: a fresh trainer starts where its group's committed offsets are, here the beginning)
    cfg2 = cfg.model_copy(update={"streaming": cfg.streaming.model_copy(update={"trainer_group": f"{unique_prefix}-2"})})
    trainer2 = Trainer(cfg2, stack.kafka_bootstrap, repo=repo, samples_topic=samples_topic, features_topic=features_topic,
                       checkpoint_dir=tmp_path / "ckpt2").start()
    try:
        deadline = time.monotonic() + 60
        while sum(trainer2.offsets.values()) < total:
            assert time.monotonic() < deadline, trainer2.counts
            trainer2.step()
    finally:
        trainer2.close()
    assert trainer2.counts["learned"] == len(samples) and trainer2.counts["no_features"] == len(unlogged)


def test_records_evicted_from_memory_are_read_back_from_kafka(stack: Any, config: Any, unique_prefix: str,
                                                              tmp_path: Path, repo: Any) -> None:
    """A memory budget of ~one record: every served vector is found again by its indexed offset, none is skipped."""
    from stack.clients import kafka_producer

    cfg = trainer_config(config, tmp_path, served_cache_mb=0, trainer_batch_size=50, encoder_fit_rows=20)
    samples_topic, features_topic = f"{unique_prefix}-samples", f"{unique_prefix}-features"
    make_topics(stack.kafka_bootstrap, {samples_topic: 2, features_topic: 2})
    world = SyntheticWorld(repo, FS, n_users=10, n_items=30, seed=4)
    producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka)
    samples = produce(producer, world, 60, samples_topic=samples_topic, features_topic=features_topic,
                      start_ms=int(time.time() * 1000))
    producer.close()
    trainer = Trainer(cfg, stack.kafka_bootstrap, repo=repo, samples_topic=samples_topic,
                      features_topic=features_topic).start()
    try:
        _learn_until(trainer, len(samples))
        assert trainer.cache is not None and len(trainer.cache) <= 2 and trainer.cache.stats["refetched"] > 0
    finally:
        trainer.close()
    assert trainer.counts["learned"] == len(samples) and trainer.counts["no_features"] == 0
