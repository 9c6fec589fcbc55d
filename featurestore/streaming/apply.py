"""Applying decoded events to the online store's window state, exactly once per Kafka record.

Why not just ``OnlineStore.add_events``: it adds every event it is given (one
non-transactional pipeline of per-entity scripts), so an event delivered twice
-- a crash between the write and the offset commit, a failed commit, a
rebalance, a replay -- is counted twice. Idempotence has to live in the same
atomic step as the update.

Design: **applied offsets per entity.** A windowed view keeps per entity a ring
per hop, a list per last-n column and a small state hash, all in one Redis
Cluster slot (`featurestore.online.layout`). The hash maps ``"topic:partition"``
to the highest offset of that partition already applied to the entity. The
store's one window script (`featurestore.online.scripts.ADD_EVENTS`), called
once per (entity, partition) per batch (pipelined), reads the stored offset,
drops the events at or below it, adds the rest -- each to the one slot of its
tile in every ring (GETRANGE/SETRANGE, O(1) per event) and to the lists -- and
moves the offset, all atomically. Consequences:

* a re-delivered record is skipped for every entity it touched, however the
  re-delivery is batched, and whichever consumer (or consumer group) delivers it;
* a pipeline that fails half way is simply retried: the entities it reached skip
  their events, the others apply them (a single per-partition watermark could
  not express "applied to some keys but not others");
* works on a single server and on Redis Cluster alike: nothing spans slots;
* a zombie consumer that lost its partitions cannot double-apply either.

The same script skips events before the entity's (or the view's) batch-through
time: the materialization already holds them ("covered_by_batch"); see
`featurestore.materialize` for who owns which tiles. The writer reads the view's
batch-through and stream-from once per batch, skips covered events before
sending them, and afterwards lowers the view's stream-from to the oldest event
it applied.

Cost: the hash (a few dozen bytes) next to the rings, and one HMGET/HSET inside
the script. Offsets identify records only within one topic's life: a topic
deleted and re-created restarts at offset 0, so pass a new ``offsets_namespace``
(it is appended to the field) when that happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from featurestore.definitions import WindowedFeatureView
from featurestore.online import scripts
from featurestore.online.layout import window_entity_bases
from featurestore.online.store import OnlineStore

log = logging.getLogger(__name__)

GUARDED_ADD_EVENTS = scripts.ADD_EVENTS  # the store's window script; a non-empty field turns its guard on


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
    applied: int = 0  # added to every ring (and list) of the view
    late: int = 0  # too old for at least one ring (its slot holds a newer tile): added only where it still fits
    duplicates: int = 0  # at or below the entity's applied offset: already counted, skipped
    rejected: int = 0  # entity key that cannot be stored (kept for compatibility; never set by this writer)
    covered: int = 0  # before the batch-through: the materialized state already holds it ("covered_by_batch")

    def __iadd__(self, other: "ApplyCounts") -> "ApplyCounts":
        self.applied += other.applied
        self.late += other.late
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.covered += other.covered
        return self


@dataclass
class _ViewPlan:
    prefix: str
    arity: int
    pack: Any


class TileWriter:
    """Adds events to windowed views' state through the online store's window script, each Kafka record once.

    `exactly_once=False` falls back to the store's plain ``add_events`` (at least
    once: a re-delivered record is counted again); only for comparison.
    """

    def __init__(self, store: OnlineStore, *, exactly_once: bool = True, offsets_namespace: str = "") -> None:
        self.store = store
        self.client = store.client
        self.exactly_once = exactly_once
        self.offsets_namespace = offsets_namespace
        self._plans: dict[int, tuple[WindowedFeatureView, _ViewPlan]] = {}

    def offsets_key(self, entity_base: str) -> str:
        """The state hash (applied offsets, batch-through, stream-from) of an entity, from its key base."""
        return entity_base + ":s"

    def _plan(self, view: WindowedFeatureView) -> _ViewPlan:
        hit = self._plans.get(id(view))
        if hit is not None and hit[0] is view:
            return hit[1]
        info = self.store.info(view)
        tc = info.tiles
        plan = _ViewPlan(info.prefix, len(view.join_keys), tc.event_packer())
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
        out: dict[str, ApplyCounts] = {}
        live = [(view, events) for view, events in batches if events]
        for view, _ in batches:
            out.setdefault(view.name, ApplyCounts())
        if not live:
            return out
        bounds = self.store.window_bounds([v for v, _ in live])
        if not self.exactly_once:
            return self._apply_plain(live, bounds, out)
        calls: list[tuple[list[str], list[Any]]] = []
        owners: list[str] = []
        for (view, events), (bt, _) in zip(live, bounds):
            counts = out[view.name]
            p = self._plan(view)
            if bt is not None:
                kept = [e for e in events if e.ts_us >= bt]
                counts.covered += len(events) - len(kept)
                events = kept
            if not events:
                continue
            per_entity: dict[tuple[str, str], list[bytes]] = {}
            bases = window_entity_bases(p.prefix, [e.entity for e in events], p.arity)
            pack = p.pack
            fields: dict[tuple[str, int], str] = {}
            for ev, base in zip(events, bases):
                tp = (ev.topic, ev.partition)
                fld = fields.get(tp)
                if fld is None:
                    fld = fields[tp] = self.field_of(*tp)
                blobs = per_entity.get((base, fld))
                if blobs is None:
                    blobs = per_entity[(base, fld)] = []
                blobs.append(pack(ev.offset, ev.ts_us, ev.values))
            view_calls = self.store.event_calls(view, per_entity, bt)
            calls.extend(view_calls)
            owners.extend([view.name] * len(view_calls))
        oldest: dict[str, int] = {}
        for name, reply in zip(owners, self.store.eval_many("ADD_EVENTS", calls, idempotent=True)):
            applied, late, dup, covered, old = (int(x) for x in reply)
            c = out[name]
            c.applied += applied
            c.late += late
            c.duplicates += dup
            c.covered += covered
            if old >= 0 and (name not in oldest or old < oldest[name]):
                oldest[name] = old
        self._lower_stream_from(live, bounds, oldest)
        return out

    def _lower_stream_from(self, live: Sequence[tuple[WindowedFeatureView, Any]], bounds: Sequence[tuple[Any, Any]],
                           oldest: Mapping[str, int]) -> None:
        for (view, _), (_, sf) in zip(live, bounds):
            old = oldest.get(view.name)
            if old is not None and (sf is None or old < sf):
                self.store.lower_stream_from(view, old)

    def _apply_plain(self, live: Sequence[tuple[WindowedFeatureView, Sequence[StreamEvent]]],
                     bounds: Sequence[tuple[Any, Any]], out: dict[str, ApplyCounts]) -> dict[str, ApplyCounts]:
        for (view, events), (bt, _) in zip(live, bounds):
            kept = [e for e in events if bt is None or e.ts_us >= bt]
            applied = self.store.add_events(view, [(e.entity, e.ts_us, e.values) for e in kept]) if kept else 0
            c = out[view.name]
            c.covered += len(events) - len(kept)
            c.applied += applied
            c.late += len(kept) - applied
        return out


__all__ = ["GUARDED_ADD_EVENTS", "ApplyCounts", "StreamEvent", "TileWriter"]
