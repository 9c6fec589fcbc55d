"""The streaming joiner: impressions ⋈ events -> labelled samples on Kafka, exactly once in effect.

Reads the impressions topic (``records_pb2.Impression``) and the events topic
(``events_pb2.Event``), joins them by ``(request_id, item_id)`` in
:class:`streaming.join_state.JoinState` (clicks before their impression,
duplicates, orphans, late records, bounded state, the event-time watermark:
see there) and writes one ``records_pb2.LabeledSample`` per impression to the
samples topic, keyed by ``user_id``: label 1 as soon as a positive event
joins, label 0 when the attribution window closes.

Guarantee
---------
For every distinct ``sample_id`` among the valid impression records read
(decodable, with request, item and user ids), except impressions dropped as
*expired* (their window ended before the dedup floor; counted), the samples
topic receives **exactly one record** -- after any number of crashes
(``kill -9`` at any instruction), restarts, Kafka send failures or Redis
failures. No loss, and no duplicate *in the topic* (not merely "duplicates
downstream de-duplicates"), so consumers need no de-duplication of their own
for a single joiner per group. Two assumptions: one joiner runs per
``joiner_group`` at a time (a second start fences the first: its next
checkpoint fails and it stops, see below), and a produce request that the
broker received from a killed joiner is appended before the restarted joiner
has read the output tail (a restart takes seconds; a loopback append, micro-
seconds). Labels of samples written before a crash and replayed after it are
the ones first written.

How (read-your-own-output recovery)
-----------------------------------
* Partitions are assigned manually (no consumer-group protocol: nothing to
  rebalance, instant start); input offsets live in the checkpoint, not in Kafka.
* Samples go out as they are made (batched per partition, at most
  ``joiner_linger_ms`` later; :mod:`streaming.sample_writer`).
* Every ``joiner_checkpoint_interval_s``: flush the writer (every sample
  written so far is acknowledged, or the flush raises), read the samples
  topic's end offsets, then write -- in one Redis MULTI/EXEC guarded by the
  joiner's epoch (:mod:`streaming.join_checkpoint`) -- the state changes since
  the last checkpoint (emitted-sample markers, early events, the ids of the
  impressions opened), the input offsets, per impressions partition the
  offset of the oldest impression that may still be open, and those output
  end offsets. Open impressions themselves are not stored: the impressions
  topic holds them (the bulk of the state, most closing within a window),
  so a checkpoint costs what closed, not what arrived. (Tansu answers
  ListOffsets with a lower bound of the end -- the last batch's base offset
  + 1 --, which is all this needs: every later sample lies beyond it.)
* Recovery (every start, and after a failed send or Redis error): wait until
  no produce request is in flight, load the checkpoint, read the samples
  topic from the checkpointed end offsets to its real end (the fetch high
  watermark): those samples were written after the checkpoint, so their ids
  are marked emitted; then re-read the inputs from the checkpointed offsets,
  the impressions from the oldest one still open: below the checkpointed
  offset only the records that opened an impression still open then open
  it again (:meth:`streaming.join_state.JoinState.replay_impressions`; so
  the impressions topic must retain an attribution window of records).
  Replayed impressions and clicks meet the markers and are not written
  again; the samples that had not landed are written now. The writer never
  retries on its own (a retry can append twice); a failed send is a recovery.

Why not Kafka transactions: probed against the Tansu broker with kafka-python
3.0 (``init_transactions`` / ``commit`` / ``abort`` all succeed), a
``read_committed`` consumer still receives the records of an *aborted*
transaction -- aborting does not hide output there, so transactions cannot
make it exactly-once; and they could not cover the join state in Redis anyway.

Why event time: see :class:`streaming.join_state.Watermark` (processing-time
fallback for quiet streams included).

Scaling: impressions and events are keyed by user_id, so they are
co-partitioned (same partition count, same key hash): a user's clicks are in
the events partition with the number of their impressions' partition. One
joiner reads every partition by default; `partitions` (``--partitions 0,2``)
gives a joiner a subset -- impressions *and* events partitions of those
numbers -- with a checkpoint of its own (``<group>@0,2``), so N processes with
disjoint subsets share the work. A sample goes to the samples partition of
its impression's number when the samples topic has as many partitions as the
impressions topic (the partition its key hashes to; a subset joiner then also
reads back only its own), else to the key's hash. Partitions added to a topic
are picked up at the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from kafka import TopicPartition

from streaming import joiner_metrics as M
from streaming.join_checkpoint import CheckpointFenced, JoinCheckpoint
from streaming.join_state import (
    JoinCounts,
    JoinState,
    Watermark,
    encode_entries,
    event_type_numbers,
    parse_sample_id,
)
from streaming.sample_writer import BatchSampleWriter, OutputTail, SampleWriteError, SampleWriter, make_writer, topic_partitions

log = logging.getLogger(__name__)

_SNAPSHOT_ENTRIES = 32_768  # per snapshot chunk (a Redis list element): a few MB
_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True)
class JoinerTopics:
    """Physical topic names; `from_config` takes the configured ones (config.kafka.topics keys)."""

    impressions: str
    events: str
    samples: str

    @classmethod
    def from_config(cls, config: Any, **overrides: str | None) -> "JoinerTopics":
        names = {role: role for role in ("impressions", "events", "samples")}
        missing = [n for n in names if n not in config.kafka.topics]
        if missing:
            raise ValueError(f"config.kafka.topics lacks {missing}")
        names.update({k: v for k, v in overrides.items() if v})
        return cls(**names)


@dataclass
class JoinerStats:
    """What one `run` did (counts are deltas over the run)."""

    counts: JoinCounts = field(default_factory=JoinCounts)
    records: int = 0
    seconds: float = 0.0
    checkpoints: int = 0
    compactions: int = 0  # checkpoints that rewrote the snapshot
    recoveries: int = 0
    recovered_samples: int = 0
    lag: int | None = None
    idle: bool = False
    open: int = 0
    emitted_markers: int = 0
    watermark_ms: int | None = None

    def summary(self) -> str:
        c = self.counts
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        return (f"records={self.records} ({rate:,.0f}/s) samples={c.samples} (pos={c.positives} neg={c.negatives}) "
                f"orphan_clicks={c.orphan_clicks} dup={c.duplicate_impressions + c.duplicate_clicks} "
                f"late={c.late_clicks} overflow={c.closed_overflow} no_request_id={c.no_request_id} "
                f"invalid={c.invalid} open={self.open} markers={self.emitted_markers} lag={self.lag} "
                f"checkpoints={self.checkpoints} recoveries={self.recoveries}")


def input_consumer_options(config: Any) -> dict[str, Any]:
    """KafkaConsumer settings of the joiner's input consumer (also the benchmark's raw-consume baseline)."""
    s = config.streaming
    return {"max_poll_records": s.joiner_poll_max_records, "fetch_max_wait_ms": s.joiner_fetch_max_wait_ms,
            "max_partition_fetch_bytes": int(s.joiner_fetch_partition_mb * 1024 * 1024),
            "fetch_max_bytes": 16 * 1024 * 1024}


def tune_gc() -> None:
    """GC settings for a joiner process: its state is millions of small long-lived tuples, which every default
    gen-2 collection walks again (~10 % of the joiner's CPU in bench joiner). Freeze what exists after start-up
    and collect the young generation 70x less often. Process-wide: the CLI calls it, not the class."""
    import gc

    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, 50_000), max(gen1, 50), max(gen2, 1000))


def resolve_feature_set(config: Any) -> tuple[str, int] | None:
    """(name, version) for LabeledSample.features.feature_set: the configured set at the live registry version."""
    name = config.streaming.joiner_feature_set or config.ranking.feature_set
    if not name:
        return None
    try:
        from featurestore.registry import Registry

        live = Registry.from_config(config).live
        if live is None:
            return None
        return name, int(live.feature_set_version(name))
    except Exception:  # noqa: BLE001 - no registry / unknown set: leave the reference unset
        log.info("joiner: feature set %r has no applied registry version; samples leave features.feature_set unset", name)
        return None


class Joiner:
    """One joiner instance for `group` (default ``streaming.joiner_group``); see the module docstring.

    Drive it with :meth:`run` (until :meth:`stop`, `seconds`, or
    `until_idle`: every input partition consumed to its end; `drain` then
    also closes every open impression as a negative before the final
    checkpoint -- end of input, for tests and backfills).
    """

    def __init__(self, config: Any, redis_client: Any, bootstrap: str, *, topics: JoinerTopics | None = None,
                 group: str | None = None, partitions: Sequence[int] | None = None,
                 feature_set: tuple[str, int] | None | str = "auto", writer: str = "batch",
                 log_interval_s: float = 10.0, clock_ms: Callable[[], int] | None = None) -> None:
        s = config.streaming
        self.config = config
        self.topics = topics or JoinerTopics.from_config(config)
        self.partitions = sorted(set(partitions)) if partitions is not None else None
        if self.partitions is not None and not self.partitions:
            raise ValueError("an empty partition subset")
        base = group or s.joiner_group
        self.group = base if self.partitions is None else f"{base}@{','.join(map(str, self.partitions))}"
        self.redis = redis_client
        self.bootstrap = bootstrap
        self.window_ms = int(round(s.attribution_window_s * 1000))
        self.positive = event_type_numbers(s.positive_event_types)
        self.checkpoint_interval_s = s.joiner_checkpoint_interval_s
        self.poll_max = s.joiner_poll_max_records
        self.compact_min_bytes = int(s.joiner_compact_min_mb * 1024 * 1024)
        self.log_interval_s = log_interval_s
        self.clock_ms = clock_ms
        self.writer_kind = writer
        self.feature_set = resolve_feature_set(config) if feature_set == "auto" else feature_set
        self.checkpoint = JoinCheckpoint(redis_client, s.joiner_key_prefix, self.group)
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self.epoch = 0
        self.stats_total = JoinerStats()
        self.counts = JoinCounts()  # cumulative over recoveries (each recovery builds a new JoinState)
        self.consumer: Any = None
        self.writer: SampleWriter | BatchSampleWriter | None = None
        self.tail: OutputTail | None = None
        self.state: JoinState = self._new_state()
        self.watermark = Watermark(int(s.joiner_allowed_lateness_s * 1000), int(s.joiner_idle_advance_s * 1000))
        self.positions: dict[TopicPartition, int] = {}
        # Per impressions partition: (first offset, latest close time) of each poll's records, oldest first -- the
        # oldest entry whose close time the watermark has not passed is where a recovery re-reads from (_meta)
        self._open_from: dict[TopicPartition, deque[tuple[int, int]]] = {}
        self._replay_until: dict[TopicPartition, int] = {}  # re-reading up to the checkpointed offset (recovery)
        self.input_tps: list[TopicPartition] = []
        self.out_partition: dict[int, int | None] = {}
        self._unsaved: list[bytes] = []
        self._snapshot_bytes = 0
        self._delta_bytes = 0
        self._published = self.counts.copy()
        self._last_checkpoint = 0.0
        self._last_log = 0.0
        self._logged = JoinCounts()
        self._logged_records = 0

    # ------------------------------------------------------------------ wiring
    def _new_state(self) -> JoinState:
        s = self.config.streaming
        return JoinState(window_ms=self.window_ms, positive_types=self.positive, max_pending=s.joiner_max_pending,
                         max_emitted=s.joiner_max_emitted, retention_ms=int(s.joiner_dedup_retention_s * 1000),
                         emit=None, feature_set=self.feature_set, clock_ms=self.clock_ms, counts=self.counts)

    def _write_output(self) -> None:
        """The samples the state made, to the writer (a poll's worth at a time)."""
        if self.state.out:
            write, where = self.writer.write_runs, self.out_partition  # type: ignore[union-attr]
            for partition, runs in self.state.take_output().items():
                write(runs, where.get(partition))

    def start(self) -> None:
        """Connect, take over the group (epoch) and recover from the checkpoint. `run` calls it."""
        if self._started:
            return
        from stack.clients import kafka_consumer

        kc = self.config.kafka
        timeout_s = kc.request_timeout_ms / 1000
        self.consumer = kafka_consumer(self.bootstrap, kc, None, **input_consumer_options(self.config))
        try:
            imp = topic_partitions(self.consumer, self.topics.impressions, timeout_s)
            ev = topic_partitions(self.consumer, self.topics.events, timeout_s)
            if self.partitions is not None:
                if imp != ev:
                    raise ValueError(f"a partition subset needs co-partitioned inputs: {self.topics.impressions} has "
                                     f"{len(imp)} partitions, {self.topics.events} {len(ev)}")
                missing = sorted(set(self.partitions) - set(imp))
                if missing:
                    raise ValueError(f"partitions {missing} do not exist (the inputs have {len(imp)})")
                imp = ev = list(self.partitions)
            self.input_tps = ([TopicPartition(self.topics.impressions, p) for p in imp]
                              + [TopicPartition(self.topics.events, p) for p in ev])
            self.consumer.assign(self.input_tps)
            self.tail = OutputTail(self.bootstrap, kc, self.topics.samples)
            n_in = len(topic_partitions(self.consumer, self.topics.impressions, timeout_s))
            same = len(self.tail.all_partitions) == n_in
            self.out_partition = {p: (p if same else None) for p in imp}
            if same and self.partitions is not None:
                self.tail.only(list(self.partitions))  # only this subset's samples land there
            self.writer = make_writer(self.bootstrap, kc, self.topics.samples, self.writer_kind,
                                      self.config.streaming.joiner_linger_ms)
            self.epoch = self.checkpoint.acquire()
            self._started = True
            self._recover("start")
        except BaseException:
            self.close()
            raise

    def _recover(self, reason: str) -> None:
        """Rebuild state and positions from the checkpoint and the output tail (see the module docstring)."""
        t0 = time.monotonic()
        M.RECOVERIES.labels(reason).inc()
        self.stats_total.recoveries += 1
        assert self.writer is not None and self.tail is not None
        self.writer.reset()
        stored = self.checkpoint.load()
        self.state = self._new_state()
        s = self.config.streaming
        self.watermark = Watermark(int(s.joiner_allowed_lateness_s * 1000), int(s.joiner_idle_advance_s * 1000))
        self._unsaved = []
        self._open_from = {tp: deque() for tp in self.input_tps if tp.topic == self.topics.impressions}
        self._replay_until = {}
        begin = self.consumer.beginning_offsets(self.input_tps)
        found = 0
        if stored is None:
            positions = {tp: int(begin[tp]) for tp in self.input_tps}
            out = self.tail.end_offsets()
            self.positions = positions
            self._write_snapshot(out)  # before anything is written: a crash from here on knows where output began
            log.info("joiner %s: no checkpoint, starting at the inputs' beginning", self.group)
        else:
            meta = stored.meta
            saved = meta.get("topics", {})
            current = {"impressions": self.topics.impressions, "events": self.topics.events,
                       "samples": self.topics.samples}
            if saved and saved != current:
                raise ValueError(f"checkpoint of group {self.group!r} was written for topics {saved}, not {current}; "
                                 "use another group or reset it (cascade streaming join --reset)")
            state = self.state
            state.load_blobs(stored.blobs)
            state.set_times(int(meta["watermark_ms"]), int(meta["floor_ms"]))
            self.watermark.value = state.watermark_ms
            self._snapshot_bytes = int(meta.get("snapshot_bytes", 0))
            self._delta_bytes = sum(len(d) for d in stored.deltas)
            offsets = meta.get("in", {})
            self.positions = {tp: max(int(offsets.get(f"{tp.topic}:{tp.partition}", 0)), int(begin[tp]))
                              for tp in self.input_tps}
            replay = meta.get("replay")
            if replay is None:  # written before open impressions were re-read: the checkpoint holds them all
                state.pin_open()
            else:
                for tp in self._open_from:
                    until = self.positions[tp]
                    start = int(replay.get(f"{tp.topic}:{tp.partition}", until))
                    if start < int(begin[tp]):
                        log.error("joiner %s: %s:%d no longer has the impressions from offset %d on that were open "
                                  "at the checkpoint (it begins at %d: retention shorter than the attribution "
                                  "window?); those before are lost", self.group, tp.topic, tp.partition, start,
                                  begin[tp])
                        start = int(begin[tp])
                    if start < until:
                        self.positions[tp] = start
                        self._replay_until[tp] = until
                if not self._replay_until:
                    state.reopen.clear()
            out_start = {int(p): int(o) for p, o in meta.get("out", {}).items()}
            for value in self.tail.read(out_start):
                parsed = parse_sample_id(value)
                if parsed is None:
                    continue
                sid, imp_ms, label = parsed
                if state.mark_emitted(sid, imp_ms + self.window_ms, label):
                    state.recovered.add(sid)
                    found += 1
        for tp, offset in self.positions.items():
            self.consumer.seek(tp, offset)
        M.RECOVERED_SAMPLES.inc(found)
        self.stats_total.recovered_samples += found
        self._last_checkpoint = time.monotonic()
        log.info("joiner %s: recovered (%s) in %.2fs: open=%d markers=%d, %d samples already in the output after the "
                 "checkpoint", self.group, reason, time.monotonic() - t0, self.state.n_open, self.state.n_done, found)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Finish the batch in hand, flush, checkpoint and return from `run` (safe from a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for part in (self.writer, self.tail):
            if part is not None:
                part.close()
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self) -> "Joiner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, seconds: float | None = None, *, until_idle: bool = False, drain: bool = False) -> JoinerStats:
        """Join until stop() (or `seconds`, or idle with `until_idle`/`drain`); always ends with a checkpoint."""
        before = self.counts.copy()
        total = self.stats_total
        records0, ckpt0, comp0, rec0, found0 = (total.records, total.checkpoints, total.compactions, total.recoveries,
                                                total.recovered_samples)
        t0 = time.monotonic()
        self.start()  # a first start's recovery counts in this run
        deadline = t0 + seconds if seconds is not None else None
        idle = False
        backoff = 0.1
        self._last_log = t0
        recover: str | None = None
        while True:
            try:
                if recover is not None:
                    self._recover(recover)
                    recover = None
                while not self._stop.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    self._step()
                    # consumed to the end as of the last fetch responses: idle now, no empty poll (200 ms) to wait out
                    if (until_idle or drain) and self._caught_up():
                        idle = True
                        if drain:
                            self.state.drain()
                        break
                    if time.monotonic() - self._last_checkpoint >= self.checkpoint_interval_s:
                        self._checkpoint()
                    self._maybe_log()
                    backoff = 0.1
                self._checkpoint(final=True)
                break
            except (SampleWriteError, redis.RedisError) as exc:
                # Whatever was not checkpointed is rebuilt from the checkpoint and the output tail; the checkpoint in
                # Redis stays consistent meanwhile, so stopping here loses nothing either.
                log.warning("joiner %s: %s: %s; recovering from the checkpoint in %.1fs", self.group,
                            type(exc).__name__, exc, backoff)
                if self._stop.wait(backoff):
                    break
                backoff = min(_MAX_BACKOFF_S, backoff * 2)
                recover = "write_error" if isinstance(exc, SampleWriteError) else "redis_error"
        total = self.stats_total
        run = JoinerStats(counts=self.counts.minus(before),
                          records=total.records - records0, seconds=time.monotonic() - t0,
                          checkpoints=total.checkpoints - ckpt0, compactions=total.compactions - comp0,
                          recoveries=total.recoveries - rec0,
                          recovered_samples=total.recovered_samples - found0, lag=self._lag(), idle=idle,
                          open=self.state.n_open, emitted_markers=self.state.n_done,
                          watermark_ms=self.state.watermark_ms)
        log.info("joiner %s: run ended: %s", self.group, run.summary())
        return run

    # ------------------------------------------------------------------ loop
    def _step(self) -> int:
        # Records already fetched first, without waiting: kafka-python 3.0's poll sleeps retry_backoff_ms (100 ms)
        # when a fetch response is processed on its IO thread between its drain and its next fetch (the response
        # waited in the socket while this thread held the GIL, joining) -- it finds nothing in flight and nothing
        # drained and takes itself for idle, with a full buffer. A poll without a timeout never sleeps; the one
        # after it finds the buffer filled (or waits for the fetch in flight).
        polled = self.consumer.poll(timeout_ms=0, max_records=self.poll_max)
        if not polled:
            polled = self.consumer.poll(timeout_ms=200, max_records=self.poll_max)
        state, wm = self.state, self.watermark
        imp_topic = self.topics.impressions
        n = 0
        for tp, records in polled.items():
            if not records:
                continue
            n += len(records)
            if tp.topic == imp_topic:
                until = self._replay_until.get(tp)
                if until is None:
                    newest = state.impressions(records, tp.partition)
                else:
                    newest = self._replay(tp, records, until)
                if newest >= 0:
                    polls = self._open_from[tp]
                    close = newest + self.window_ms
                    if not polls or polls[-1][1] < close:  # (an older poll closing later covers this one)
                        polls.append((records[0].offset, close))
            else:
                newest = state.events(records)
            if newest >= 0:
                wm.observe(tp, newest)
            self.positions[tp] = records[-1].offset + 1
            M.RECORDS_IN.labels(tp.topic).inc(len(records))
        self.stats_total.records += n
        caught = self._caught_up_set()
        state.advance(wm.update(self.input_tps, caught, time.monotonic()))
        self._write_output()
        self.writer.poll()  # type: ignore[union-attr]
        self._publish()
        return n

    def _replay(self, tp: TopicPartition, records: list[Any], until: int) -> int:
        """Impression records of a recovery's re-read: those below the checkpointed offset `until` as
        :meth:`JoinState.replay_impressions`, the rest as usual."""
        state = self.state
        if records[-1].offset < until:
            return state.replay_impressions(records, tp.partition)
        cut = 0
        while records[cut].offset < until:
            cut += 1
        newest = state.replay_impressions(records[:cut], tp.partition) if cut else -1
        del self._replay_until[tp]
        if not self._replay_until:  # every id to re-open was met (or lies below a truncated log's start)
            state.reopen.clear()
        return max(newest, state.impressions(records[cut:], tp.partition))

    def _caught_up_set(self) -> list[TopicPartition]:
        out = []
        for tp in self.input_tps:
            hw = self.consumer.highwater(tp)
            if hw is not None and self.positions.get(tp, 0) >= hw:
                out.append(tp)
        return out

    def _caught_up(self) -> bool:
        return len(self._caught_up_set()) == len(self.input_tps)

    def _lag(self) -> int | None:
        if self.consumer is None:
            return None
        total = 0
        for tp in self.input_tps:
            hw = self.consumer.highwater(tp)
            if hw is None:
                return None
            total += max(0, hw - self.positions.get(tp, 0))
        return total

    def _publish(self) -> None:
        """Counters to Prometheus once per batch (not per record)."""
        c, p = self.state.counts, self._published
        for name, (metric, label) in M.COUNT_METRICS.items():
            d = getattr(c, name) - getattr(p, name)
            if d:
                metric.labels(label).inc(d)
        self._published = c.copy()
        M.PENDING.labels("open").set(self.state.n_open)
        M.PENDING.labels("emitted").set(self.state.n_done)
        wm = self.state.watermark_ms
        if wm > 0:
            M.WATERMARK.set(wm / 1000)
            M.WATERMARK_DELAY.set(time.time() - wm / 1000)

    def _checkpoint(self, final: bool = False) -> None:
        """Flush the output, then commit state changes + input offsets + output end offsets atomically."""
        t0 = time.perf_counter()
        assert self.writer is not None and self.tail is not None
        self._write_output()  # e.g. what drain() closed
        self.writer.flush()  # SampleWriteError -> recovery
        out = self.tail.end_offsets()
        self._unsaved += self.state.take_delta_blobs()
        pending_bytes = sum(len(d) for d in self._unsaved)
        compact = self._delta_bytes + pending_bytes > max(self.compact_min_bytes, 2 * self._snapshot_bytes)
        try:
            if compact:
                self._write_snapshot(out)
                self.stats_total.compactions += 1
                M.CHECKPOINTS.labels("compacted").inc()
            else:
                self.checkpoint.commit(self.epoch, self._unsaved, self._meta(out))
                self._delta_bytes += pending_bytes
                self._unsaved = []
                M.CHECKPOINTS.labels("ok").inc()
        except CheckpointFenced:
            raise
        except redis.RedisError as exc:
            M.CHECKPOINTS.labels("redis_error").inc()
            if final:
                raise
            log.warning("joiner %s: checkpoint failed (%s: %s); kept, retried at the next one", self.group,
                        type(exc).__name__, exc)
            self._last_checkpoint = time.monotonic()
            return
        self.stats_total.checkpoints += 1
        self._last_checkpoint = time.monotonic()
        M.CHECKPOINT_SECONDS.observe(time.perf_counter() - t0)
        for tp in self.input_tps:
            hw = self.consumer.highwater(tp)
            if hw is not None:
                M.LAG.labels(tp.topic, str(tp.partition)).set(max(0, hw - self.positions.get(tp, 0)))

    def _write_snapshot(self, out: dict[int, int]) -> None:
        items = list(self.state.snapshot())
        chunks = [encode_entries(items[i:i + _SNAPSHOT_ENTRIES]) for i in range(0, len(items), _SNAPSHOT_ENTRIES)]
        self._snapshot_bytes = sum(len(c) for c in chunks)
        self.checkpoint.compact(self.epoch, chunks, self._meta(out))
        self.state.clear_delta()
        self._unsaved = []
        self._delta_bytes = 0

    def _meta(self, out: dict[int, int]) -> dict[str, Any]:
        return {
            "topics": {"impressions": self.topics.impressions, "events": self.topics.events,
                       "samples": self.topics.samples},
            "in": {f"{tp.topic}:{tp.partition}": max(off, self._replay_until.get(tp, 0))
                   for tp, off in self.positions.items()},
            "replay": self._replay_offsets(),
            "out": {str(p): o for p, o in out.items()},
            "watermark_ms": self.state.watermark_ms,
            "floor_ms": self.state.floor_ms,
            "snapshot_bytes": self._snapshot_bytes,
            "open": self.state.n_open,
            "emitted": self.state.n_done,
            "updated_ms": int(time.time() * 1000),
        }

    def _replay_offsets(self) -> dict[str, int]:
        """Per impressions partition, where a recovery re-reads from: the first offset of the oldest poll that may
        hold an impression still open (its latest close time not passed by the watermark; conservative: some of
        it may have closed otherwise); the read position when none may (or when nothing is open at all)."""
        wm, out = self.state.watermark_ms, {}
        nothing_open = self.state.n_open == 0
        for tp, polls in self._open_from.items():
            while polls and (nothing_open or polls[0][1] <= wm):
                polls.popleft()
            out[f"{tp.topic}:{tp.partition}"] = polls[0][0] if polls else self.positions[tp]
        return out

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_interval_s:
            return
        c = self.state.counts
        d = c.minus(self._logged)
        records = self.stats_total.records - self._logged_records
        dt = now - self._last_log
        log.info("joiner %s: %.0f records/s, %d samples (pos %d, neg %d), open=%d markers=%d lag=%s wm_delay=%.1fs",
                 self.group, records / dt, d.samples, d.positives, d.negatives, self.state.n_open, self.state.n_done,
                 self._lag(), time.time() - self.state.watermark_ms / 1000 if self.state.watermark_ms > 0 else -1)
        self._last_log = now
        self._logged = c.copy()
        self._logged_records = self.stats_total.records


__all__ = ["Joiner", "JoinerStats", "JoinerTopics", "input_consumer_options", "resolve_feature_set", "tune_gc"]
