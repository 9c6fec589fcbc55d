"""Trending counts: time-decayed, windowed event counts per item, globally and per category, in Redis.

An item's trending score at time ``now`` is its decayed count::

    count(i, now) = sum over events e of i with t_e <= now of  w(type_e) * exp(-(now - t_e) / tau)

with ``tau = half_life / ln 2`` (``RecallConfig.trending_half_life_hours``) and
``w`` the event type's weight (``popular_event_weights``; other types do not
count). Decaying every stored count as time passes would mean rescanning
them all; instead each event adds ``w * exp((t_e - t0) / tau)`` for a fixed
epoch ``t0`` (the "score x e^{t/tau}" trick), so stored scores never change
as time passes and their *order* is the order of the decayed counts at any
``now``; a reader multiplies by ``exp(-(now - t0) / tau)`` to get counts. The
stored scores grow by e every tau; when an event is more than
``REBASE_EXPONENT`` tau past ``t0`` every set is rescaled in place
(``ZUNIONSTORE k 1 k WEIGHTS f``) and ``t0`` moves, atomically in one script.

Keys (one hash tag per namespace: the scripts touch them in one slot)::

    {ns:pop}:meta        hash: t0 (epoch ms), tau_ms, watermark (epoch ms)
    {ns:pop}:g           zset: item -> stored score (global)
    {ns:pop}:c:<cat>     zset: the same per category
    {ns:pop}:cats        set of categories with a zset
    {ns:pop}:offsets     hash: "<topic>:<partition>" -> last applied Kafka offset

"Windowed": the sets keep the ``popular_max_items`` (per category
``popular_max_items_per_category``) highest scores, trimmed as they grow, and
the bootstrap reads only the last ``20`` half-lives of the log (older events
weigh < 1e-6).

Writers:

* :meth:`TrendingStore.bootstrap` -- from the offline event log with DuckDB,
  as of a time, replacing the sets atomically (staging keys renamed in one
  transaction); its time becomes the *watermark*: the stream skips events
  older than it, which the log already counted.
* :class:`TrendingUpdater` -- consumes the ``events`` topic (protobuf
  ``cascade.v1.Event`` or JSON, decoded by featurestore.streaming's
  :class:`~featurestore.streaming.RecordParser` / :class:`EventDecoder`), and
  applies each partition's batch with one script that also records the
  batch's last offset and refuses a batch at or below it: re-delivery after a
  crash is skipped, so each event counts once.

Reader: :class:`recall.channels.popular.PopularChannel` (and :meth:`TrendingStore.top` for tools and tests).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import redis

from featurestore.definitions import StreamSource
from featurestore.streaming import DecodeError, EventDecoder, RecordParser
from recall.categories import ItemCategories
from recall.covisit import EventsInput, to_ms
from recall.redis_io import SortedSetKeys, decode_str

log = logging.getLogger(__name__)

REBASE_EXPONENT = 40.0  # rebase when stored scores would exceed ~e^40 (2e17) times a fresh event's weight
BOOTSTRAP_HALF_LIVES = 20  # events older than this many half-lives are left out of the bootstrap (< 1e-6)
_TRIM_SLACK = 1.1  # trim a set once it holds 10% more than its cap

# KEYS: meta, offsets, global, cats set.  ARGV: t0, partition field ("" = none), first offset, last offset,
# max global, max per category, category key prefix, n, then per event: item, increment, n_cats, cats...
_APPLY = r"""
local t0 = redis.call('HGET', KEYS[1], 't0')
if t0 ~= ARGV[1] then return -1 end
local part = ARGV[2]
if part ~= '' then
  local done = redis.call('HGET', KEYS[2], part)
  if done and tonumber(done) >= tonumber(ARGV[3]) then return -2 end
