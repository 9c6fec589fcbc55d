"""Best-effort de-duplication of event_ids in Redis, arranged so that it can never lose an event.

One key per event_id, ``<events.key_prefix>:eid:<event_id>``, in one of two states:

* ``p:<token>``: *claimed* by the LogEvents call holding ``token``, which is
  publishing the event right now; expires after ``events.dedup_pending_ttl_s``;
* ``d``: *done*: Kafka acked the event; kept for ``events.dedup_ttl_s``.

A call claims its event_ids (pipelined ``SET NX PX``, one round trip), publishes
what it claimed, and only after Kafka's ack marks them done (one more round
trip). An event_id already *done* is a duplicate and is not published again. An
event_id *claimed by another call* makes this call UNAVAILABLE (the client
retries): the other call may still fail, so calling the event a duplicate could
lose it.

Crashes and failures therefore only ever cause duplicates, never losses:

* a failed publish releases its claims, so the retry publishes;
* a caller that gives up (deadline, cancel) does not stop the publish: it runs
  to its end and marks done or releases, as if the caller had waited;
* a crash after the claim and before the ack leaves a claim that expires after
  ``dedup_pending_ttl_s``; retries are UNAVAILABLE until then, then publish;
* a crash after the ack and before the mark leaves the claim too: the retry
  publishes again (a duplicate on the topic, with the same event_id, which
  consumers can drop);
* Redis down or slow (past ``events.dedup_timeout_s``): the batch is published
  without de-duplication (counted in ``cascade_events_dedup_errors_total``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from cascade.config import Config

_log = logging.getLogger("cascade.events.dedup")

DONE = b"d"
CLAIM_PREFIX = b"p:"

DEDUP_ERRORS = Counter(
    "cascade_events_dedup_errors_total",
    "De-duplication round trips to Redis that failed or timed out (the batch was published without it), by step.",
    ["step"],
)

try:
    import redis.exceptions as _rexc

    _REDIS_ERRORS: tuple[type[BaseException], ...] = (_rexc.RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # pragma: no cover
    _REDIS_ERRORS = (OSError, asyncio.TimeoutError)


def async_redis_client(url: str, config: Config) -> Any:
    """A ``redis.asyncio`` client (a RedisCluster when configured); create it in the loop that uses it."""
    import redis.asyncio as aredis

    common: dict[str, Any] = {
        "socket_timeout": config.redis.socket_timeout_s,
        "socket_connect_timeout": config.redis.socket_timeout_s,
    }
    if config.redis.cluster:
        return aredis.RedisCluster.from_url(url, **common)
    return aredis.Redis.from_url(url, max_connections=config.redis.max_connections, **common)


@dataclass
class Claim:
    """Outcome of :meth:`Dedup.claim` for a batch, by position in the batch."""

    owned: list[int] = field(default_factory=list)  # claimed by this call: publish these
    done: list[int] = field(default_factory=list)  # acked before: duplicates
    busy: list[int] = field(default_factory=list)  # claimed by another call in flight
    degraded: bool = False  # Redis failed: everything is "owned", nothing was claimed


# One command per batch on a single Redis (a cluster spreads the keys over slots: pipelines there).
# Codes per key: 0 claimed by this call, 1 done (a duplicate), 2 claimed by another call.
_CLAIM_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 0
  elseif redis.call('GET', key) == ARGV[3] then
    out[i] = 1
  else
    out[i] = 2
  end
end
return out
"""
_DONE_LUA = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""
_OWNED, _DONE, _BUSY = 0, 1, 2


