"""The streaming updater: Kafka events -> the online store's window state, the same state batch computes.

Loop, per polled batch of records (``poll`` -> decode -> apply -> commit):

1. every record value is parsed once (:class:`RecordParser`) and mapped onto
   each view reading its topic (:class:`EventDecoder`: ``fields``, event time,
   ``where``); an undecodable record is counted, logged and skipped -- it never
   stops the loop, and it is never dropped without a counter;
2. the events of all views go to Redis in one pipeline (:class:`TileWriter`),
   each (entity, partition) one atomic script that skips records already
   applied (see :mod:`featurestore.streaming.apply`): re-delivery is harmless;
   events before the view's batch-through time are skipped as covered by the
   materialized state (``covered_by_batch``; see :mod:`featurestore.materialize`);
3. only after the writes succeeded are the batch's offsets committed. A failed
   write is retried (with back-off) with the same events; a failed commit is
   counted and left to the next batch's commit -- either way a record is
   re-delivered at worst, and re-delivery changes nothing.

So delivery is at-least-once and the effect exactly-once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from featurestore.definitions import WindowedFeatureView
from featurestore.online.codec import to_micros
from featurestore.online.layout import encode_entity
from featurestore.online.store import OnlineStore
from featurestore.streaming.apply import ApplyCounts, StreamEvent, TileWriter
from featurestore.streaming.decoder import DecodeError, EventDecoder, RecordParser

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- metrics (default registry)

RECORDS_CONSUMED = Counter("cascade_feature_stream_records_consumed_total",
                           "Kafka records polled by the feature streaming updater.", ["topic"])
EVENTS_APPLIED = Counter("cascade_feature_stream_events_applied_total",
                         "Events added to a windowed view's tiles.", ["view"])
DUPLICATES_SKIPPED = Counter("cascade_feature_stream_duplicates_skipped_total",
                             "Events skipped because their record was already applied (re-delivery).", ["view"])
LATE_EVENTS = Counter("cascade_feature_stream_late_events_total",
                      "Events too old for at least one of the view's rings (its slot holds a newer tile): dropped there.",
                      ["view"])
COVERED_BY_BATCH = Counter("cascade_feature_stream_covered_by_batch_total",
                           "Events before the view's batch-through time: the materialized state holds them, skipped.",
                           ["view"])
FILTERED = Counter("cascade_feature_stream_filtered_total",
                   "Records a view's stream `where` rejected.", ["view"])
DECODE_ERRORS = Counter("cascade_feature_stream_decode_errors_total",
                        "Records that could not be decoded (view \"\": not parseable at all), counted and skipped.",
                        ["topic", "view"])
WRITE_ERRORS = Counter("cascade_feature_stream_write_errors_total",
                       "Failed online-store writes of a batch (the batch is retried).")
COMMIT_ERRORS = Counter("cascade_feature_stream_commit_errors_total",
                        "Failed offset commits (the records may be re-delivered; re-delivery is skipped).")
LAG = Gauge("cascade_feature_stream_lag_records",
            "Records in the partition not yet consumed (high watermark - position).", ["topic", "partition"])
LAST_EVENT_TS = Gauge("cascade_feature_stream_last_event_timestamp_seconds",
                      "Event time of the newest event applied to the view (freshness).", ["view"])
BATCH_SECONDS = Histogram("cascade_feature_stream_batch_seconds",
                          "Decode + write + commit time of one polled batch.",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


@dataclass
class StreamStats:
    """Counts of one run (`run_for`'s return) or of the updater's life (`StreamingUpdater.stats`)."""

    records: int = 0  # Kafka records polled
    events: int = 0  # (record, view) pairs that decoded and passed `where`
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    covered_by_batch: int = 0  # before the batch-through: materialization wrote them
    filtered: int = 0
    decode_errors: int = 0
    batches: int = 0
    commits: int = 0
    write_errors: int = 0
    commit_errors: int = 0
    seconds: float = 0.0
    lag: int | None = None  # total over assigned partitions after the last poll (None: not known yet)
    idle: bool = False  # the run ended because every assigned partition was consumed to its end
    per_view: dict[str, ApplyCounts] = field(default_factory=dict)

    def minus(self, before: "StreamStats") -> "StreamStats":
        out = StreamStats()
        for f in fields(self):
            if f.name in ("lag", "idle", "per_view"):
                continue
            setattr(out, f.name, getattr(self, f.name) - getattr(before, f.name))
        out.lag, out.idle = self.lag, self.idle
        for name, c in self.per_view.items():
            b = before.per_view.get(name, ApplyCounts())
            out.per_view[name] = ApplyCounts(c.applied - b.applied, c.late - b.late, c.duplicates - b.duplicates,
                                             c.rejected - b.rejected, c.covered - b.covered)
        return out

    def copy(self) -> "StreamStats":
        return self.minus(StreamStats())

    def summary(self) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        return (f"records={self.records} ({rate:,.0f}/s) applied={self.applied} duplicates={self.duplicates} "
                f"late={self.late} covered_by_batch={self.covered_by_batch} filtered={self.filtered} decode_errors={self.decode_errors} "
                f"write_errors={self.write_errors} commit_errors={self.commit_errors} lag={self.lag}")


class _Binding:
    """One view's reading of a record: decode, then the entity, event time and validated column values."""

    def __init__(self, view: WindowedFeatureView, decoder: EventDecoder, writer: TileWriter, index: int) -> None:
        self.view = view
        self.index = index
        self.decoder = decoder
        self.join_keys = view.join_keys
        self.arity = len(view.join_keys)
        self.ts_col = decoder.timestamp_column
        tc = writer.store.info(view).tiles
        self.sum_columns = tuple(tc.sum_columns)
        self.last_columns = tuple(enumerate(tc.last_columns))
        self.elem_bytes = tc.elem_bytes
        self.columns = tuple(dict.fromkeys((*self.sum_columns, *tc.last_columns)))

    def bind(self, record: Mapping[str, Any], topic: str, partition: int, offset: int) -> StreamEvent | None:
        row = self.decoder.decode_record(record)
        if row is None:
            return None
        entity = row[self.join_keys[0]] if self.arity == 1 else tuple(row[k] for k in self.join_keys)
        try:
            encode_entity(entity, self.arity)
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"bad entity key: {exc}") from None
        values: dict[str, Any] = {}
        for c in self.sum_columns:
            v = row.get(c)
            if v is not None:
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise DecodeError(f"column {c!r}: {v!r} is not a number") from None
            values[c] = v
        for li, c in self.last_columns:
            v = row.get(c)
            if v is not None:
                try:
                    self.elem_bytes(li, v)
                except (TypeError, ValueError, OverflowError, UnicodeError):
                    raise DecodeError(f"column {c!r}: {v!r} does not fit the last-n type") from None
            values[c] = v
        return StreamEvent(topic, partition, offset, entity, to_micros(row[self.ts_col]), values)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, updater: "StreamingUpdater") -> None:
        self.updater = updater

    def on_partitions_revoked(self, revoked: Any) -> None:
        # Batches are applied and committed before the next poll, so nothing is in hand here.
        if revoked:
            log.info("stream: partitions revoked: %s", _fmt_tps(revoked))
        for tp in revoked:
            try:
                LAG.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("stream: partitions assigned: %s", _fmt_tps(assigned))