end
local max_g, max_c, cprefix = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local n = tonumber(ARGV[8])
local i = 9
local touched = {}
for e = 1, n do
  local item, inc, nc = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  i = i + 3
  redis.call('ZINCRBY', KEYS[3], inc, item)
  for c = 1, nc do
    local cat = ARGV[i]
    i = i + 1
    redis.call('ZINCRBY', cprefix .. cat, inc, item)
    if not touched[cat] then
      touched[cat] = true
      redis.call('SADD', KEYS[4], cat)
    end
  end
end
local card = redis.call('ZCARD', KEYS[3])
if card > max_g * 1.1 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, card - max_g - 1) end
for cat, _ in pairs(touched) do
  local k = cprefix .. cat
  local cc = redis.call('ZCARD', k)
  if cc > max_c * 1.1 then redis.call('ZREMRANGEBYRANK', k, 0, cc - max_c - 1) end
end
if part ~= '' then redis.call('HSET', KEYS[2], part, ARGV[4]) end
return n
"""

# KEYS: meta, global, cats set.  ARGV: expected t0, new t0, factor, category key prefix.
_REBASE = r"""
local t0 = redis.call('HGET', KEYS[1], 't0')
if t0 ~= ARGV[1] then return -1 end
local f = ARGV[3]
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('ZUNIONSTORE', KEYS[2], 1, KEYS[2], 'WEIGHTS', f) end
local cats = redis.call('SMEMBERS', KEYS[3])
for _, cat in ipairs(cats) do
  local k = ARGV[4] .. cat
  if redis.call('EXISTS', k) == 1 then redis.call('ZUNIONSTORE', k, 1, k, 'WEIGHTS', f) end
