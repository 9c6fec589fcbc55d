"""The embedded 3-master cluster: formed without valkey-cli, usable by redis-py's cluster client, stopped cleanly."""

from __future__ import annotations

import redis

from cascade.config import Config
from stack.clients import redis_client
from stack.process import pid_alive
from stack.redis_cluster import SLOTS, EmbeddedRedisCluster


def test_cluster_forms_serves_and_stops(tmp_path, config: Config) -> None:
    cluster = EmbeddedRedisCluster(tmp_path, masters=3).start()
    try:
        assert len(cluster.pids) == 3 and len(set(cluster.ports)) == 3
        for url in cluster.urls:
            node = redis.Redis.from_url(url, decode_responses=True)
            info = node.execute_command("CLUSTER", "INFO")
            node.close()
            assert "cluster_state:ok" in info and f"cluster_slots_ok:{SLOTS}" in info and "cluster_known_nodes:3" in info

        client = redis_client(cluster.url, config.redis, cluster=True)
        assert isinstance(client, redis.RedisCluster)
        primaries = client.get_primaries()
        assert len(primaries) == 3
        slots = client.cluster_slots()
        assert sum(end - start + 1 for (start, end) in slots) == SLOTS

        keys = [f"k{i}" for i in range(300)]
        for k in keys:
            client.set(k, k.upper())
        assert client.mget_nonatomic(keys) == [k.upper().encode() for k in keys]
        # keys really are spread: every node holds some of them
        per_node = [client.dbsize(target_nodes=node) for node in primaries]
        assert all(n > 0 for n in per_node) and sum(per_node) == 300
        client.close()
    finally:
        cluster.stop()
    assert not any(pid_alive(p) for p in cluster.pids)
