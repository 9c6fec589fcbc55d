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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
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


# Reads of the popular and fresh channels: the top entries of several sorted sets (one slot: same hash tag),
# each packed server-side as little-endian (member, score) float64 pairs, so the client decodes every set with
# one np.frombuffer instead of parsing thousands of reply elements in Python (ids are exact below 2^53).
#   TOP_PACKED     KEYS: head hash (or "" when none), zsets...  ARGV: head field, k
#   RECENT_PACKED  KEYS: zsets...  ARGV: max score, min score, k
TOP_PACKED = r"""
local out = {}
local first = 1
if ARGV[1] ~= '' then
  out[1] = redis.call('HGET', KEYS[1], ARGV[1]) or ''
  first = 2
end
local k = tonumber(ARGV[2])
for i = first, #KEYS do
  local r = redis.call('ZREVRANGE', KEYS[i], 0, k - 1, 'WITHSCORES')
  local parts = {}
  for j = 1, #r, 2 do parts[#parts + 1] = struct.pack('<dd', tonumber(r[j]), tonumber(r[j + 1])) end
  out[#out + 1] = table.concat(parts)
end
return out
"""

RECENT_PACKED = r"""
local out = {}
for i = 1, #KEYS do
  local r = redis.call('ZREVRANGEBYSCORE', KEYS[i], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
  local parts = {}
  for j = 1, #r, 2 do parts[#parts + 1] = struct.pack('<dd', tonumber(r[j]), tonumber(r[j + 1])) end
  out[#out + 1] = table.concat(parts)
end
return out
"""


def unpack_pairs(buf: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    """(members int64, scores float64) of one set packed by TOP_PACKED / RECENT_PACKED."""
    if not buf:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    pairs = np.frombuffer(buf, dtype="<f8").reshape(-1, 2)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].copy()


class HeadCache:
    """Recently read heads of sorted sets (members, scores), reused for ``ttl_s`` by the popular and fresh channels.

    The global and per-category heads are the same for every user and change
    slowly (trending half-lives are hours; fresh windows are days), so one
    read per set per ``ttl_s`` replaces one per request. A head is reused
    while it is younger than ``ttl_s``, holds at least k entries (or the whole
    set), and -- when the caller's head depends on the request time, as fresh
    windows do -- was fetched for a request time within ``ttl_s`` of this one.
    """

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = float(ttl_s)
        self._heads: dict[str, tuple[float, int, int, np.ndarray, np.ndarray, Any]] = {}

    @staticmethod
    def fetch_size(k: int) -> int:
        """Heads are fetched a little larger than asked (a power of two >= 64) so nearby k's reuse them."""
        return max(64, 1 << (max(k, 1) - 1).bit_length())

    def get(self, key: str, k: int, now_ms: int | None = None) -> tuple[np.ndarray, np.ndarray, Any] | None:
        """The cached head of `key`, or None; `now_ms` None skips the request-time check (heads not tied to it)."""
        if self.ttl_s <= 0:
            return None
        head = self._heads.get(key)
        if head is None:
            return None
        at, fetched_k, at_ms, items, scores, extra = head
        if time.monotonic() - at > self.ttl_s or (now_ms is not None and abs(now_ms - at_ms) > self.ttl_s * 1000.0):
            return None
        if fetched_k < k and items.size >= fetched_k:  # the set may hold more than was fetched
            return None
        return items, scores, extra

    def put(self, key: str, k: int, now_ms: int, items: np.ndarray, scores: np.ndarray, extra: Any = None) -> None:
        if self.ttl_s > 0:
            self._heads[key] = (time.monotonic(), k, now_ms, items, scores, extra)


def tag(namespace: str, part: str) -> str:
    """``{ns:part}``: the hash-tagged key prefix of one recall structure."""
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"invalid key namespace {namespace!r}")
    return "{" + f"{namespace}:{part}" + "}"


@dataclass(frozen=True)
class SortedSetKeys:
    """Keys of a global + per-category sorted-set family (popular, fresh), one hash tag per family."""

    base: str
    family: ClassVar[str] = ""

    @classmethod
    def of(cls, namespace: str) -> Self:
        return cls(tag(namespace, cls.family))

    @property
    def glob(self) -> str:
        return f"{self.base}:g"

    @property
    def cats(self) -> str:
        return f"{self.base}:cats"

    @property
    def cat_prefix(self) -> str:
        return f"{self.base}:c:"

    def cat(self, category: str) -> str:
        return f"{self.base}:c:{category}"

    @property
    def stage_prefix(self) -> str:
        return f"{self.base}:stage:"


def decode_str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["AsyncRedis", "HeadCache", "RECENT_PACKED", "TOP_PACKED", "amget", "async_redis", "decode_str", "is_cluster", "tag", "unpack_pairs"]
