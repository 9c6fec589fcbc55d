"""Applying decoded events to the online store's tiles, exactly once per Kafka record.

Why not just ``OnlineStore.add_events``: it adds every event it is given (one
non-transactional pipeline of per-entity scripts), so an event delivered twice
-- a crash between the write and the offset commit, a failed commit, a
rebalance, a replay -- is counted twice. Idempotence has to live in the same
atomic step as the tile update.

Design: **applied offsets per entity ring.** Next to each ring key
``K = {project}:{view}:{version}:{entity}`` lives a small hash
``{project}:_so:{K}`` (braces: a Redis Cluster hash tag, so it shares K's slot)
mapping ``"topic:partition"`` to the highest offset of that partition already
applied to K. One Lua script (:data:`GUARDED_ADD_EVENTS`) per (ring, partition)
reads the stored offset, drops the events at or below it, runs the store's own
``ADD_EVENTS`` tile logic on the rest, and moves the offset -- all atomically,
in one round trip per batch (pipelined). Consequences:

* a re-delivered record is skipped for every entity it touched, however the
  re-delivery is batched, and whichever consumer (or consumer group) delivers it;
* a pipeline that fails half way is simply retried: the rings it reached skip
  their events, the others apply them (a single per-partition watermark could
  not express "applied to some keys but not others");
* works on a single server and on Redis Cluster alike: nothing spans slots
  (a MULTI over a per-partition watermark plus every entity's ring would be
  single-server only);
* a zombie consumer that lost its partitions cannot double-apply either.

Cost: one small hash per (view, entity) -- a few dozen bytes next to a ring of
``ring x slot`` bytes (23 KB for a 30-day window of 1-hour tiles) -- plus an
HGET/HSET inside the script. Offsets identify records only within one topic's
life: a topic deleted and re-created restarts at offset 0, so pass a new
``offsets_namespace`` (it is appended to the field) when that happens.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from featurestore.definitions import WindowedFeatureView
from featurestore.online import scripts
from featurestore.online.layout import entity_keys
from featurestore.online.store import OnlineStore

log = logging.getLogger(__name__)

# KEYS[1]: one entity's ring key (as OnlineStore.add_events); KEYS[2]: its applied-offsets hash.
# ARGV[1]: the field ("topic:partition"); ARGV[2]: h, the number of ADD_EVENTS head values; ARGV[3]: values per
# event; ARGV[4 .. 3+h]: the ADD_EVENTS head; then per event, in increasing offset order: its offset, then its
# ADD_EVENTS values. Returns {events applied, events too late for the ring, events skipped as already applied}.
GUARDED_ADD_EVENTS = (
    "local function add_events(ARGV)\n"
    + scripts.ADD_EVENTS
    + r"""
end
local field = ARGV[1]
local h = tonumber(ARGV[2])
local stride = tonumber(ARGV[3])
local top = tonumber(redis.call('HGET', KEYS[2], field) or '-1')
local args = {}
for i = 1, h do args[i] = ARGV[3 + i] end
local n = h
local fresh, dup = 0, 0
local a = 4 + h
while a <= #ARGV do
  local off = tonumber(ARGV[a])
  if off > top then
    for j = 1, stride do args[n + j] = ARGV[a + j] end
    n = n + stride
    top = off
    fresh = fresh + 1
  else
    dup = dup + 1
  end
  a = a + 1 + stride
end
local applied = 0
if fresh > 0 then
  applied = add_events(args)
  redis.call('HSET', KEYS[2], field, string.format('%d', top))