class Dedup:
    """The claim / mark-done / release protocol of the module docstring over one Redis client.

    On a single Redis each step is one command (a Lua script over the batch's keys,
    or one DEL): pipelining 50 SETs through ``redis.asyncio`` cost more CPU than
    the rest of a LogEvents call. On a Redis Cluster each step is one pipeline.
    """

    def __init__(self, redis: Any, config: Config, prefix: str | None = None) -> None:
        ev = config.events
        self.redis = redis
        self.prefix = f"{ev.key_prefix if prefix is None else prefix}:eid:"
        self._pending_ms = max(1, int(ev.dedup_pending_ttl_s * 1000))
        self._done_ms = max(1, int(ev.dedup_ttl_s * 1000))
        self._timeout_s = ev.dedup_timeout_s
        self.cluster = _is_cluster(redis)
        if not self.cluster:
            self._claim_script = redis.register_script(_CLAIM_LUA)
            self._done_script = redis.register_script(_DONE_LUA)

    def key(self, event_id: str) -> str:
        return self.prefix + event_id

    async def claim(self, event_ids: Sequence[str], token: str) -> Claim:
        """Claim every id not yet known (SET NX PX); classify the others as done or busy."""
        keys = [self.key(e) for e in event_ids]
        if not keys:
            return Claim()
        claim_value = CLAIM_PREFIX + token.encode()
        try:
            async with asyncio.timeout(self._timeout_s):
                if self.cluster:
                    codes = await self._claim_pipelined(keys, claim_value)
                else:
                    codes = await self._claim_script(keys=keys, args=[claim_value, self._pending_ms, DONE])
        except _REDIS_ERRORS as exc:
            DEDUP_ERRORS.labels("claim").inc()
            _log.warning("event de-duplication skipped: Redis claim failed: %r", exc)
            return Claim(owned=list(range(len(keys))), degraded=True)
        out = Claim()
        lists = (out.owned, out.done, out.busy)
        for i, code in enumerate(codes):
            lists[int(code)].append(i)
        return out

    async def _claim_pipelined(self, keys: list[str], claim_value: bytes) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, claim_value, nx=True, px=self._pending_ms)
        codes = [_OWNED if ok else _BUSY for ok in await pipe.execute()]
        taken = [i for i, code in enumerate(codes) if code != _OWNED]
        if taken:  # only when some were known: read who holds them
            pipe = self.redis.pipeline(transaction=False)
            for i in taken:
                pipe.get(keys[i])
            for i, value in zip(taken, await pipe.execute()):
                # None: the other claim expired in between; busy as well (the retry will claim it).
                codes[i] = _DONE if value == DONE else _BUSY
        return codes

    async def mark_done(self, event_ids: Sequence[str]) -> bool:
        """After Kafka's ack: remember the ids for ``dedup_ttl_s``. False if Redis failed (retries then duplicate)."""
        keys = [self.key(e) for e in event_ids]
        if not keys:
            return True
        if self.cluster:
            return await self._run("mark", lambda: self._pipelined(keys, lambda pipe, key: pipe.set(key, DONE, px=self._done_ms)))
        return await self._run("mark", lambda: self._done_script(keys=keys, args=[DONE, self._done_ms]))

    async def release(self, event_ids: Sequence[str]) -> bool:
        """After a failed publish: drop this call's claims so the client's retry can publish."""
        keys = [self.key(e) for e in event_ids]
        if not keys:
            return True
        if self.cluster:
            return await self._run("release", lambda: self._pipelined(keys, lambda pipe, key: pipe.delete(key)))
        return await self._run("release", lambda: self.redis.delete(*keys))

    async def _pipelined(self, keys: list[str], op: Any) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            op(pipe, key)
        await pipe.execute()

    async def _run(self, step: str, command: Any) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await command()
            return True
        except _REDIS_ERRORS as exc:
            DEDUP_ERRORS.labels(step).inc()
            _log.warning("event de-duplication %s failed: %r", step, exc)
            return False

    async def aclose(self) -> None:
        close = getattr(self.redis, "aclose", None) or self.redis.close
        await close()


def _is_cluster(client: Any) -> bool:
    import redis.asyncio as aredis

    return isinstance(client, aredis.RedisCluster)


__all__ = ["Claim", "Dedup", "async_redis_client"]
