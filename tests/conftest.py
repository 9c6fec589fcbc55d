"""Session-wide real servers: the very stack users get (embedded or from REDIS_URL / KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from cascade.config import Config, get_config
from stack import Stack
from stack.clients import RedisClient, redis_client


@pytest.fixture(scope="session")
def config() -> Config:
    return get_config()


@pytest.fixture(scope="session")
def stack(config: Config) -> Iterator[Stack]:
    with Stack(config) as running:
        yield running


@pytest.fixture()
def redis(stack: Stack, config: Config) -> Iterator[RedisClient]:
    """A client on the session's server; keys a test writes should carry `unique_prefix`."""
    assert stack.redis_url is not None
    client = redis_client(stack.redis_url, config.redis)
    yield client
    client.close()


@pytest.fixture()
def unique_prefix() -> str:
    """A per-test namespace for keys, topics and groups, so tests never see each other's data."""
    return f"t{uuid.uuid4().hex[:10]}"
