"""The stack's real servers: a Redis round trip, Kafka through a consumer group, clean shutdown."""

from __future__ import annotations

import time

from kafka import TopicPartition
from kafka.admin import NewTopic

from cascade.config import Config
from stack import Stack
from stack.clients import kafka_consumer, kafka_producer
from stack.process import pid_alive


def test_redis_round_trip(redis, unique_prefix: str) -> None:
    key = f"{unique_prefix}:greeting"
    assert redis.set(key, b"hello", ex=60)
    assert redis.get(key) == b"hello"
    pipe = redis.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{unique_prefix}:{i}", i)
    pipe.execute()
    assert redis.mget([f"{unique_prefix}:{i}" for i in range(100)]) == [str(i).encode() for i in range(100)]


def test_configured_topics_exist(stack: Stack, config: Config) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        assert set(config.kafka.topics) <= set(admin.list_topics())
    finally:
        admin.close()


def _consume(consumer, want: int, timeout_s: float = 30.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend(r.value for r in records)
    return got


def test_kafka_group_commits_survive_consumer_restart(stack: Stack, config: Config, unique_prefix: str) -> None:
    from kafka import KafkaAdminClient

    topic, group = f"{unique_prefix}-events", f"{unique_prefix}-group"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()

    producer = kafka_producer(stack.kafka_bootstrap, config.kafka)
    for i in range(10):
        producer.send(topic, key=str(i % 2).encode(), value=f"m{i}".encode())
    producer.flush()

    first = kafka_consumer(stack.kafka_bootstrap, config.kafka, group, topic)
    batch = _consume(first, 10)
    assert sorted(batch) == sorted(f"m{i}".encode() for i in range(10))
    first.commit()
    committed = {p: first.committed(TopicPartition(topic, p)) for p in (0, 1)}
    assert sum(committed.values()) == 10
    first.close()

    for i in range(10, 15):
        producer.send(topic, key=str(i % 2).encode(), value=f"m{i}".encode())
    producer.flush()
    producer.close()

    # A new member of the same group resumes from the committed offsets: only the 5 new messages.
    second = kafka_consumer(stack.kafka_bootstrap, config.kafka, group, topic)
    rest = _consume(second, 5)
    assert sorted(rest) == sorted(f"m{i}".encode() for i in range(10, 15))
    assert not _consume(second, 1, timeout_s=1.5)
    second.close()


def test_stack_stop_leaves_no_process(config: Config) -> None:
    with Stack(config) as own:
        pids = own.pids
        assert len(pids) == (0 if config.redis.url else 1) + (0 if config.kafka.bootstrap_servers else 1)
        assert all(pid_alive(p) for p in pids)
        run_dir = own.run_dir
    assert not any(pid_alive(p) for p in pids)
    assert not run_dir.exists()


def test_two_stacks_never_collide(config: Config) -> None:
    with Stack(config, kafka=False) as a, Stack(config, kafka=False) as b:
        if not config.redis.url:
            assert a.redis_url != b.redis_url
            assert a.run_dir != b.run_dir