end
redis.call('HSET', KEYS[1], 't0', ARGV[2])
return #cats
"""


@dataclass(frozen=True)
class TrendingKeys(SortedSetKeys):
    family: ClassVar[str] = "pop"

    @property
    def meta(self) -> str:
        return f"{self.base}:meta"

    @property
    def offsets(self) -> str:
        return f"{self.base}:offsets"


@dataclass
class ApplyResult:
    applied: int = 0  # events added
    skipped_old: int = 0  # older than the watermark (the bootstrap counted them)
    skipped_redelivered: int = 0  # at or below the partition's recorded offset
    rebases: int = 0


@dataclass
class BootstrapResult:
    items: int
    categories: int
    events: int
    as_of_ms: int
    seconds: float


class TrendingStore:
    """Writes (bootstrap, stream batches, rebase) and a blocking read of the trending sets."""

    def __init__(self, client: Any, namespace: str, *, half_life_hours: float, event_weights: Mapping[str, float],
                 max_items: int = 100_000, max_items_per_category: int = 10_000,
                 categories: ItemCategories | None = None) -> None:
        if not half_life_hours > 0:
            raise ValueError("half_life_hours must be positive")
        self.client = client
        self.keys = TrendingKeys.of(namespace)
        self.half_life_hours = half_life_hours
        self.tau_ms = half_life_hours * 3_600_000.0 / math.log(2)
        self.event_weights = {str(k): float(v) for k, v in event_weights.items()}
        self.max_items = max_items
        self.max_items_per_category = max_items_per_category
        self.categories = categories
        self._apply = client.register_script(_APPLY)
        self._rebase = client.register_script(_REBASE)
        self._t0: int | None = None
        self._watermark: int | None = None

    @classmethod
    def from_config(cls, client: Any, config: Any, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "TrendingStore":
        rc = config.recall
        return cls(client, namespace or config.features.project, half_life_hours=rc.trending_half_life_hours,
                   event_weights=rc.popular_event_weights, max_items=rc.popular_max_items,
                   max_items_per_category=rc.popular_max_items_per_category, categories=categories)

    # ------------------------------------------------------------------ meta

    def meta(self) -> dict[str, int | float]:
        raw = self.client.hgetall(self.keys.meta)
        return {decode_str(k): float(v) if b"." in v else int(v) for k, v in raw.items()}  # type: ignore[misc]

    def _load_meta(self) -> None:
        t0, wm = self.client.hmget(self.keys.meta, "t0", "watermark")
        self._t0 = int(t0) if t0 is not None else None
        self._watermark = int(wm) if wm is not None else None

    def ensure_initialized(self, t0_ms: int) -> None:
        """Create the meta hash (t0, tau, no watermark) if no bootstrap ran: the stream can start from nothing."""
        self.client.hsetnx(self.keys.meta, "t0", int(t0_ms))
        self.client.hsetnx(self.keys.meta, "tau_ms", repr(self.tau_ms))
        self._load_meta()

    # ------------------------------------------------------------------ bootstrap

    def bootstrap(self, events: EventsInput, as_of: datetime | int | None = None, *,
                  memory_limit_mb: int = 1024, chunk: int = 5000) -> BootstrapResult:
        """Replace the sets with the decayed counts of the log's events before `as_of` (default: after the last).

        `events` has ``item_id``, ``event_ts`` and ``event_type`` (rows whose type
        has no weight are ignored). Categories come from the store's
        :class:`ItemCategories`. The swap is atomic; the watermark becomes `as_of`.
        """
        t_start = time.perf_counter()
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"SET memory_limit = '{int(memory_limit_mb)}MB'")
            if isinstance(events, pa.Table):
                con.register("trend_events", events)
                src = "trend_events"
            else:
                paths = [events] if isinstance(events, (str, Path)) else list(events)
                src = "read_parquet([" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "])"
            weights = pa.table({"event_type": list(self.event_weights), "w": list(self.event_weights.values())})
            con.register("trend_weights", weights)
            as_of_ms = to_ms(as_of)
            if as_of_ms is None:
                as_of_ms = int(con.execute(f"SELECT max(epoch_ms(event_ts)) + 1 FROM {src}").fetchall()[0][0] or 0)
            horizon = int(BOOTSTRAP_HALF_LIVES * self.half_life_hours * 3_600_000)
            rows = con.sql(f"""
                SELECT e.item_id, sum(w.w * exp((epoch_ms(e.event_ts) - {as_of_ms})::DOUBLE / {self.tau_ms!r})) AS s,
                       count(*) AS n
                FROM {src} e JOIN trend_weights w ON w.event_type = e.event_type
                WHERE epoch_ms(e.event_ts) < {as_of_ms} AND epoch_ms(e.event_ts) >= {as_of_ms - horizon}
                GROUP BY e.item_id
            """).to_arrow_table()
        finally:
            con.close()
        items = rows["item_id"].to_numpy().astype(np.int64)
        scores = rows["s"].to_numpy().astype(np.float64)
        n_events = int(rows["n"].to_numpy().sum()) if rows.num_rows else 0
        staged: dict[str, str] = {}  # live key -> staging key
        pipe = self.client.pipeline(transaction=False)
        stage = self.keys.stage_prefix
        for k in [self.keys.glob, *[self.keys.cat(c) for c in (self.categories.categories if self.categories else [])]]:
            pipe.delete(stage + k)
        pipe.execute()

        def write(key: str, its: np.ndarray, sc: np.ndarray, cap: int) -> None:
            if its.size == 0:
                return
            if its.size > cap:
                keep = np.argpartition(-sc, cap - 1)[:cap]
                its, sc = its[keep], sc[keep]
            skey = stage + key
            p = self.client.pipeline(transaction=False)
            for a in range(0, its.size, chunk):
                p.zadd(skey, dict(zip(its[a:a + chunk].tolist(), sc[a:a + chunk].tolist())))
            p.execute()
            staged[key] = skey

        write(self.keys.glob, items, scores, self.max_items)
        n_cats = 0
        if self.categories is not None and items.size:
            owner, codes = self.categories.codes_of(items)
            order = np.argsort(codes, kind="stable")
            owner, codes = owner[order], codes[order]
            bounds = np.flatnonzero(np.diff(codes)) + 1
            for grp in np.split(np.arange(codes.size), bounds):
                if grp.size == 0:
                    continue
                cat = str(self.categories.names[codes[grp[0]]])
                write(self.keys.cat(cat), items[owner[grp]], scores[owner[grp]], self.max_items_per_category)
                n_cats += 1
        # Swap in one transaction: live sets replaced, categories no longer present dropped, meta reset.
        old_cats = [decode_str(c) for c in self.client.smembers(self.keys.cats)]
        tx = self.client.pipeline(transaction=True)
        for c in old_cats:
            if self.keys.cat(c) not in staged:  # type: ignore[arg-type]
                tx.delete(self.keys.cat(c))  # type: ignore[arg-type]
        if self.keys.glob not in staged:
            tx.delete(self.keys.glob)
        tx.delete(self.keys.cats)
        for live, skey in staged.items():
            tx.rename(skey, live)
            if live != self.keys.glob:
                tx.sadd(self.keys.cats, live[len(self.keys.cat_prefix):])
        tx.hset(self.keys.meta, mapping={"t0": as_of_ms, "tau_ms": repr(self.tau_ms), "watermark": as_of_ms})
        tx.execute()
        self._t0, self._watermark = as_of_ms, as_of_ms
        return BootstrapResult(int(items.size), n_cats, n_events, as_of_ms, round(time.perf_counter() - t_start, 3))

    # ------------------------------------------------------------------ streaming writes

    def apply(self, events: Sequence[tuple[int, int, float]], *, partition: str = "", first_offset: int = -1,
              last_offset: int = -1) -> ApplyResult:
        """Add ``(item, event time ms, weight)`` events atomically (one script call).

        With `partition` (``"topic:partition"``), the batch carries Kafka offsets
        ``first_offset..last_offset``; a batch whose first offset is at or below
        the recorded one is refused as a re-delivery (the caller filters
        already-applied records first, see :class:`TrendingUpdater`).
        """
        res = ApplyResult()
        if self._t0 is None:
            self._load_meta()
            if self._t0 is None:
                self.ensure_initialized(min((int(t) for _, t, _ in events), default=int(time.time() * 1000)))
        wm = self._watermark
        kept = [(int(i), int(t), float(w)) for i, t, w in events if wm is None or int(t) >= wm]
        res.skipped_old = len(events) - len(kept)
        if kept:
            newest = max(t for _, t, _ in kept)
            if (newest - self._t0) / self.tau_ms > REBASE_EXPONENT:  # type: ignore[operator]
                self.rebase(newest)
                res.rebases += 1
        for _ in range(3):
            t0 = self._t0
            args: list[Any] = [t0, partition, first_offset, last_offset, self.max_items, self.max_items_per_category,
                               self.keys.cat_prefix, len(kept)]
            cats_of = self.categories.of_many([i for i, _, _ in kept]) if self.categories is not None else None
            for e, (item, ts, w) in enumerate(kept):
                inc = w * math.exp((ts - t0) / self.tau_ms)  # type: ignore[operator]
                cats = cats_of[e] if cats_of is not None else []
                args += [item, repr(inc), len(cats), *cats]
            out = int(self._apply(keys=[self.keys.meta, self.keys.offsets, self.keys.glob, self.keys.cats], args=args))
            if out == -1:  # t0 moved (a rebase or a bootstrap elsewhere): reload and recompute
                self._load_meta()
                wm = self._watermark
                kept = [(i, t, w) for i, t, w in kept if wm is None or t >= wm]
                continue
            if out == -2:
                res.skipped_redelivered = len(events)
                res.skipped_old = 0
                return res
            res.applied = out
            return res
        raise RuntimeError("trending: t0 kept changing while applying a batch")

    def rebase(self, new_t0: int) -> None:
        """Move the epoch to `new_t0`, rescaling every stored score by exp(-(new_t0 - t0)/tau), atomically."""
        if self._t0 is None:
            self._load_meta()
        old = self._t0
        if old is None:
            self.ensure_initialized(new_t0)
            return
        factor = math.exp(-(int(new_t0) - old) / self.tau_ms)
        out = int(self._rebase(keys=[self.keys.meta, self.keys.glob, self.keys.cats],
                               args=[old, int(new_t0), repr(factor), self.keys.cat_prefix]))
        self._load_meta()
        if out == -1:
            log.info("trending: t0 changed concurrently; reloaded")

    def offsets(self) -> dict[str, int]:
        return {decode_str(k): int(v) for k, v in self.client.hgetall(self.keys.offsets).items()}  # type: ignore[misc]

    # ------------------------------------------------------------------ reading (tools, tests)

    def top(self, k: int, now_ms: int, category: str | None = None) -> list[tuple[int, float]]:
        """The k highest decayed counts as of `now_ms`: [(item, count)]."""
        key = self.keys.glob if category is None else self.keys.cat(category)
        p = self.client.pipeline(transaction=True)
        p.hget(self.keys.meta, "t0")
        p.zrevrange(key, 0, k - 1, withscores=True)
        t0, rows = p.execute()
        if t0 is None:
            return []
        f = math.exp(-(now_ms - int(t0)) / self.tau_ms)
        return [(int(i), s * f) for i, s in rows]


# ============================================================================ stream updater


@dataclass
class TrendingStats:
    records: int = 0
    applied: int = 0
    skipped_old: int = 0
    skipped_redelivered: int = 0
    filtered: int = 0  # types without a weight
    decode_errors: int = 0
    batches: int = 0
    rebases: int = 0
    seconds: float = 0.0
    idle: bool = False
    per_partition: dict[str, int] = field(default_factory=dict)


def event_source(topic: str, event_types: Iterable[str]) -> StreamSource:
    """The stream source of the trending updater: item, event time and type of `cascade.v1.Event` records."""
    return StreamSource(topic=topic, fields={"item_id": "item_id", "event_ts": "timestamp_ms", "event_type": "type"},
                        where={"event_type": tuple(event_types)})


class TrendingUpdater:
    """Consumes the events topic into a :class:`TrendingStore` (see the module docstring).

    `consumer` is a ``KafkaConsumer`` (used as given) or a bootstrap string
    (default ``config.kafka.bootstrap_servers``) from which one is made in
    group `group_id` (default ``recall.trending_stream_group``). With
    `assign=True` every partition is taken without a group join and each
    starts after the offset the store recorded (else from the group's
    committed offset, or the earliest).
    """

    def __init__(self, config: Any, store: TrendingStore, consumer: Any = None, *, topic: str = "events",
                 group_id: str | None = None, assign: bool = False, format: str = "auto",
                 poll_timeout_ms: int = 200, max_records: int = 2000) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.config = config
        self.store = store
        self.topic = topic
        self.decoder = EventDecoder(event_source(topic, store.event_weights), ["item_id", "event_type"],
                                    required=("item_id",), parser=RecordParser(format))
        self.poll_timeout_ms = poll_timeout_ms
        self.max_records = max_records
        self.stats = TrendingStats()
        self._stop = threading.Event()
        self._offsets: dict[str, int] = {}
        if isinstance(consumer, KafkaConsumer):
            self.consumer, self._owns = consumer, False
        else:
            from stack.clients import kafka_consumer

            bootstrap = consumer or config.kafka.bootstrap_servers
            if not bootstrap:
                raise ValueError("no Kafka bootstrap servers: pass one, or set KAFKA_BOOTSTRAP_SERVERS")
            self.consumer = kafka_consumer(bootstrap, config.kafka, group_id or config.recall.trending_stream_group,
                                           max_poll_records=max_records)
            self._owns = True
        if not self.consumer.subscription() and not self.consumer.assignment():
            if assign:
                deadline = time.monotonic() + config.kafka.request_timeout_ms / 1000
                parts = self.consumer.partitions_for_topic(topic)
                while not parts and time.monotonic() < deadline:
                    time.sleep(0.1)
                    parts = self.consumer.partitions_for_topic(topic)
                if not parts:
                    raise ValueError(f"topic {topic!r} does not exist")
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
                self.consumer.assign(tps)
                recorded = store.offsets()
                for tp in tps:
                    done = recorded.get(f"{topic}:{tp.partition}")
                    if done is not None:
                        self.consumer.seek(tp, done + 1)
            else:
                self.consumer.subscribe([topic])
        self._offsets = store.offsets()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._owns:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001 - best effort
                log.exception("trending: error closing the consumer")

    def __enter__(self) -> "TrendingUpdater":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self) -> TrendingStats:
        try:
            return self.run_for(None)
        finally:
            self.close()

    def run_for(self, seconds: float | None = None, *, until_idle: bool = False, timeout: float | None = None) -> TrendingStats:
        """Consume for `seconds` (None: until :meth:`stop`), or with `until_idle` until caught up (at most `timeout`)."""
        limit = timeout if timeout is not None else seconds
        deadline = time.monotonic() + limit if limit is not None else None
        t0 = time.monotonic()
        self.stats.idle = False
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
            got = sum(len(v) for v in polled.values())
            for tp, records in polled.items():
                self._apply_partition(tp, records)
            if got:
                self._commit()
            elif until_idle and self._caught_up():
                self.stats.idle = True
                break
        self.stats.seconds += time.monotonic() - t0
        return self.stats

    def _apply_partition(self, tp: Any, records: list[Any]) -> None:
        part = f"{tp.topic}:{tp.partition}"
        done = self._offsets.get(part, -1)
        fresh = [r for r in records if r.offset > done]
        self.stats.records += len(records)
        self.stats.skipped_redelivered += len(records) - len(fresh)
        if not fresh:
            return
        events: list[tuple[int, int, float]] = []
        for r in fresh:
            try:
                row = self.decoder.decode(r.value)
            except DecodeError as exc:
                self.stats.decode_errors += 1
                log.debug("trending: undecodable record %s@%d: %s", part, r.offset, exc)
                continue
            if row is None:
                self.stats.filtered += 1
                continue
            try:
                item = int(row["item_id"])
            except (TypeError, ValueError):
                self.stats.decode_errors += 1
                continue
            ts = row["event_ts"]
            ts_ms = int(round(ts.timestamp() * 1000))
            events.append((item, ts_ms, self.store.event_weights.get(str(row["event_type"]), 0.0)))
        first, last = fresh[0].offset, fresh[-1].offset
        backoff = 0.1
        while True:
            try:
                res = self.store.apply(events, partition=part, first_offset=first, last_offset=last)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self._stop.is_set():
                    raise
                log.warning("trending: write failed (%s); retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if res.skipped_redelivered:  # the store already had it (another instance, or our cache was stale)
            self._offsets = self.store.offsets()
        else:
            self._offsets[part] = last
        self.stats.batches += 1
        self.stats.applied += res.applied
        self.stats.skipped_old += res.skipped_old
        self.stats.skipped_redelivered += res.skipped_redelivered
        self.stats.rebases += res.rebases
        self.stats.per_partition[part] = self.stats.per_partition.get(part, 0) + res.applied

    def _commit(self) -> None:
        if self.consumer.config.get("group_id") is None:
            return
        try:
            self.consumer.commit()
        except Exception as exc:  # noqa: BLE001 - the store's offsets make re-delivery harmless
            log.warning("trending: offset commit failed (%s); re-delivered records will be skipped", exc)

    def _caught_up(self) -> bool:
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all(self.consumer.position(tp) >= end for tp, end in ends.items())


__all__ = [
    "ApplyResult",
    "BootstrapResult",
    "REBASE_EXPONENT",
    "TrendingKeys",
    "TrendingStats",
    "TrendingStore",
    "TrendingUpdater",
    "event_source",
]
