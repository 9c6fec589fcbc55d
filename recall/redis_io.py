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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import redis
import redis.asyncio as aredis

from cascade.config import RedisConfig

_log = logging.getLogger("cascade.recall.redis_io")

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


KEEP_WARM_S = 30.0  # a cached head looked up within this long is kept fresh in the background
HeadFetch = Callable[[list[str], int, int], Awaitable[list[tuple[np.ndarray, np.ndarray, Any]]]]


@dataclass
class _Head:
    at: float  # time.monotonic() of the read
    size: int  # entries asked for
    at_ms: int  # request time the head was read for
    items: np.ndarray
    scores: np.ndarray
    extra: Any
    wanted_at: float = 0.0  # last request that looked it up (monotonic)
    want_size: int = 0  # largest fetch size asked for since the read (the next refresh reads that many)
    want_ms: int = 0  # request time of the latest lookup


class HeadCache:
    """Heads of sorted sets (members, scores) shared by every request of the popular and fresh channels.

    The global and per-category heads are the same for every user and change
    slowly (trending half-lives are hours; fresh windows are days), so a
    request should not pay a Redis round trip for them. Measured on the 1M-item
    benchmark's valkey: a packed read costs it ~0.45 ms per 256-entry head and
    ~1 ms per 512-entry one (formatting the scores), 5.3 ms for 4 heads of 512;
    with the heads read on demand (once per ``ttl_s`` each, by whichever
    request found them expired: about half of all requests with 50 categories)
    the popular and fresh channels' 3 ms budgets timed out on 11-14 % of calls.

    A head is served while it is younger than ``ttl_s``, holds at least k
    entries (or the whole set; :meth:`heads` serves a shorter one too, see
    there), and -- when the caller's head depends on the request time, as
    fresh windows do -- was read for a request time within ``ttl_s`` of this
    one. With a `fetch` (``fetch(keys, size, now_ms) ->
    [(items, scores, extra)]``), :meth:`heads` reads what is missing in one
    call and a background task (on the event loop of the first request) reads
    again each head looked up in the last ``keep_s`` once it is ``ttl_s / 2`` old
    (:data:`KEEP_WARM_S`, at least ``4 * ttl_s``), one key per call (a refresh
    never stalls valkey for more than one head), for the largest size and the
    latest request time looked up since the last read. So in steady state no request reads Redis
    for its heads -- a category asked for once a second stays as warm as the
    global head -- and no head served is older than ``ttl_s``; a head nobody
    has asked for in ``keep_s`` is no longer refreshed and expires.
    """

    def __init__(self, ttl_s: float, fetch: HeadFetch | None = None) -> None:
        self.ttl_s = float(ttl_s)
        self.refresh_s = self.ttl_s / 2.0
        self.keep_s = max(KEEP_WARM_S, 4 * self.ttl_s)
        self._fetch = fetch
        self._heads: dict[str, _Head] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = {"hits": 0, "misses": 0, "short": 0, "refreshed": 0, "refresh_errors": 0}

    @staticmethod
    def fetch_size(k: int) -> int:
        """Heads are fetched larger than asked (1.25 k rounded up to a multiple of 64) so nearby k's reuse them.

        The headroom keeps a channel's usual asks on one size (popular asks ~245-300 on the benchmark: all
        384); a multiple of 64 rather than a power of two keeps the head -- and valkey's cost of reading it,
        which grows with its length -- close to what is asked."""
        return max(64, -(-(k + k // 4) // 64) * 64)

    def get(self, key: str, k: int, now_ms: int | None = None, *,
            short_ok: bool = False) -> tuple[np.ndarray, np.ndarray, Any] | None:
        """The cached head of `key`, or None; `now_ms` None skips the request-time check (heads not tied to it).

        `short_ok`: a fresh head read for fewer than k entries is served as it is (and the next refresh reads
        the larger size) instead of counting as a miss."""
        if self.ttl_s <= 0:
            return None
        head = self._heads.get(key)
        if head is None:
            return None
        t = time.monotonic()
        head.wanted_at = t
        head.want_size = max(head.want_size, self.fetch_size(k))
        if now_ms is not None:
            head.want_ms = now_ms
        if t - head.at > self.ttl_s or (now_ms is not None and abs(now_ms - head.at_ms) > self.ttl_s * 1000.0):
            return None
        if head.size < k and head.items.size >= head.size:  # the set may hold more than was fetched
            if not short_ok:
                return None
            self.stats["short"] += 1
        return head.items, head.scores, head.extra

    def put(self, key: str, k: int, now_ms: int, items: np.ndarray, scores: np.ndarray, extra: Any = None) -> None:
        if self.ttl_s > 0:
            self._heads[key] = _Head(time.monotonic(), k, now_ms, items, scores, extra,
                                     wanted_at=time.monotonic(), want_ms=now_ms)

    async def heads(self, keys: Sequence[str], k: int, now_ms: int, *, timed: bool = False,
                    short_ok: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray, Any]]:
        """``{key: (items, scores, extra)}``: cached heads, the others read now with `fetch` (needs one).

        `timed`: the heads depend on the request time (``get``'s `now_ms` check). `short_ok` (default): a
        fresh head shorter than k is served as it is -- an unusually large ask (the merge's second round
        after a late channel asks for ~3x the usual k) gets fewer items rather than a read of ~1,000-entry
        heads, which costs valkey ~2 ms each and stalls every other request's reads behind it; the next
        refresh reads the larger size, so repeated large asks are served in full from then on.
        Starts the background refresh on the running loop when it is not running.
        """
        out: dict[str, tuple[np.ndarray, np.ndarray, Any]] = {}
        missing: list[str] = []
        for key in keys:
            head = self.get(key, k, now_ms if timed else None, short_ok=short_ok)
            if head is None:
                missing.append(key)
            else:
                out[key] = head
        self.stats["hits"] += len(out)
        if missing:
            assert self._fetch is not None, "HeadCache.heads needs a fetch"
            self.stats["misses"] += len(missing)
            size = self.fetch_size(k)
            for key, (items, scores, extra) in zip(missing, await self._fetch(missing, size, now_ms)):
                self.put(key, size, now_ms, items, scores, extra)
                out[key] = (items, scores, extra)
        if self.ttl_s > 0 and self._fetch is not None:
            self._ensure_refreshing()
        return out

    def _ensure_refreshing(self) -> None:
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="recall-head-refresh")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s / 4.0)
            await self.refresh(self.refresh_s)

    async def refresh(self, older_than_s: float = 0.0) -> int:
        """Read again (one key per call, oldest first) every head looked up in the last ``keep_s`` that is at least
        `older_than_s` old; returns how many were read."""
        assert self._fetch is not None
        done = 0
        now = time.monotonic()
        due = sorted((head.at, key) for key, head in self._heads.items()
                     if now - head.wanted_at <= self.keep_s and now - head.at >= older_than_s)
        for _, key in due:
            head = self._heads[key]
            size = head.want_size or head.size  # what was asked for since the last read: a burst of large asks passes
            try:
                [(items, scores, extra)] = await self._fetch([key], size, head.want_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the head expires and the next request reads it (and fails there)
                self.stats["refresh_errors"] += 1
                _log.debug("recall: refreshing %s failed: %s", key, exc)
                continue
            self._heads[key] = _Head(time.monotonic(), size, head.want_ms, items, scores, extra,
                                     wanted_at=head.wanted_at, want_ms=head.want_ms)
            done += 1
        self.stats["refreshed"] += done
        return done

    def close(self) -> None:
        """Stop the background refresh (the server's stop; a later request starts it again)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


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
