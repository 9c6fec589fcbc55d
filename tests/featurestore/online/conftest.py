"""Online-store fixtures: every read/write test runs on the single server and on a 3-master cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_py

from cascade.config import Config
from featurestore.online import OnlineStore
from stack.redis_cluster import EmbeddedRedisCluster


@pytest.fixture(scope="module")
def redis_cluster(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(tmp_path_factory.mktemp("cluster"), masters=3,
                              startup_timeout_s=config.redis.startup_timeout_s + 10) as cluster:
        yield cluster


@pytest.fixture(params=["single", "cluster"])
def client(request: pytest.FixtureRequest, config: Config) -> Iterator[redis_py.Redis | redis_py.RedisCluster]:
    if request.param == "single":
        yield request.getfixturevalue("redis")
        return
    cluster: EmbeddedRedisCluster = request.getfixturevalue("redis_cluster")
    c = redis_py.RedisCluster.from_url(cluster.url, socket_timeout=config.redis.socket_timeout_s)
    yield c
    c.close()


@pytest.fixture()
def store(client, unique_prefix: str) -> OnlineStore:
    return OnlineStore(client, unique_prefix)