def _fmt_tps(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps)) or "(none)"


class StreamingUpdater:
    """Consumes the views' stream topics and keeps their online tiles up to date, each record counted once.

    `consumer`: a ``KafkaConsumer`` to use as given (subscribed to the views'
    topics unless it already has a subscription or an assignment; commits need
    its ``group_id``), or a bootstrap string (default
    ``config.kafka.bootstrap_servers``) from which one is made with
    `stack.clients.kafka_consumer` in group `group_id` (default
    ``config.features.stream_group``). `assign=True` takes every partition of
    the topics without joining the group (one instance only; fastest start),
    resuming from the group's committed offsets.

    Drive it with :meth:`run` (until :meth:`stop`) or :meth:`run_for`
    (`seconds`, or `until_idle`: every assigned partition consumed to its end).
    """

    def __init__(self, config: Any, consumer: KafkaConsumer | str | None, online_store: OnlineStore,
                 views: Sequence[WindowedFeatureView], *, group_id: str | None = None, assign: bool = False,
                 format: str = "auto", message_type: Any = None, exactly_once: bool = True,
                 offsets_namespace: str = "", poll_timeout_ms: int = 200, max_records: int = 2000,
                 log_interval_s: float = 10.0, retry_backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        views = list(views)
        if not views:
            raise ValueError("no views to stream")
        for v in views:
            if not isinstance(v, WindowedFeatureView):
                raise TypeError(f"{getattr(v, 'name', v)!r} is a {type(v).__name__}; only windowed views stream")
            if v.stream is None:
                raise ValueError(f"view {v.name!r} has no stream source")
        self.config = config
        self.store = online_store
        self.views = tuple(views)
        self.writer = TileWriter(online_store, exactly_once=exactly_once, offsets_namespace=offsets_namespace)
        self.parser = RecordParser(format, message_type)
        self._by_topic: dict[str, list[_Binding]] = {}
        self._bindings: list[_Binding] = []
        for v in self.views:
            b = _Binding(v, EventDecoder.for_view(v, parser=self.parser), self.writer, len(self._bindings))
            self._bindings.append(b)
            self._by_topic.setdefault(v.stream.topic, []).append(b)
        self.topics = tuple(self._by_topic)
        self.poll_timeout_ms = poll_timeout_ms
        self.max_records = max_records
        self.log_interval_s = log_interval_s
        self.retry_backoff_s = retry_backoff_s
        self.stats = StreamStats()
        self._stop = threading.Event()
        self._running = False
        self._closed = False
        self._bad_logged: dict[str, int] = {}
        self._last_log = time.monotonic()
        self._last_logged_stats = StreamStats()

        if isinstance(consumer, KafkaConsumer):
            self.consumer = consumer
            self._owns_consumer = False
            if not consumer.subscription() and not consumer.assignment():
                self._attach(assign)
        else:
            from stack.clients import kafka_consumer

            bootstrap = consumer or config.kafka.bootstrap_servers
            if not bootstrap:
                raise ValueError("no Kafka bootstrap servers: pass one, or set KAFKA_BOOTSTRAP_SERVERS")
            self.consumer = kafka_consumer(bootstrap, config.kafka, group_id or config.features.stream_group,
                                           max_poll_records=max_records)
            self._owns_consumer = True
            try:
                self._attach(assign)
            except BaseException:
                self.consumer.close(autocommit=False)
                raise
        self.group_id = self.consumer.config.get("group_id")
        if self.group_id is None:
            log.warning("stream: consumer has no group_id: offsets are not committed (re-delivery is still skipped)")

    def _attach(self, assign: bool) -> None:
        if assign:
            tps = []
            for topic in self.topics:
                deadline = time.monotonic() + self.config.kafka.request_timeout_ms / 1000
                parts = self.consumer.partitions_for_topic(topic)
                while not parts and time.monotonic() < deadline:  # a topic created a moment ago
                    time.sleep(0.1)
                    parts = self.consumer.partitions_for_topic(topic)
                if not parts:
                    raise ValueError(f"topic {topic!r} does not exist (or has no partitions)")
                tps.extend(TopicPartition(topic, p) for p in sorted(parts))
            self.consumer.assign(tps)
        else:
            self.consumer.subscribe(topics=list(self.topics), listener=_Listener(self))

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to finish: the batch in hand is applied and its offsets committed, then the loop returns.

        Safe from another thread or a signal handler. Final: later `run_for`
        calls return at once. When no loop is running, closes the updater's own
        consumer right away (`run` closes it when its loop returns).
        """
        self._stop.set()
        if not self._running:
            self.close()

    def close(self) -> None:
        """Close the consumer this updater created (a given consumer is left to its owner)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_consumer:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001 - closing is best effort
                log.exception("stream: error closing the consumer")

    def __enter__(self) -> "StreamingUpdater":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self) -> StreamStats:
        """Consume until :meth:`stop`; then close. Returns the run's counts."""
        try:
            return self.run_for(None)
        finally:
            self.close()

    def run_for(self, seconds: float | None = None, *, until_idle: bool = False,
                timeout: float | None = None) -> StreamStats:
        """Consume for `seconds` (None: until stop()), or with `until_idle` until every assigned partition is
        consumed to its end (at most `timeout`, or `seconds`, when given). Every batch is applied and committed
        before this returns. Returns this run's counts (`idle` tells whether it ended idle)."""
        if self._closed:
            raise RuntimeError("the updater is closed")
        limit = timeout if timeout is not None else seconds
        deadline = time.monotonic() + limit if limit is not None else None
        before = self.stats.copy()
        t0 = time.monotonic()
        self._running = True
        self.stats.idle = False
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                got = self._step(deadline)
                if until_idle and got == 0 and self._caught_up():
                    self.stats.idle = True
                    break
                self._maybe_log()
        finally:
            self._running = False
            self.stats.seconds += time.monotonic() - t0
        run = self.stats.minus(before)
        log.info("stream: run ended: %s", run.summary())
        return run

    # --------------------------------------------------------------------- loop
    def _step(self, deadline: float | None) -> int:
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
        self._update_lag()
        if not polled:
            return 0
        t0 = time.perf_counter()
        batches = [(b.view, []) for b in self._bindings]  # views are not hashable: bindings index their batch
        offsets: dict[TopicPartition, tuple[int, int]] = {}
        n = 0
        stats = self.stats
        for tp, records in polled.items():
            if not records:
                continue
            n += len(records)
            offsets[tp] = (records[0].offset, records[-1].offset + 1)
            RECORDS_CONSUMED.labels(tp.topic).inc(len(records))
            bindings = self._by_topic.get(tp.topic, ())
            for rec in records:
                try:
                    record = self.parser(rec.value)
                except DecodeError as exc:
                    self._bad(tp, rec.offset, "", exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on absurdly nested JSON
                    self._bad(tp, rec.offset, "", DecodeError(f"{type(exc).__name__}: {exc}"))
                    continue
                for b in bindings:
                    try:
                        ev = b.bind(record, tp.topic, tp.partition, rec.offset)
                    except DecodeError as exc:
                        self._bad(tp, rec.offset, b.view.name, exc)
                        continue
                    except Exception as exc:  # noqa: BLE001 - a record must never stop the loop
                        self._bad(tp, rec.offset, b.view.name, DecodeError(f"{type(exc).__name__}: {exc}"))
                        continue
                    if ev is None:
                        stats.filtered += 1
                        FILTERED.labels(b.view.name).inc()
                    else:
                        batches[b.index][1].append(ev)
        stats.records += n
        stats.events += sum(len(v) for _, v in batches)
        if not self._apply(batches, offsets, deadline):
            return n  # stopped or out of time while the store failed: rewound, nothing committed
        self._commit(offsets)
        stats.batches += 1
        BATCH_SECONDS.observe(time.perf_counter() - t0)
        return n

    def _apply(self, batches: list[tuple[WindowedFeatureView, list[StreamEvent]]],
               offsets: Mapping[TopicPartition, tuple[int, int]], deadline: float | None) -> bool:
        """Write the batch, retrying with back-off; False (after rewinding the consumer) if stopped or out of time."""
        if not any(events for _, events in batches):
            return True
        delay, cap = self.retry_backoff_s
        while True:
            try:
                result = self.writer.apply(batches)
                break
            except (redis.exceptions.RedisError, OSError) as exc:
                self.stats.write_errors += 1
                WRITE_ERRORS.inc()
                log.warning("stream: online store write failed (%s: %s); retrying in %.1fs",
                            type(exc).__name__, exc, delay)
                out_of_time = deadline is not None and time.monotonic() + delay >= deadline
                if out_of_time or self._stop.wait(delay):
                    self._rewind(offsets)
                    return False
                delay = min(cap, delay * 2)
        stats = self.stats
        topics = {view.name: view.stream.topic for view, _ in batches}
        newest: dict[str, int] = {}
        for view, events in batches:
            if events:
                newest[view.name] = max(e.ts_us for e in events)
        for name, c in result.items():
            stats.applied += c.applied
            stats.duplicates += c.duplicates
            stats.late += c.late
            stats.covered_by_batch += c.covered
            stats.decode_errors += c.rejected
            pv = stats.per_view.setdefault(name, ApplyCounts())
            pv += c
            if c.applied:
                EVENTS_APPLIED.labels(name).inc(c.applied)
            if c.duplicates:
                DUPLICATES_SKIPPED.labels(name).inc(c.duplicates)
            if c.late:
                LATE_EVENTS.labels(name).inc(c.late)
            if c.covered:
                COVERED_BY_BATCH.labels(name).inc(c.covered)
            if c.rejected:
                DECODE_ERRORS.labels(topics.get(name, ""), name).inc(c.rejected)
            if name in newest and c.applied:
                LAST_EVENT_TS.labels(name).set(newest[name] / 1e6)
        return True

    def _rewind(self, offsets: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Seek back to the batch's first records, so the next poll (or the next owner) reads them again."""
        for tp, (first, _) in offsets.items():
            try:
                self.consumer.seek(tp, first)
            except Exception:  # noqa: BLE001 - the partition may have been revoked meanwhile
                log.debug("stream: could not rewind %s:%d", tp.topic, tp.partition, exc_info=True)

    def _commit(self, offsets: Mapping[TopicPartition, tuple[int, int]]) -> None:
        if self.group_id is None or not offsets:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(nxt, "", -1) for tp, (_, nxt) in offsets.items()})
            self.stats.commits += 1
        except (KafkaError, AssertionError, OSError) as exc:
            self.stats.commit_errors += 1
            COMMIT_ERRORS.inc()
            log.warning("stream: offset commit failed (%s: %s); records may be re-delivered and will be skipped",
                        type(exc).__name__, exc)

    def _bad(self, tp: TopicPartition, offset: int, view: str, exc: Exception) -> None:
        self.stats.decode_errors += 1
        DECODE_ERRORS.labels(tp.topic, view).inc()
        key = f"{tp.topic}/{view}"
        seen = self._bad_logged.get(key, 0) + 1
        self._bad_logged[key] = seen
        if seen <= 10 or seen % 1000 == 0:
            log.warning("stream: skipped undecodable record %s:%d@%d%s: %s (%d so far)", tp.topic, tp.partition,
                        offset, f" for view {view}" if view else "", exc, seen)

    def _update_lag(self) -> None:
        total, known = 0, True
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)  # from fetch responses: exact, and free (no request)
            if hw is None:
                known = False
                continue
            lag = max(0, hw - self.consumer.position(tp))
            total += lag
            LAG.labels(tp.topic, str(tp.partition)).set(lag)
        self.stats.lag = total if known and self.consumer.assignment() else None

    def _caught_up(self) -> bool:
        return self.stats.lag == 0

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_interval_s:
            return
        delta = self.stats.minus(self._last_logged_stats)
        delta.seconds = now - self._last_log
        log.info("stream: %s | total records=%d applied=%d", delta.summary(), self.stats.records, self.stats.applied)
        self._last_log = now
        self._last_logged_stats = self.stats.copy()


__all__ = ["StreamStats", "StreamingUpdater"]
