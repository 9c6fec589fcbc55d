"""A short-lived in-process cache of stored rows, for entities every request shares (items, not users).

A ranking request reads ~1,000 candidate items beside one user; consecutive requests (of different
users) read mostly the same items. With a cache, a read sends Redis only the keys it has not seen
in the last `ttl_s` seconds and takes the others' stored bytes from memory; decoding (and the
window arithmetic as of the read's `now`) is unchanged. The price is freshness: a cached item's
features may be up to `ttl_s` old -- a write or streamed event younger than that is not seen yet.
That is the trade Feast's and Merlin's serving caches make; it is off unless configured
(``features.online_cache_ttl_ms``, ``features.online_cache_entities``).

Expiry is by generation, so a lookup of 1,000 entities is a C-speed ``map`` over one dict: entries
go into the current generation; once it is ``ttl_s / 2`` old it becomes the previous one (served
until ``ttl_s`` after it began, then dropped) and a new one begins. No entry is served more than
`ttl_s` after Redis returned it, and nothing is ever refreshed in place (no entry outlives its
generation by being read). At most `max_entries` per generation and key family: beyond that new
rows are not cached (the read still gets them).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter

MISS = object()  # a lookup's answer for an entity not in the cache (None is a cached "no row")
LOOKUPS = Counter("cascade_feature_cache_lookups_total",
                  "Entity rows looked up in the online store's in-process row cache, by result (hit or miss).", ["result"])
_HITS, _MISSES = LOOKUPS.labels("hit"), LOOKUPS.labels("miss")


class _Family:
    __slots__ = ("start", "current", "previous", "previous_start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.current: dict[Any, bytes | None] = {}
        self.previous: dict[Any, bytes | None] = {}
        self.previous_start = float("-inf")


class RowCache:
    """Stored values of some keys, at most `ttl_s` old; one key family (view and key suffix) per dict."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000, clock: Any = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError("a row cache needs a positive ttl")
        self.ttl_s = float(ttl_s)
        self.max_entries = int(max_entries)
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()  # only for creating and rotating generations

    def _family(self, name: str, now: float) -> _Family:
        fam = self._families.get(name)
        if fam is None or now - fam.start >= self.ttl_s / 2:
            with self._lock:
                fam = self._families.get(name)
                if fam is None:
                    fam = self._families[name] = _Family(now)
                elif now - fam.start >= self.ttl_s / 2:
                    fresh = _Family(now)
                    if now - fam.start < self.ttl_s:  # the current generation may still serve for a while
                        fresh.previous, fresh.previous_start = fam.current, fam.start
                    fam = self._families[name] = fresh
        return fam

    def lookup(self, family: str, entities: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """(per entity: its stored bytes, None for "no row", or `MISS`; the positions of the misses)."""
        now = self.clock()
        fam = self._family(family, now)
        got = list(map(fam.current.get, entities, itertools.repeat(MISS, len(entities))))
        missing = [i for i, v in enumerate(got) if v is MISS]
        if missing and fam.previous and now - fam.previous_start < self.ttl_s:
            older = list(map(fam.previous.get, [entities[i] for i in missing], itertools.repeat(MISS, len(missing))))
            still = []
            for i, v in zip(missing, older):
                if v is MISS:
                    still.append(i)
                else:
                    got[i] = v
            missing = still
        self.hits += len(entities) - len(missing)
        self.misses += len(missing)
        _HITS.inc(len(entities) - len(missing))
        _MISSES.inc(len(missing))
        return got, missing

    def store(self, family: str, entities: Sequence[Any], values: Sequence[bytes | None]) -> None:
        """Remember what Redis just returned for these entities (until their generation expires)."""
        fam = self._family(family, self.clock())
        room = self.max_entries - len(fam.current)
        if room <= 0:
            return
        if len(entities) > room:
            entities, values = entities[:room], values[:room]
        fam.current.update(zip(entities, values))

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def clear(self) -> None:
        with self._lock:
            self._families.clear()


__all__ = ["MISS", "RowCache"]
