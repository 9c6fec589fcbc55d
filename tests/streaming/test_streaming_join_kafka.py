"""The joiner against the real broker and Redis: joins, restarts from the checkpoint, overflow, crash recovery, fencing."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from kafka.errors import KafkaError
from prometheus_client import REGISTRY

from cascade.config import Config, TopicConfig
from proto.cascade.v1.events_pb2 import Event
from proto.cascade.v1.records_pb2 import Impression, LabeledSample
from stack.clients import ensure_topics, kafka_producer
from streaming.join_checkpoint import CheckpointFenced
from streaming.joiner import Joiner, JoinerTopics
from streaming.sample_writer import OutputTail

T0 = 1_700_000_000_000
W_S = 10.0


@pytest.fixture()
def setup(stack, config: Config, unique_prefix: str):  # noqa: ANN001, ANN201
    topics = JoinerTopics(f"{unique_prefix}-imp", f"{unique_prefix}-ev", f"{unique_prefix}-samples")
    ensure_topics(stack.kafka_bootstrap, config.kafka.model_copy(update={"topics": {
        t: TopicConfig(partitions=2) for t in (topics.impressions, topics.events, topics.samples)}}))
    cfg = config.model_copy(update={"streaming": config.streaming.model_copy(update={
        "attribution_window_s": W_S, "joiner_allowed_lateness_s": 0.0, "joiner_checkpoint_interval_s": 0.2})})
    return cfg, topics


def produce(bootstrap: str, config: Config, topic: str, messages: Iterable[Impression | Event]) -> None:
    producer = kafka_producer(bootstrap, config.kafka)
    try:
        for m in messages:
            producer.send(topic, key=m.user_id.encode(), value=m.SerializeToString()).get(timeout=30)
    finally:
        producer.close()


def samples(bootstrap: str, config: Config, topic: str) -> list[LabeledSample]:
    tail = OutputTail(bootstrap, config.kafka, topic)
    try:
        return [LabeledSample.FromString(v) for v in tail.read({})]
    finally:
        tail.close()


def labels(records: list[LabeledSample]) -> dict[str, int]:
    ids = [s.sample_id for s in records]
    assert len(ids) == len(set(ids)), f"duplicate sample ids in the topic: {sorted(ids)}"
    return {s.sample_id: int(s.label) for s in records}


def imp(req: str, item: str, ts: int, user: str = "u1") -> Impression:
    return Impression(request_id=req, user_id=user, item_id=item, timestamp_ms=ts, position=1, served_feature_id=f"sf-{req}")


def click(req: str, item: str, ts: int, event_id: str, user: str = "u1") -> Event:
    return Event(event_id=event_id, type=1, user_id=user, item_id=item, request_id=req, timestamp_ms=ts,
                 received_at_ms=ts)


def run(cfg: Config, redis, bootstrap: str, topics: JoinerTopics, group: str, **kw):  # noqa: ANN001, ANN201
    with Joiner(cfg, redis, bootstrap, topics=topics, group=group, feature_set=("fs", 2), log_interval_s=60) as j:
        return j.run(timeout_s if (timeout_s := kw.pop("seconds", None)) else None, **kw)


@pytest.mark.parametrize("compact_mb", [64.0, 1e-6], ids=["deltas", "snapshot-every-checkpoint"])
def test_join_restart_and_drain(setup, stack, redis, unique_prefix: str, compact_mb: float) -> None:  # noqa: ANN001
    cfg, topics = setup
    cfg = cfg.model_copy(update={"streaming": cfg.streaming.model_copy(update={"joiner_compact_min_mb": compact_mb})})
    bs = stack.kafka_bootstrap
    group = f"{unique_prefix}-join"
    # Phase 1: A clicked, B not, D clicked twice (one click re-delivered), C's click before its impression,
    # an orphan click, an event without request_id.
    produce(bs, cfg, topics.impressions, [imp("r1", "a", T0), imp("r1", "b", T0, user="u2"), imp("r3", "d", T0 + 200)])
    produce(bs, cfg, topics.events, [
        click("r1", "a", T0 + 1000, "e-a"), click("r2", "c", T0 + 150, "e-c"),
        click("r3", "d", T0 + 300, "e-d1"), click("r3", "d", T0 + 300, "e-d1"), click("r3", "d", T0 + 400, "e-d2"),
        click("r9", "z", T0 + 300, "e-orphan"),
        Event(event_id="e-deeplink", type=1, user_id="u1", item_id="a", timestamp_ms=T0 + 10, received_at_ms=T0 + 10),
    ])
    positives_before = REGISTRY.get_sample_value("cascade_joiner_samples_out_total", {"label": "1"}) or 0.0
    first = run(cfg, redis, bs, topics, group, until_idle=True)
    assert REGISTRY.get_sample_value("cascade_joiner_samples_out_total", {"label": "1"}) == positives_before + 2
    assert REGISTRY.get_sample_value("cascade_joiner_pending", {"kind": "open"}) == 3
    assert labels(samples(bs, cfg, topics.samples)) == {"r1:a": 1, "r3:d": 1}
    c = first.counts
    assert c.duplicate_clicks == 2 and c.no_request_id == 1 and c.orphan_clicks == 0
    assert first.open == 3 and first.checkpoints >= 1  # B open, C's and the orphan's clicks waiting
    # Phase 2, a new process: C's impression, then one far enough ahead that the watermark closes B's window.
    produce(bs, cfg, topics.impressions, [imp("r2", "c", T0 + 100), imp("r8", "p", T0 + 60_000)])
    second = run(cfg, redis, bs, topics, group, until_idle=True)
    out = samples(bs, cfg, topics.samples)
    assert labels(out) == {"r1:a": 1, "r3:d": 1, "r2:c": 1, "r1:b": 0}
    assert second.counts.orphan_clicks == 1 and second.counts.closed_watermark == 1 and second.open == 1
    assert second.recovered_samples == 0  # the first run stopped cleanly: nothing after its checkpoint
    neg = next(s for s in out if s.sample_id == "r1:b")
    assert neg.user_id == "u2" and neg.features.served_feature_id == "sf-r1" and neg.features.feature_set.version == 2
    pos = next(s for s in out if s.sample_id == "r2:c")
    assert list(pos.event_types) == [1] and pos.click_timestamp_ms == T0 + 150
    # Phase 3: drain closes the last open impression.
    third = run(cfg, redis, bs, topics, group, drain=True)
    assert third.counts.closed_drain == 1
    if compact_mb < 1:  # recoveries above read a snapshot (plus deltas when a checkpoint did not compact)
        assert first.compactions >= 1
    assert labels(samples(bs, cfg, topics.samples)) == {"r1:a": 1, "r3:d": 1, "r2:c": 1, "r1:b": 0, "r8:p": 0}


def test_bounded_state_overflow(setup, stack, redis, unique_prefix: str) -> None:  # noqa: ANN001
    cfg, topics = setup
    cfg = cfg.model_copy(update={"streaming": cfg.streaming.model_copy(update={"joiner_max_pending": 3})})
    bs = stack.kafka_bootstrap
    produce(bs, cfg, topics.impressions, [imp(f"r{i}", "a", T0 + i) for i in range(8)])
    stats = run(cfg, redis, bs, topics, f"{unique_prefix}-overflow", until_idle=True)
    assert stats.counts.closed_overflow == 5 and stats.open == 3
    assert labels(samples(bs, cfg, topics.samples)) == {f"r{i}:a": 0 for i in range(5)}  # the oldest closed first


def test_crash_after_output_before_checkpoint_writes_nothing_twice(setup, stack, redis, unique_prefix: str) -> None:  # noqa: ANN001
    cfg, topics = setup
    bs = stack.kafka_bootstrap
    group = f"{unique_prefix}-crash"
    n = 40
    produce(bs, cfg, topics.impressions, [imp(f"r{i}", "a", T0 + i, user=f"u{i % 5}") for i in range(n)])
    produce(bs, cfg, topics.events, [click(f"r{i}", "a", T0 + i + 5, f"e{i}", user=f"u{i % 5}") for i in range(0, n, 2)])
    crashed = Joiner(cfg, redis, bs, topics=topics, group=group, feature_set=None)
    crashed.start()  # writes the initial checkpoint
    while crashed.stats_total.records < n + n // 2:
        crashed._step()  # the positives go out at once ...
    crashed.writer.flush()  # ... and reach Kafka, but no checkpoint follows: a crash here
    crashed.close()
    assert len(samples(bs, cfg, topics.samples)) == n // 2
    stats = run(cfg, redis, bs, topics, group, drain=True)
    assert stats.recovered_samples == n // 2 and stats.counts.replayed == n // 2
    assert labels(samples(bs, cfg, topics.samples)) == {f"r{i}:a": int(i % 2 == 0) for i in range(n)}


def test_send_failure_recovers_in_process(setup, stack, redis, unique_prefix: str) -> None:  # noqa: ANN001
    cfg, topics = setup
    bs = stack.kafka_bootstrap
    produce(bs, cfg, topics.impressions, [imp(f"r{i}", "a", T0 + i) for i in range(10)])
    produce(bs, cfg, topics.events, [click(f"r{i}", "a", T0 + i + 1, f"e{i}") for i in range(0, 10, 3)])
    with Joiner(cfg, redis, bs, topics=topics, group=f"{unique_prefix}-fail", feature_set=None) as j:
        j.start()
        while j.stats_total.records < 14:
            j._step()
        j.writer._failed(KafkaError("injected: a produce request was lost"))  # as a failed send reports itself
        stats = j.run(drain=True)
    assert stats.recoveries == 1  # flush raised, the joiner rebuilt from the checkpoint and the output tail
    assert labels(samples(bs, cfg, topics.samples)) == {f"r{i}:a": int(i % 3 == 0) for i in range(10)}


def test_a_checkpoint_of_the_previous_format_loads(redis, unique_prefix: str) -> None:  # noqa: ANN001
    import json
    import struct

    from streaming.join_checkpoint import JoinCheckpoint
    from streaming.join_state import DONE, OPEN, JoinState, payload_parts

    cp = JoinCheckpoint(redis, unique_prefix, "old-format")
    epoch = cp.acquire()
    head = struct.Struct("<BqqqHHI")  # one record per entry; an open impression's key after a 2-byte length
    blob = (head.pack(DONE, T0 + 99, 1, T0 + 9, 3, 0, 0) + b"a:1"
            + head.pack(OPEN, T0 + 50, 1, T0 + 40, 3, 0, 8) + b"b:2" + b"\x02\x00u1BODY")
    cp.compact(epoch, [blob], {"watermark_ms": T0, "floor_ms": 0})
    redis.hset(cp.meta_key, "version", json.dumps("2"))
    state = JoinState(window_ms=10, positive_types=frozenset({1}), max_pending=10, max_emitted=10, retention_ms=5,
                      emit=None)
    state.load_blobs(cp.load().blobs)
    assert state.entry(b"a:1")[:4] == (DONE, T0 + 9 + 5, 1, T0 + 9)
    assert state.entry(b"b:2")[:4] == (OPEN, T0 + 50, 1, T0 + 40) and payload_parts(state.entry(b"b:2")[5]) == (b"u1", b"BODY")
    redis.hset(cp.meta_key, "version", json.dumps("1"))
    with pytest.raises(ValueError, match="reset it"):
        cp.load()


def test_a_second_joiner_fences_the_first(setup, stack, redis, unique_prefix: str) -> None:  # noqa: ANN001
    cfg, topics = setup
    bs = stack.kafka_bootstrap
    group = f"{unique_prefix}-fence"
    with Joiner(cfg, redis, bs, topics=topics, group=group, feature_set=None) as old:
        old.start()
        with Joiner(cfg, redis, bs, topics=topics, group=group, feature_set=None) as new:
            new.start()
            with pytest.raises(CheckpointFenced):
                old._checkpoint()
            new._checkpoint()
    other = JoinerTopics(topics.impressions, topics.events, f"{unique_prefix}-other")
    ensure_topics(bs, cfg.kafka.model_copy(update={"topics": {other.samples: TopicConfig(partitions=1)}}))
    with pytest.raises(ValueError, match="was written for topics"):
        with Joiner(cfg, redis, bs, topics=other, group=group, feature_set=None) as wrong:
            wrong.start()


def test_partition_subsets_share_the_work(setup, stack, redis, unique_prefix: str) -> None:  # noqa: ANN001
    cfg, topics = setup
    bs = stack.kafka_bootstrap
    n = 60
    users = [f"user{i % 13}" for i in range(n)]
    produce(bs, cfg, topics.impressions, [imp(f"r{i}", "a", T0 + i, user=users[i]) for i in range(n)])
    produce(bs, cfg, topics.events, [click(f"r{i}", "a", T0 + i + 3, f"e{i}", user=users[i]) for i in range(0, n, 4)])
    group = f"{unique_prefix}-split"
    runs = []
    for part in (0, 1):  # a joiner per partition (keyed topics: a user's clicks are in its impressions' partition)
        with Joiner(cfg, redis, bs, topics=topics, group=group, partitions=[part], feature_set=None) as j:
            runs.append(j.run(drain=True))
            assert j.group == f"{group}@{part}"
    assert all(r.counts.samples > 0 for r in runs) and sum(r.counts.samples for r in runs) == n
    assert sum(r.counts.orphan_clicks for r in runs) == 0
    assert labels(samples(bs, cfg, topics.samples)) == {f"r{i}:a": int(i % 4 == 0) for i in range(n)}
    with pytest.raises(ValueError, match="do not exist"):
        with Joiner(cfg, redis, bs, topics=topics, group=group, partitions=[7], feature_set=None) as j:
            j.start()