end
return {applied, fresh - applied, dup}
"""
)

EVENTS_PER_CALL = 2000  # bounds one script call's run time (Redis is blocked while it runs)


@dataclass(frozen=True)
class StreamEvent:
    """One decoded event bound for one view: where it came from, whose ring, when, and its column values."""

    topic: str
    partition: int
    offset: int
    entity: Any  # scalar, or a tuple for a composite key
    ts_us: int
    values: Mapping[str, Any]


@dataclass
class ApplyCounts:
    applied: int = 0  # added to a tile
    late: int = 0  # older than the ring keeps (its slot holds a newer tile): dropped by the store
    duplicates: int = 0  # at or below the ring's applied offset: already counted, skipped
    rejected: int = 0  # entity key that cannot share a cluster slot with its offsets hash (see offsets_key)

    def __iadd__(self, other: "ApplyCounts") -> "ApplyCounts":
        self.applied += other.applied
        self.late += other.late
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        return self


@dataclass
class _ViewPlan:
    prefix: str
    arity: int
    tile_us: int
    sum_columns: tuple[str, ...]
    last_columns: tuple[str, ...]
    elem_bytes: Any
    head: list[Any]
    stride: int


def _hash_tag(key: str) -> str | None:
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1: end]
    return None


class TileWriter:
    """Adds events to windowed views' tiles through the online store's tile script, each Kafka record once.

    `exactly_once=False` falls back to the store's plain ``add_events`` (at least
    once: a re-delivered record is counted again); only for comparison and for
    stores whose internals this module cannot follow.
    """

    def __init__(self, store: OnlineStore, *, exactly_once: bool = True, offsets_namespace: str = "") -> None:
        self.store = store
        self.client = store.client
        self.exactly_once = exactly_once
        self.offsets_namespace = offsets_namespace
        self._plans: dict[int, tuple[WindowedFeatureView, _ViewPlan]] = {}
        self._sha: str | None = None
        self._pack_d = struct.Struct("<d").pack

    # ------------------------------------------------------------------ keys
    def offsets_key(self, ring_key: str) -> str:
        """The applied-offsets hash of a ring: ``{project}:_so:{<ring key>}``, in the ring's cluster slot."""
        tag = _hash_tag(ring_key)
        if tag is None and "}" not in ring_key:
            return f"{self.store.project}:_so:{{{ring_key}}}"
        if tag is not None:  # the ring key has a hash tag of its own (an entity with braces): reuse it
            return f"{self.store.project}:_so:{{{tag}}}:{ring_key}"
        return f"{self.store.project}:_so:{ring_key}"  # same slot only on a single server; checked in apply

    def _plan(self, view: WindowedFeatureView) -> _ViewPlan:
        hit = self._plans.get(id(view))
        if hit is not None and hit[0] is view:
            return hit[1]
        info = self.store.info(view)
        tc = info.tiles
        head = [tc.ring, tc.slot_size, len(tc.last_columns), tc.empty_slot(), len(tc.sum_columns), *tc.last_keep]
        plan = _ViewPlan(info.prefix, len(view.join_keys), tc.tile_us, tuple(tc.sum_columns), tuple(tc.last_columns),
                         tc.elem_bytes, head, 2 + len(tc.sum_columns) + len(tc.last_columns))
        self._plans[id(view)] = (view, plan)
        return plan

    def field_of(self, topic: str, partition: int) -> str:
        return f"{topic}:{partition}{self.offsets_namespace}"

    # ----------------------------------------------------------------- apply
    def apply(self, batches: Sequence[tuple[WindowedFeatureView, Sequence[StreamEvent]]]) -> dict[str, ApplyCounts]:
        """Apply (view, events) pairs (events in offset order per partition); returns counts per view name.

        Raises what Redis raises; nothing then needs undoing: calling again with
        the same events applies exactly the ones that did not make it.
        """
        if not self.exactly_once:
            return self._apply_plain(batches)
        calls: list[tuple[str, list[str], list[Any]]] = []  # (view name, keys, args)
        out: dict[str, ApplyCounts] = {}
        cluster = self.store.cluster
        for view, events in batches:
            counts = out.setdefault(view.name, ApplyCounts())
            if not events:
                continue
            p = self._plan(view)
            per_call: dict[tuple[str, str], list[Any]] = {}
            ring_keys = entity_keys(p.prefix, [e.entity for e in events], p.arity)
            pack_d = self._pack_d
            for ev, ring in zip(events, ring_keys):
                fld = self.field_of(ev.topic, ev.partition)
                args = per_call.get((ring, fld))
                if args is None:
                    args = per_call[(ring, fld)] = []
                vals = ev.values
                args.append(ev.offset)
                args.append(ev.ts_us // p.tile_us)
                args.append(ev.ts_us)
                for c in p.sum_columns:
                    v = vals.get(c)
                    args.append(b"" if v is None else pack_d(float(v)))
                for li, c in enumerate(p.last_columns):
                    v = vals.get(c)
                    args.append(b"" if v is None else b"\1" + p.elem_bytes(li, v))
            step = (1 + p.stride) * EVENTS_PER_CALL
            prelude = [len(p.head), p.stride, *p.head]
            for (ring, fld), args in per_call.items():
                okey = self.offsets_key(ring)
                if cluster and self.client.keyslot(okey) != self.client.keyslot(ring):
                    n = len(args) // (1 + p.stride)
                    counts.rejected += n
                    log.error("view %s: entity key %r cannot share a cluster slot with its offsets hash; "
                              "%d event(s) not applied", view.name, ring, n)
                    continue
                for i in range(0, len(args), step):
                    calls.append((view.name, [ring, okey], [fld, *prelude, *args[i: i + step]]))
        for name, (applied, late, dup) in zip([c[0] for c in calls], self._run(calls)):
            counts = out[name]
            counts.applied += int(applied)
            counts.late += int(late)
            counts.duplicates += int(dup)
        return out

    def _apply_plain(self, batches: Sequence[tuple[WindowedFeatureView, Sequence[StreamEvent]]]) -> dict[str, ApplyCounts]:
        out: dict[str, ApplyCounts] = {}
        for view, events in batches:
            n = len(events)
            applied = self.store.add_events(view, [(e.entity, e.ts_us, e.values) for e in events]) if n else 0
            out[view.name] = ApplyCounts(applied=applied, late=n - applied)
        return out

    # ---------------------------------------------------------------- redis
    def _load(self) -> str:
        sha = self.client.script_load(GUARDED_ADD_EVENTS)
        if isinstance(sha, dict):  # cluster: one reply per node
            sha = next(iter(sha.values()))
        if isinstance(sha, bytes):
            sha = sha.decode()
        self._sha = sha
        return sha

    def _run(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Sequence[int]]:
        """EVALSHA every call in one pipeline; calls answered NOSCRIPT (server restarted or flushed) are re-sent
        once after loading the script. Any other error is raised after the whole pipeline ran -- retrying the
        batch is then safe, the script skips what it already applied."""
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in (0, 1):
            if not pending:
                break
            sha = self._sha if self._sha is not None and attempt == 0 else self._load()
            pipe = self.client.pipeline(transaction=False) if not self.store.cluster else self.client.pipeline()
            for i in pending:
                _, keys, args = calls[i]
                # execute_command: a cluster pipeline refuses .evalsha() but routes EVALSHA by its keys
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            failed = []
            for i, reply in zip(pending, pipe.execute(raise_on_error=False)):
                if not isinstance(reply, Exception):
                    replies[i] = reply
                elif attempt == 0 and (isinstance(reply, redis.exceptions.NoScriptError) or "NOSCRIPT" in str(reply)):
                    failed.append(i)
                else:
                    raise reply
            pending = failed
        if pending:
            raise RuntimeError("the guarded tile script could not be loaded")
        return replies


__all__ = ["GUARDED_ADD_EVENTS", "ApplyCounts", "StreamEvent", "TileWriter"]
