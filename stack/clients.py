"""Client factories for the stack's servers, configured from one place.

Everything that talks to Redis or Kafka gets its client here, so timeouts,
group settings and cluster mode are decided once.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from cascade.config import KafkaConfig, RedisConfig

RedisClient = redis.Redis | redis.RedisCluster


def redis_client(url: str, config: RedisConfig, cluster: bool | None = None) -> RedisClient:
    """A redis-py client for `url`; a RedisCluster when configured (or asked) for cluster mode."""
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout_s,
        "socket_connect_timeout": config.socket_timeout_s,
        "max_connections": config.max_connections,
    }
    if config.cluster if cluster is None else cluster:
        return redis.RedisCluster.from_url(url, **common)
    return redis.Redis.from_url(url, **common)


def kafka_producer(bootstrap: str, config: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer that waits for the leader's ack and retries transient errors."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": config.client_id,
        "acks": 1,
        "retries": 5,
        "linger_ms": 5,
        "request_timeout_ms": config.request_timeout_ms,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def kafka_consumer(bootstrap: str, config: KafkaConfig, group_id: str | None, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer with short group timeouts (slow group joins otherwise) and manual commits."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": config.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": config.session_timeout_ms,
        "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "max_poll_interval_ms": config.max_poll_interval_ms,
        "request_timeout_ms": max(config.request_timeout_ms, config.session_timeout_ms + 1000),
    }
    options.update(overrides)
    return KafkaConsumer(*topics, **options)


def ensure_topics(bootstrap: str, config: KafkaConfig, timeout_s: float = 20.0) -> list[str]:
    """Create every configured topic that does not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{config.client_id}-admin",
                             request_timeout_ms=config.request_timeout_ms)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name=name, num_partitions=t.partitions, replication_factor=t.replication_factor)
            for name, t in config.topics.items()
            if name not in existing
        ]
        created: list[str] = []
        for topic in wanted:
            try:
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout_s
        while created and not set(created) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise KafkaError(f"topics {created} not visible after {timeout_s}s")
            time.sleep(0.1)
        return created
    finally:
        admin.close()
