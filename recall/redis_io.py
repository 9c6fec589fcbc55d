"""Redis plumbing shared by the recall channels and their offline writers.

Key layout (``ns`` is the project namespace, ``config.features.project``; tests
use a unique prefix)::

    ns:i2i:current                   live co-visitation version (a string)
    ns:i2i:versions                  list of published versions, newest first
    ns:i2i:<version>:<item>          packed neighbours of one item (see recall.covisit)
    {ns:pop}:meta / :g / :c:<cat>    trending state (see recall.trending)
    {ns:fresh}:g / :c:<cat>          fresh items (see recall.fresh)

The co-visitation rows carry no hash tag, so in a Redis Cluster they spread
over every slot (reads use MGET per slot); the trending and fresh keys of one
namespace share a hash tag so their multi-key scripts and transactions stay in
one slot.

Writers (offline builds, the stream updater) use blocking redis-py clients
(:func:`stack.clients.redis_client`); the channels read with ``redis.asyncio``
from the serving event loop (:func:`async_redis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from cascade.config import RedisConfig

AsyncRedis = aredis.Redis | aredis.RedisCluster


def async_redis(url: str, config: RedisConfig, cluster: bool | None = None) -> AsyncRedis:
    """An asyncio client for `url` with the configured timeouts (a cluster client in cluster mode).

    Create it in the event loop that uses it (its connections belong to that loop).
    """
    common: dict[str, Any] = {
        "socket_timeout": config.socket_timeout_s,
        "socket_connect_timeout": config.socket_timeout_s,
    }
    if config.cluster if cluster is None else cluster:
        return aredis.RedisCluster.from_url(url, **common)
    return aredis.Redis.from_url(url, max_connections=config.max_connections, **common)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (redis.RedisCluster, aredis.RedisCluster))


async def amget(client: AsyncRedis, keys: Sequence[str]) -> list[bytes | None]:
    """MGET that also works across cluster slots (one MGET per slot there)."""
    if not keys:
        return []
    if isinstance(client, aredis.RedisCluster):
        return await client.mget_nonatomic(list(keys))
    return await client.mget(list(keys))


def tag(namespace: str, part: str) -> str:
    """``{ns:part}``: the hash-tagged key prefix of one recall structure."""
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"invalid key namespace {namespace!r}")
    return "{" + f"{namespace}:{part}" + "}"


def decode_str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["AsyncRedis", "amget", "async_redis", "decode_str", "is_cluster", "tag"]
