"""The joiner's state machine: impressions ⋈ events -> labelled samples, driven by an event-time watermark.

Pure logic, no I/O: :class:`JoinState` is fed raw Kafka values
(``records_pb2.Impression`` and ``events_pb2.Event``) a poll at a time, is
told the watermark, and hands finished samples over as Kafka records without
their framing (:meth:`JoinState.take_output`), or as (value, key) to an
``emit`` callback. :mod:`streaming.joiner`
wires it to Kafka and Redis. Everything here is deterministic given the inputs,
so it is unit-tested without servers.

Cost. The joiner does this work for every record it consumes, in Python, so
the per-record paths are loops over a poll's records with the state in local
variables: only the fields the join and the sample need are decoded (slim
message types, strings as bytes), an impression's negative sample is encoded
once on arrival, as the Kafka record it becomes, by one join of table
lookups; closing windows, emitting and marking are one inline loop, and the
checkpoint's delta is written as it happens (markers); open impressions are
not in it at all (re-read from the input at recovery). State entries are bytes and ints, never tuples, for the hot
kinds: no work for the garbage collector. Sample ids are UTF-8 bytes.

One entry per join key ``sample_id = "<request_id>:<item_id>"`` in one dict:

* **open impression** -- waiting for a positive event until its window closes
  (``impression time + attribution window <= watermark``), then a negative;
* **early events** -- events (a click, a dwell, ...) whose impression has not
  been read yet; joined when it comes, dropped as *orphans* (counted) when the
  watermark passes ``event time + window``;
* **emitted marker** -- the sample went out. A second click, a re-delivered
  event (same ``event_id``) or a duplicate impression hits the marker and is
  counted, never emitted again. Markers are kept until ``window end +
  dedup retention`` (event time) and at most ``max_emitted``; the newest
  window end of any forgotten marker is the *dedup floor*: an impression whose
  window ended at or before it is dropped as *expired* (counted) because it
  could be the duplicate of a forgotten sample. So no sample id is ever
  emitted twice.

Times. An impression's time is its ``timestamp_ms`` (serving time, server
clock). A click is attributed when it *happened* within the window: its
``timestamp_ms`` (client clock; the EventService refuses times more than 5
minutes ahead) is at most ``impression time + window`` -- and it is read
before the watermark closes the window. Progress uses server clocks only: an
event counts for the watermark (and for how long early events wait for their
impression) at its ``received_at_ms`` (the EventService's clock), so a client
clock running ahead cannot close other users' windows early. A record missing
a time uses its Kafka timestamp. ``click_timestamp_ms`` in the sample is the
event's ``timestamp_ms``.

Bounds. Open impressions + early-event entries are at most ``max_pending``:
beyond it the entry closing soonest closes now (an impression as a negative,
early events as orphans), counted as ``overflow``.

The state changes since the last checkpoint are taken with
:meth:`JoinState.take_delta_blobs` (applied in order after the state as of
the last checkpoint, they give the durable state now: all of it but the open
impressions without event types, which :meth:`JoinState.replay_impressions`
re-opens from the input) and stored by
:mod:`streaming.join_checkpoint`; :func:`encode_entries` /
:func:`decode_entries` are their wire form (earlier forms still load).
"""

from __future__ import annotations

import heapq
import struct
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from heapq import heappop, heappush
from itertools import accumulate
from operator import itemgetter
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as _ProtoDecodeError

from proto.cascade.v1.common_pb2 import FeatureSetRef, ModelVersion
from proto.cascade.v1.events_pb2 import Event, EventType
from proto.cascade.v1.records_pb2 import Impression, LabeledSample

# Entry kinds, one Python type each (the kind is the value's class):
#   OPEN (bytes): an open impression: _OPEN_HEAD (impression_ms, partition, number of types), the types, then the
#         sample-to-be (see JoinState._payload); it closes at impression_ms + window.
#   EARLY (tuple): (EARLY, close_ms, first positive event ms or -1, its client timestamp_ms, types, b"").
#   DONE (int): an emitted marker: window_end_ms * 2 + label; forgotten at window end + retention.
# `types` is the distinct event types seen, one byte each, in first-occurrence order. Why bytes and ints rather
# than tuples: open impressions and markers are the state (millions); one bytes object or one int takes a fraction
# of the memory of a tuple of ints and bytes, the garbage collector does not track them (young tuples made gen-0
# collections scan ~50k objects each, ~0.4 us per record), and a checkpoint stores them as they are.
# JoinState.entry() gives any entry as the tuple (kind, a, b, c, types, payload).
OPEN, EARLY, DONE = 0, 1, 2
_OPEN_HEAD = struct.Struct("<qHB")  # impression_ms, partition, len(types)
_OPEN_HEAD_SIZE = _OPEN_HEAD.size
_INT64 = struct.Struct("<q")
_KIND_OF = {bytes: OPEN, tuple: EARLY, int: DONE}
_TOMBSTONE = 255
_MAX_MS = 1 << 50  # times (ms) at or beyond +-35,000 years are invalid input: every stored time fits an int64
_END_OF_TIME = 1 << 80  # a watermark past every close time (drain)
Entry = bytes | tuple[int, int, int, int, bytes, bytes] | int

Emit = Callable[[bytes, bytes, int, int], None]  # (sample value, key (user_id), input partition, label)


# ----------------------------------------------------------------------------- slim input messages

_ABSENT = b"\xff"  # the slim model_version's default: absent (or that one invalid byte: HasField tells)
_MISSING = object()
_DECODE_ERRORS = (_ProtoDecodeError, RuntimeError)


def _slim_types() -> tuple[Any, Any, Any]:
    """Message types with only the fields the joiner reads of Impression, Event and LabeledSample.

    Why: parsing a slim type skips every other field unparsed (score,
    experiment, recall channels, properties) and reads strings as bytes --
    the sample id, the Kafka key and the sample are bytes anyway, so nothing
    is decoded to str and encoded back. Same numbers and wire types as the
    real messages (checked here); bytes are not checked for UTF-8 by the
    parser, so the joiner checks the strings it copies (an ASCII test, else a
    decode). proto2: presence of model_version through its default.
    """
    F = descriptor_pb2.FieldDescriptorProto
    B, I32, I64, FLT = F.TYPE_BYTES, F.TYPE_INT32, F.TYPE_INT64, F.TYPE_FLOAT
    layout = {
        (Impression, "Impression"): [("request_id", B), ("user_id", B), ("item_id", B), ("position", I32),
                                     ("model_version", B), ("served_feature_id", B), ("timestamp_ms", I64)],
        (Event, "Event"): [("type", I32), ("item_id", B), ("request_id", B), ("timestamp_ms", I64),
                           ("received_at_ms", I64)],
        (LabeledSample, "LabeledSample"): [("sample_id", B), ("label", FLT), ("impression_timestamp_ms", I64)],
    }
    wire = {F.TYPE_BYTES: 2, F.TYPE_STRING: 2, F.TYPE_MESSAGE: 2, F.TYPE_INT32: 0, F.TYPE_INT64: 0, F.TYPE_ENUM: 0,
            F.TYPE_FLOAT: 5}
    file = descriptor_pb2.FileDescriptorProto(name="cascade/joiner_slim.proto", package="cascade.joiner_slim",
                                              syntax="proto2")
    for (real, name), fields_ in layout.items():
        msg = file.message_type.add(name=name)
        for fname, ftype in fields_:
            full = real.DESCRIPTOR.fields_by_name[fname]
            if wire[full.type] != wire[ftype] or full.is_repeated:
                raise TypeError(f"{real.DESCRIPTOR.full_name}.{fname} changed its wire type: update _slim_types")
            field = msg.field.add(name=fname, number=full.number, type=ftype, label=F.LABEL_OPTIONAL)
            if fname == "model_version":
                field.default_value = "\\377"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"cascade.joiner_slim.{name}"))
                 for _, name in layout)  # type: ignore[return-value]


_SlimImpression, _SlimEvent, _SlimSample = _slim_types()


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
        return True
    except UnicodeDecodeError:
        return False



def event_type_numbers(names: Iterable[str]) -> frozenset[int]:
    """Decoded type names ("click", "like", ...) -> EventType numbers; ValueError for an unknown name."""
    out = set()
    for name in names:
        full = "EVENT_TYPE_" + name.strip().upper()
        try:
            number = EventType.Value(full)
        except ValueError:
            known = ", ".join(n[len("EVENT_TYPE_"):].lower() for n in EventType.keys()[1:])
            raise ValueError(f"unknown event type {name!r} (known: {known})") from None
        if number == 0:
            raise ValueError("EVENT_TYPE_UNSPECIFIED cannot be a positive type")
        out.add(number)
    if not out:
        raise ValueError("no positive event types configured")
    return frozenset(out)


def sample_id(request_id: str, item_id: str) -> bytes:
    """The deterministic id of an impression's sample (records.proto: "<request_id>:<item_id>"), as the state's
    keys are: UTF-8 bytes."""
    return f"{request_id}:{item_id}".encode()


@dataclass
class JoinCounts:
    """What happened to the records fed in (cumulative; `minus` for a delta)."""

    impressions: int = 0  # impression records read
    events: int = 0  # event records read
    positives: int = 0  # samples emitted with label 1
    negatives: int = 0  # samples emitted with label 0
    closed_watermark: int = 0  # negatives whose window closed by the watermark
    closed_overflow: int = 0  # negatives closed early because the state was full
    closed_drain: int = 0  # negatives closed by drain() (end of input)
    orphan_clicks: int = 0  # positive events whose impression never came within the window (dropped)
    orphan_events: int = 0  # other early events dropped the same way
    overflow_orphans: int = 0  # of those, dropped early because the state was full
    duplicate_impressions: int = 0  # an impression whose sample is open or already emitted
    duplicate_clicks: int = 0  # a positive event for an impression already emitted as a positive
    replayed: int = 0  # impressions re-read after a recovery whose sample was already in the output
    late_clicks: int = 0  # positive events after the impression's window (emitted as a negative, or window over)
    events_after_close: int = 0  # non-positive events for an emitted sample (ignored)
    no_request_id: int = 0  # events without request_id: not joinable, ignored
    invalid: int = 0  # undecodable values or records missing ids (skipped)
    expired_impressions: int = 0  # impressions whose window ended before the dedup floor (dropped)
    forgotten: int = 0  # emitted markers forgotten after their retention
    reopened: int = 0  # impressions re-read at recovery that were still open at the checkpoint (not in `impressions`)
    evicted_markers: int = 0  # emitted markers forgotten early (max_emitted)

    def minus(self, other: "JoinCounts") -> "JoinCounts":
        return JoinCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def copy(self) -> "JoinCounts":
        return JoinCounts(**vars(self))

    @property
    def samples(self) -> int:
        return self.positives + self.negatives


class Timeline:
    """Sample ids by a time (close, window end), taken in time order: buckets of 2**`shift` ms under a heap of them.

    Why not a heap of (time, id): a push and a pop cost ~1.5 us per impression,
    twice (close, then forget); a bucket is a list append. Items are not
    removed when their entry changes: when a bucket comes up, an item whose
    entry is no longer scheduled, or whose time moved to another bucket, is
    dropped there. Exact: nothing is taken before its time; only the order
    within a bucket is arbitrary. :class:`JoinState` takes due buckets with
    inline loops (``_close_due``, ``_forget_due``), the oldest item with
    :meth:`pop_first`.
    """

    __slots__ = ("shift", "lists", "keys")

    def __init__(self, shift: int = 7) -> None:
        self.shift = shift  # (a shift, not a division: times are big ints)
        self.lists: dict[int, deque[bytes]] = {}
        self.keys: list[int] = []  # heap of bucket numbers

    def add(self, t: int, sid: bytes) -> None:
        b = t >> self.shift
        lst = self.lists.get(b)
        if lst is None:
            self.lists[b] = deque((sid,))
            heapq.heappush(self.keys, b)
        else:
            lst.append(sid)

    def merge(self, b: int, sids: deque[bytes]) -> None:
        """Add the ids of a bucket of another timeline with the same buckets (taken over if `b` is new here)."""
        lst = self.lists.get(b)
        if lst is None:
            self.lists[b] = sids
            heapq.heappush(self.keys, b)
        else:
            lst.extend(sids)

    def next_time(self) -> int:
        """Start of the earliest bucket (a lower bound of the next time); a huge number when empty."""
        return self.keys[0] << self.shift if self.keys else 1 << 62

    def pop_first(self, time_of: Callable[[bytes], int | None]) -> bytes | None:
        """The oldest id (by bucket, then insertion), removed; None when empty."""
        keys, lists, shift = self.keys, self.lists, self.shift
        while keys:
            b = keys[0]
            lst = lists[b]
            while lst:
                sid = lst.popleft()
                t = time_of(sid)
                if t is not None and t >> shift == b:
                    return sid
            heapq.heappop(keys)
            del lists[b]
        return None


class _Record(tuple):
    """(value, timestamp): what the one-record entry points hand to the batch loops (a ConsumerRecord's fields)."""

    __slots__ = ()
    value = property(lambda self: self[0])
    timestamp = property(lambda self: self[1])


class JoinState:
    """Open impressions, early events and emitted markers, keyed by sample id (UTF-8 bytes).

    `emit(value, key, partition, label)` receives each serialized
    ``LabeledSample`` with its Kafka key (user_id) and the input partition of
    its impression, at the end of the call that made it; with `emit` None
    the samples wait in :attr:`out` for :meth:`take_output` (the joiner takes
    a poll's worth at a time). `feature_set` (name, version) fills
    ``LabeledSample.features.feature_set``; None leaves it unset.

    Input comes a poll at a time (:meth:`impressions`, :meth:`events`: tight
    loops over the records, the per-record work kept to what the join needs);
    :meth:`impression` / :meth:`event` feed one value.
    """

    def __init__(self, *, window_ms: int, positive_types: frozenset[int], max_pending: int, max_emitted: int,
                 retention_ms: int, emit: Emit | None, feature_set: tuple[str, int] | None = None,
                 clock_ms: Callable[[], int] | None = None, counts: JoinCounts | None = None) -> None:
        if window_ms <= 0:
            raise ValueError("the attribution window must be positive")
        if max_pending < 1 or max_emitted < 1:
            raise ValueError("max_pending and max_emitted must be >= 1")
        self.window_ms = int(window_ms)
        self.positive = positive_types
        self.max_pending = int(max_pending)
        self.max_emitted = int(max_emitted)
        self.retention_ms = int(retention_ms)
        self.emit = emit
        self.feature_set = feature_set
        self._feature_set_ref = (FeatureSetRef(name=feature_set[0], version=feature_set[1]).SerializeToString()
                                 if feature_set is not None else b"")
        self._fs_field = b"\x1a" + _ld(self._feature_set_ref) + self._feature_set_ref if feature_set is not None else b""
        self._mv_fields: dict[bytes, bytes | None] = {}  # model_version bytes -> its sample field (None: invalid)
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._now_ms = self.clock_ms()  # joined_at_ms of the samples made by the current call
        self.out: dict[int, list[tuple[bytes, bytes, int]]] = {}
        self.entries: dict[bytes, Entry] = {}
        self.n_open = 0  # OPEN + EARLY entries
        self.n_done = 0  # DONE entries
        self._closing = Timeline()  # OPEN/EARLY sids by close time (stale items skipped)
        # DONE sids by window end (forgotten at window end + retention): a closed bucket of _closing (an open
        # impression closes at its window end) is handed over as it is, no add per sample
        self._forgetting = Timeline()
        # The checkpoint's delta (take_delta_blobs): OPEN and EARLY entries changed since the last one, with their
        # value (an entry leaves when it closes; a list of ids to look up a second later costs cache misses), and
        # markers and removals in order, as they happened (the log: a marker as its value, a removal as _GONE),
        # written into the log block's columns at once, while the id is in the cache (see _Log).
        self.dirty: dict[bytes, bytes] = {}  # OPEN
        self.dirty_early: dict[bytes, tuple[int, int, int, int, bytes, bytes]] = {}
        self._log = _Log()
        self.watermark_ms = -(1 << 62)
        self.floor_ms = -(1 << 62)  # newest window end of a forgotten marker
        self.counts = counts if counts is not None else JoinCounts()  # shared across recoveries by the joiner
        self.recovered: set[bytes] = set()  # ids found in the output tail at recovery (to count replays apart)
        self.pinned: set[bytes] = set()  # open impressions every snapshot keeps (pin_open)
        self.reopen: dict[bytes, int] = {}  # id -> time of its impression open at the checkpoint loaded, to re-read

    # ------------------------------------------------------------------ input
    def impression(self, value: bytes, partition: int, record_ts: int = 0) -> int:
        """Feed one impressions-topic value; returns its event time (ms), or -1 if it was skipped as invalid."""
        return self.impressions((_Record((value, record_ts)),), partition)

    def event(self, value: bytes, record_ts: int = 0) -> int:
        """Feed one events-topic value; returns its time for the watermark (ms), or -1 if it was skipped."""
        return self.events((_Record((value, record_ts)),))

    def impressions(self, records: Sequence[Any], partition: int) -> int:
        """Feed impressions-topic records (``.value``, ``.timestamp``: Kafka ConsumerRecords) of one input partition.

        Returns the newest event time among the valid ones (-1: none). Only the
        fields the sample is made of are decoded (a slim message type: the rest
        of the record is skipped unparsed), and the sample's fixed part is
        encoded here, once, in the common case by one join of table lookups
        (see :func:`encode_payload` for the general case).
        """
        c = self.counts
        self._now_ms = self.clock_ms()
        entries = self.entries
        get = entries.get
        parse = _SlimImpression.FromString
        window = self.window_ms
        floor = self.floor_ms
        closing = self._closing
        closing_lists, closing_keys, shift = closing.lists, closing.keys, closing.shift
        last_b, last_list = None, None
        mv_fields = self._mv_fields
        fs = self._fs_field
        features_base = 4 + len(fs)  # features = {1: sf, 2: item, 3: feature set}: 4 bytes of tags + lengths
        Z, P, LO = ZIGZAG, _POSITION, _LOW14
        T0A, T12, T1A, T22, T4A = _TAGGED  # a field's tag and one-byte length: one lookup
        join = b"".join
        hi_last, hi_bytes, fixed = -1, b"", 0
        pack_ts = _INT64.pack
        part_head = _OPEN_HEAD.pack(0, partition, 0)[8:]  # the head after the time: partition, no types
        max_pending = self.max_pending
        n_open = self.n_open
        last_mv, last_mvf = None, None
        log = self._log
        log_sids, log_len, log_val = log.sids, log.lengths.append, log.values.append
        newest = -1
        invalid = expired = positives = 0
        min_ms, max_ms = -_MAX_MS, _MAX_MS
        joined = None  # a positive's joined_at_ms field, made at the first
        L = _LEN
        out_p, out_run = None, None
        dirty_early_pop, forget_add = self.dirty_early.pop, self._forgetting.add
        for rec in records:
            try:
                m = parse(rec.value)
            except _DECODE_ERRORS:
                invalid += 1
                continue
            req, item, user = m.request_id, m.item_id, m.user_id
            if not req or not item or not user:  # (and ids of at most 16,000 bytes: the general case checks)
                invalid += 1
                continue
            ts = m.timestamp_ms or rec.timestamp
            if not min_ms < ts < max_ms:  # a time no clock makes; it would close every window
                invalid += 1
                continue
            sid = req + b":" + item
            close = ts + window
            e = get(sid)
            if e is not None:
                if e.__class__ is not tuple:  # a marker or an open impression: a duplicate or a replay
                    self._impression_again(sid, e, m, ts, close, partition)
                    if ts > newest:
                        newest = ts
                    continue
                # else early events wait for it: joined below, once its entry is made
            elif close <= floor:
                expired += 1
                if ts > newest:
                    newest = ts
                continue
            # the payload (see _payload): key + the sample's fixed fields, time last; the general case apart
            sf = m.served_feature_id
            mv = m.model_version
            if mv != last_mv:  # (one model version for many impressions in a row)
                last_mvf = mv_fields.get(mv, _MISSING)
                if last_mvf is _MISSING:
                    last_mvf = self._mv_field(m)
                last_mv = mv
            mvf = last_mvf
            lr, li, lu, lf = len(req), len(item), len(user), len(sf)
            ls = lr + 1 + li
            if (mvf.__class__ is bytes and ts >= 16384 and ls | lu | lf < 128  # (all below 128)
                    and sid.isascii() and user.isascii() and sf.isascii()):
                # every length one varint byte: the body's length is a sum (its record length precedes it)
                hi = ts >> 14  # the time's varint: the low 14 bits from a table, the rest changes every 16 s
                if hi != hi_last:
                    hi_last, hi_bytes = hi, _uvarint(hi)
                    fixed = 11 + len(hi_bytes)  # the four ids' tags and lengths, the time's tag and bytes
                try:
                    pos = P[m.position]
                    if lf:
                        inner = lf + li + features_base
                        body_len = fixed + ls + lr + lu + li + 2 + inner + len(pos) + len(mvf)
                        entry = join((pack_ts(ts), part_head, Z[lu], user, Z[body_len + NEGATIVE_TAIL_LEN],
                                      T0A[ls], sid, T12[lr], req, T1A[lu], user, T22[li], item, T4A[inner],
                                      T0A[lf], sf, T12[li], item, fs, pos, mvf, b"\x38", LO[ts & 16383], hi_bytes))
                    else:
                        body_len = fixed + ls + lr + lu + li + len(pos) + len(mvf)
                        entry = join((pack_ts(ts), part_head, Z[lu], user, Z[body_len + NEGATIVE_TAIL_LEN],
                                      T0A[ls], sid, T12[lr], req, T1A[lu], user, T22[li], item, pos, mvf, b"\x38",
                                      LO[ts & 16383], hi_bytes))
                except (KeyError, IndexError):  # a position beyond the table; features of 128 bytes or more
                    entry = None
            else:
                entry = None
            if entry is None:
                payload = self._payload(sid, m, ts)
                if payload is None:
                    invalid += 1
                    continue
                entry = _OPEN_HEAD.pack(ts, partition, 0) + payload
            if ts > newest:
                newest = ts
            if e is not None:
                if 0 <= e[2] <= close:  # a positive event within the window came first: its sample now (inline
                    # _join_early -> _emit_sample -> mark_emitted: with events read ahead, most clicks come early)
                    types, click_ms = e[4], e[3]
                    if joined is None:
                        joined = b"\x60" + _time_varint(self._now_ms) if self._now_ms else b""
                    if 16384 <= click_ms < max_ms and len(types) < 128 and types.isascii():  # (positive_tail)
                        tail = join((_POSITIVE, b"\x32", L[len(types)], types, b"\x40", LO[click_ms & 16383],
                                     _uvarint(click_ms >> 14), joined))
                    else:
                        tail = positive_tail(types, click_ms, joined)
                    if partition != out_p:
                        out_p, out_run = partition, self._run(partition, b"")
                    out_run.append(_with_tail(entry[_OPEN_HEAD_SIZE:], tail))
                    entries[sid] = marker = close << 1 | 1
                    dirty_early_pop(sid, None)
                    log_sids += sid  # self._log.add(sid, marker), inline
                    log_len(len(sid))
                    log_val(marker)
                    forget_add(close, sid)
                    n_open -= 1
                    positives += 1
                    self.n_done += 1
                    if self.n_done > self.max_emitted:
                        self._evict_markers()
                    continue
                self.n_open = n_open
                self._join_early(sid, e, entry, ts, close, partition)
                n_open = self.n_open
                continue
            entries[sid] = entry  # only its id goes in the delta (replayed from the input, see take_delta_blobs)
            log_sids += sid  # self._log.add(sid, OPENED), inline
            log_len(len(sid))
            log_val(OPENED + ts)
            b = close >> shift  # self._closing.add(close, sid), inline
            if b == last_b:
                last_list.append(sid)
            else:
                last_list = closing_lists.get(b)
                if last_list is None:
                    last_list = closing_lists[b] = deque()
                    heappush(closing_keys, b)
                last_list.append(sid)
                last_b = b
            n_open += 1
            if n_open > max_pending:
                self.n_open = n_open
                self._overflow()
                n_open = self.n_open
                last_b = None  # the overflow may have emptied (and dropped) the cached bucket
        self.n_open = n_open
        c.impressions += len(records)
        c.positives += positives
        c.invalid += invalid
        c.expired_impressions += expired
        self._deliver()
        return newest

    def _join_early(self, sid: bytes, e: tuple[int, int, int, int, bytes, bytes], entry: bytes, ts: int, close: int,
                    partition: int) -> None:
        """The impression of early events `e` came (its open entry made, `entry`): a positive sample now if a
        positive event happened within its window, else it opens with their types."""
        pos_ms, types = e[2], e[4]
        payload = entry[_OPEN_HEAD_SIZE:]
        if 0 <= pos_ms <= close:
            self._emit_sample(sid, payload, partition, ts, 1, types, e[3])
            return
        if pos_ms >= 0:
            self.counts.late_clicks += 1
        self.dirty_early.pop(sid, None)
        self.entries[sid] = self.dirty[sid] = _OPEN_HEAD.pack(ts, partition, len(types)) + types + payload
        self._closing.add(close, sid)

    def _impression_again(self, sid: bytes, e: Entry, m: Any, ts: int, close: int, partition: int) -> None:
        """An impression whose sid has an open entry or a marker: a duplicate, or a replay after a recovery."""
        c = self.counts
        if e.__class__ is int and sid in self.recovered:
            self.recovered.discard(sid)
            c.replayed += 1
        else:
            c.duplicate_impressions += 1

    def events(self, records: Iterable[Any]) -> int:
        """Feed events-topic records (``.value``, ``.timestamp``); returns the newest time for the watermark (-1: none)."""
        c = self.counts
        self._now_ms = self.clock_ms()
        parse = _SlimEvent.FromString
        entries = self.entries
        get = entries.get
        dirty, dirty_early = self.dirty, self.dirty_early
        head = _OPEN_HEAD.unpack_from
        outs = self.out
        joined = b"\x60" + _time_varint(self._now_ms) if self._now_ms else b""
        L, Z, LO, join = _LEN, ZIGZAG, _LOW14, b"".join
        hi_last, hi_bytes = -1, b""
        last_p, run_append = None, None
        log_add, forget_add = self._log.add, self._forgetting.add
        positives = 0
        positive_types = self.positive
        window = self.window_ms
        newest = -1
        n = invalid = no_request = 0
        for rec in records:
            n += 1
            try:
                m = parse(rec.value)
            except _DECODE_ERRORS:
                invalid += 1
                continue
            req, item = m.request_id, m.item_id
            sid = req + b":" + item
            if not sid.isascii() and not _utf8(sid):
                invalid += 1
                continue
            client_ms = m.timestamp_ms
            ts = m.received_at_ms or client_ms or rec.timestamp  # server time: progress
            if not (-_MAX_MS < ts < _MAX_MS and -_MAX_MS < client_ms < _MAX_MS):  # see impressions()
                invalid += 1
                continue
            if ts > newest:
                newest = ts
            if not req:
                no_request += 1
                continue
            etype = m.type
            if not item or not 0 < etype < 256:
                invalid += 1
                continue
            cts = client_ms or ts  # when it happened: attribution
            positive = etype in positive_types
            e = get(sid)
            if e is None:
                close = ts + window
                entries[sid] = dirty_early[sid] = (EARLY, close, cts if positive else -1,
                                                   client_ms if positive else 0, bytes((etype,)), b"")
                self.n_open += 1
                self._closing.add(close, sid)
                if self.n_open > self.max_pending:
                    self._overflow()
                continue
            kind = _KIND_OF[e.__class__]
            if kind == OPEN:
                imp_ms, partition, nt = head(e)
                if cts > imp_ms + window:  # after the impression's window: not attributed
                    if positive:
                        c.late_clicks += 1
                    continue
                types = e[_OPEN_HEAD_SIZE:_OPEN_HEAD_SIZE + nt]
                if etype not in types:
                    types += bytes((etype,))
                if positive:  # the sample, now (_emit_sample and mark_emitted, inline)
                    at = _OPEN_HEAD_SIZE + nt
                    if 16384 <= client_ms < _MAX_MS and len(types) < 128 and types.isascii():  # (positive_tail)
                        hi = client_ms >> 14
                        if hi != hi_last:
                            hi_last, hi_bytes = hi, _uvarint(hi)
                        tail = join((_POSITIVE, b"\x32", L[len(types)], types, b"\x40", LO[client_ms & 16383],
                                     hi_bytes, joined))
                    else:
                        tail = positive_tail(types, client_ms, joined)
                    b0 = e[at]  # the payload's value length, rewritten for this tail (_with_tail)
                    k = at + 1 + (b0 >> 1)
                    if b0 < 0x80 and e[k] >= 0x80 and e[k + 1] < 0x80:
                        vlen = (((e[k] & 0x7F) | e[k + 1] << 7) >> 1) - NEGATIVE_TAIL_LEN + len(tail)
                        rest = join((e[at:k], Z[vlen], e[k + 2:], tail)) if 64 <= vlen < 8192 else None
                    else:
                        rest = None
                    if rest is None:
                        rest = _with_tail(e[at:], tail)
                    if partition != last_p:
                        runs = outs.get(partition)
                        if runs is None:
                            runs = outs[partition] = {}
                        run = runs.get(b"")
                        if run is None:
                            run = runs[b""] = []
                        run_append, last_p = run.append, partition
                    run_append(rest)
                    end = imp_ms + window
                    entries[sid] = marker = end << 1 | 1
                    if nt:  # (only an open impression with event types is in the delta)
                        dirty.pop(sid, None)
                    log_add(sid, marker)
                    forget_add(end, sid)
                    positives += 1
                    self.n_done += 1
                    self.n_open -= 1
                    if self.n_done > self.max_emitted:
                        self._evict_markers()
                elif len(types) > nt:
                    entries[sid] = dirty[sid] = (_OPEN_HEAD.pack(imp_ms, partition, len(types)) + types
                                                 + e[_OPEN_HEAD_SIZE + nt:])
            elif kind == EARLY:
                types = e[4] if etype in e[4] else e[4] + bytes((etype,))
                close = max(e[1], ts + window)
                if positive and e[2] >= 0:
                    c.duplicate_clicks += 1
                    if types is e[4] and close == e[1]:
                        continue
                    entries[sid] = dirty_early[sid] = (EARLY, close, e[2], e[3], types, b"")
                elif positive:
                    entries[sid] = dirty_early[sid] = (EARLY, close, cts, client_ms, types, b"")
                elif types is e[4] and close == e[1]:
                    continue
                else:
                    entries[sid] = dirty_early[sid] = (EARLY, close, e[2], e[3], types, b"")
                if close != e[1]:
                    self._closing.add(close, sid)
            else:  # DONE
                if positive:
                    if e & 1:
                        c.duplicate_clicks += 1
                    else:
                        c.late_clicks += 1
                else:
                    c.events_after_close += 1
        c.events += n
        c.invalid += invalid
        c.no_request_id += no_request
        c.positives += positives
        self._deliver()
        return newest

    # ------------------------------------------------------------------ time
    def advance(self, watermark_ms: int) -> None:
        """Move the watermark (never back): close windows that ended, drop orphans, forget old markers."""
        if watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        wm = self.watermark_ms
        self._now_ms = self.clock_ms()
        if self._closing.next_time() <= wm:
            self._close_due(wm, "watermark")
        if self._forgetting.next_time() + self.retention_ms <= wm:
            self._forget_due(wm)
        self._deliver()

    def drain(self) -> None:
        """End of input: close every open impression as a negative and drop every early event as an orphan."""
        self._now_ms = self.clock_ms()
        self._close_due(_END_OF_TIME, "drain")
        self._deliver()

    def _close_due(self, wm: int, cause: str) -> None:
        """Close every OPEN/EARLY entry whose close time is <= `wm` (``_close`` for each, inline for the common
        case: an open impression becomes a negative sample and a marker); each bucket taken goes on to
        `_forgetting` as it is (its markers' window end is their close time)."""
        tl = self._closing
        keys, lists, shift = tl.keys, tl.lists, tl.shift
        entries = self.entries
        get = entries.get
        outs = self.out
        tail = b"\x60" + _time_varint(self._now_ms) if self._now_ms else b""  # joined_at_ms (12): the only label field
        fast = len(tail) == NEGATIVE_TAIL_LEN  # what the payloads' value lengths count on
        window, H = self.window_ms, _OPEN_HEAD_SIZE
        head = _OPEN_HEAD.unpack_from
        dirty_pop = self.dirty.pop
        log = self._log
        log_sids, log_len, log_val = log.sids, log.lengths.append, log.values.append
        forgetting = self._forgetting
        last_p, run_append = None, None
        n_open = self.n_open
        closed = 0
        while keys and keys[0] << shift <= wm:
            b = keys[0]
            bucket = lists[b]
            keep = None
            for sid in bucket:
                e = get(sid)
                cls = e.__class__
                if cls is bytes:
                    imp_ms, p, nt = head(e)
                    end = imp_ms + window
                    if end >> shift != b:
                        continue  # stale (an impression re-read after early events closed and went)
                elif cls is tuple:  # early events
                    end = e[1]
                    if end >> shift != b:
                        continue  # stale: its close time moved to a later bucket
                else:
                    continue  # stale: closed (a marker) or gone
                if end > wm:
                    if keep is None:
                        keep = deque()
                    keep.append(sid)
                    continue
                if cls is tuple:
                    self.n_open = n_open
                    self._close(sid, cause)
                    n_open = self.n_open
                    continue
                if p != last_p:
                    runs = outs.get(p)
                    if runs is None:
                        runs = outs[p] = {}
                    run = runs.get(tail)
                    if run is None:
                        run = runs[tail] = []
                    run_append = run.append
                    last_p = p
                if fast:
                    run_append(e[H + nt:])  # the record as kept: no copy of the sample but this one
                else:
                    key, body = payload_parts(e[H + nt:])
                    self._run(p, b"").append(record_rest(key, body + tail))
                marker = end << 1
                entries[sid] = marker  # mark_emitted, inline
                if nt:  # (only an open impression with event types is in the delta)
                    dirty_pop(sid, None)
                log_sids += sid  # self._log.add(sid, marker), inline
                log_len(len(sid))
                log_val(marker)
                closed += 1
                n_open -= 1
            if keep:  # the bucket `wm` falls in
                lists[b] = keep
            else:
                heappop(keys)
                del lists[b]
            forgetting.merge(b, bucket)  # (its ids still open or gone are skipped there)
            self.n_open = n_open
            self.n_done += closed
            c = self.counts
            c.negatives += closed
            if cause == "watermark":
                c.closed_watermark += closed
            else:
                c.closed_drain += closed
            closed = 0
            if self.n_done > self.max_emitted:
                self._evict_markers()
            if keep:
                break

    def _forget_due(self, wm: int) -> None:
        """Forget every marker whose forget time (window end + retention) is <= `wm` (``_forget`` for each, inline)."""
        tl = self._forgetting
        keys, lists, shift = tl.keys, tl.lists, tl.shift
        entries = self.entries
        get = entries.get
        log = self._log
        log_sids, log_len, log_val = log.sids, log.lengths.append, log.values.append
        recovered = self.recovered
        floor = self.floor_ms
        retention = self.retention_ms
        n = 0
        while keys and (keys[0] << shift) + retention <= wm:
            b = keys[0]
            keep = None
            for sid in lists[b]:
                e = get(sid)
                if e.__class__ is not int:
                    continue
                end = e >> 1
                if end >> shift != b:
                    continue
                if end + retention > wm:
                    if keep is None:
                        keep = deque()
                    keep.append(sid)
                    continue
                del entries[sid]
                log_sids += sid
                log_len(len(sid))
                log_val(_GONE)
                n += 1
                if end > floor:
                    floor = end
                if recovered:
                    recovered.discard(sid)
            if keep:
                lists[b] = keep
                break
            heappop(keys)
            del lists[b]
        self.n_done -= n
        self.floor_ms = floor
        self.counts.forgotten += n

    def _close_time(self, sid: bytes) -> int | None:
        e = self.entries.get(sid)
        cls = e.__class__
        return _OPEN_HEAD.unpack_from(e)[0] + self.window_ms if cls is bytes else e[1] if cls is tuple else None

    def _window_end(self, sid: bytes) -> int | None:
        e = self.entries.get(sid)
        return e >> 1 if e.__class__ is int else None

    def _close(self, sid: bytes, cause: str) -> bool:
        e = self.entries.get(sid)
        cls = e.__class__
        if cls is not bytes and cls is not tuple:
            return False  # already closed (a sid listed twice)
        c = self.counts
        if cls is bytes:
            if cause == "watermark":
                c.closed_watermark += 1
            elif cause == "overflow":
                c.closed_overflow += 1
            else:
                c.closed_drain += 1
            imp_ms, partition, nt = _OPEN_HEAD.unpack_from(e)
            self._emit_sample(sid, e[_OPEN_HEAD_SIZE + nt:], partition, imp_ms, 0, b"", 0)
        else:
            self.n_open -= 1
            if e[2] >= 0:
                c.orphan_clicks += 1
            else:
                c.orphan_events += 1
            if cause == "overflow":
                c.overflow_orphans += 1
            del self.entries[sid]
            self.dirty_early.pop(sid, None)
            self._log.add(sid, _GONE)
        return True

    def _overflow(self) -> None:
        while self.n_open > self.max_pending:
            sid = self._closing.pop_first(self._close_time)
            if sid is None:
                return
            self._close(sid, "overflow")

    def _forget(self, sid: bytes) -> bool:
        e = self.entries.get(sid)
        if e.__class__ is not int:
            return False
        del self.entries[sid]
        self.n_done -= 1
        self._log.add(sid, _GONE)
        self.recovered.discard(sid)
        if e >> 1 > self.floor_ms:
            self.floor_ms = e >> 1
        return True

    # ------------------------------------------------------------------ output
    def _payload(self, sid: bytes, m: Any, ts: int) -> bytes | None:
        """What an open impression keeps: its Kafka key (user id, length-prefixed) and the sample's fixed fields.

        Encoded once, when the impression arrives: closing it only appends the
        label fields, and the checkpoint stores this rather than the whole
        impression (no score, experiment, recall channels). The general case
        of the loop in :meth:`impressions` (long ids, odd positions, non-ASCII
        text); None if a string is not UTF-8 or the model version does not
        decode -- what parsing the full ``Impression`` would have refused.
        """
        user, sf = m.user_id, m.served_feature_id
        if len(user) > 16_000:  # ids are 1-128 bytes (common.proto)
            return None
        mvf = self._mv_fields.get(m.model_version, _MISSING)
        if mvf is _MISSING:
            mvf = self._mv_field(m)
        if mvf is None or not all(s.isascii() or _utf8(s) for s in (sid, user, sf)):
            return None
        mv = m.model_version if mvf else None
        return encode_payload(sid, m.request_id, user, m.item_id, sf, m.position, mv, ts, self._feature_set_ref)

    def _mv_field(self, m: Any) -> bytes | None:
        """The sample's model_version field for `m`'s (remembered per distinct value: a handful of models serve);
        b"" when absent, None when it does not decode."""
        mv = m.model_version
        if mv == _ABSENT and not m.HasField("model_version"):
            return b""
        try:
            ModelVersion.FromString(mv)  # what the full parse would check: structure and UTF-8
            field = b"\x5a" + _ld(mv) + mv
        except _DECODE_ERRORS:
            field = None
        cache = self._mv_fields
        if len(cache) >= 1024:
            cache.clear()
        cache[mv] = field
        return field

    def _emit_sample(self, sid: bytes, payload: bytes, partition: int, imp_ms: int, label: int, types: bytes,
                     click_ms: int) -> None:
        self._run(partition, b"").append(_with_tail(payload, sample_tail(label, types, click_ms, self._now_ms)))
        self.mark_emitted(sid, imp_ms + self.window_ms, label)
        if label:
            self.counts.positives += 1
        else:
            self.counts.negatives += 1

    def _run(self, partition: int, tail: bytes) -> list[bytes]:
        runs = self.out.get(partition)
        if runs is None:
            runs = self.out[partition] = {}
        run = runs.get(tail)
        if run is None:
            run = runs[tail] = []
        return run

    def take_output(self) -> dict[int, dict[bytes, list[bytes]]]:
        """The samples made since the last call (with `emit` None), as Kafka records without their framing:
        input partition -> {tail: [record rest]}; a record is its rest, then the tail, then the header count (see
        :func:`record_rest`, :func:`iter_samples`). Negatives closed together share one tail (their joined_at
        field) and are their payloads as they were kept; every other sample has its own rest and the tail b""."""
        out, self.out = self.out, {}
        return out

    def _deliver(self) -> None:
        if self.emit is not None and self.out:
            emit = self.emit
            for partition, runs in self.take_output().items():
                for key, value in iter_samples(runs):
                    emit(value, key, partition, int(_SlimSample.FromString(value).label >= 0.5))

    def mark_emitted(self, sid: bytes, window_end_ms: int, label: int) -> bool:
        """Record that `sid`'s sample is in the output (also used at recovery for samples found in the topic).

        Returns False if it was already marked.
        """
        e = self.entries.get(sid)
        if e is not None:
            if e.__class__ is int:
                return False
            self.n_open -= 1  # an open impression or early events become the marker
        self.entries[sid] = marker = window_end_ms << 1 | (1 if label else 0)
        self.n_done += 1
        if e is not None:
            (self.dirty if e.__class__ is bytes else self.dirty_early).pop(sid, None)
        self._log.add(sid, marker)
        self._forgetting.add(window_end_ms, sid)
        if self.n_done > self.max_emitted:
            self._evict_markers()
        return True

    def _evict_markers(self) -> None:
        while self.n_done > self.max_emitted:
            sid = self._forgetting.pop_first(self._window_end)
            if sid is None:
                return
            if self._forget(sid):
                self.counts.evicted_markers += 1

    # ------------------------------------------------------------------ persistence
    def take_delta_blobs(self) -> list[bytes]:
        """The changes since the last call, encoded (:func:`encode_entries`; up to three blobs, stored as they
        are: no copy into one): applied in order after the state as of the last call, they give the state now.
        Starts the next delta.

        Markers and removals first, as logged (one id and one integer each:
        the bulk of a delta, cheap to write), then the open entries changed
        since, with their current value (a key that closed since is not
        among them: its marker or removal is in the log, and later); an open
        impression is stored as the bytes it is.

        Not in it: open impressions as they arrived (no event type joined
        yet) -- the bulk of the state, most of them closing within seconds
        or minutes. The impressions topic holds them already: the joiner
        checkpoints, per impressions partition, the offset of the oldest
        impression that may still be open and re-reads the input from there
        at recovery (:meth:`replay_impressions`). So a delta is the size of
        what closed (an id and an integer each), not of what arrived.
        """
        log, dirty, early = self._log, self.dirty, self.dirty_early
        self.clear_delta()
        blobs = [log.blob(), encode_open(list(dirty), list(dirty.values())), encode_entries(list(early.items()))]
        return [b for b in blobs if b]

    def take_delta(self) -> list[tuple[bytes, Entry | None]]:
        """:meth:`take_delta_blobs` as (sid, entry-or-None) pairs."""
        return [item for blob in self.take_delta_blobs() for item in decode_entries(blob)]

    def clear_delta(self) -> None:
        """Forget the changes since the last delta (a snapshot of the whole state was just written)."""
        self._log, self.dirty, self.dirty_early = _Log(), {}, {}

    def snapshot(self) -> Iterator[tuple[bytes, Entry]]:
        """The durable state (what a checkpoint holds): every entry, but an open impression without event types
        as its id alone (OPENED: re-read from the input at recovery, see :meth:`take_delta_blobs`) unless pinned;
        the ids still to re-read first."""
        for sid, ts in self.reopen.items():
            yield sid, OPENED + ts
        H, pinned, unpack = _OPEN_HEAD_SIZE - 1, self.pinned, _INT64.unpack_from
        for sid, e in self.entries.items():
            if e.__class__ is not bytes or e[H] or sid in pinned:
                yield sid, e
            else:
                yield sid, OPENED + unpack(e)[0]

    def pin_open(self) -> None:
        """Keep the open impressions there are now in every snapshot while they stay open: loaded from a
        checkpoint written before open impressions were replayed from the input, they cannot be re-read."""
        H = _OPEN_HEAD_SIZE - 1
        self.pinned = {sid for sid, e in self.entries.items() if e.__class__ is bytes and not e[H]}

    def replay_impressions(self, records: Sequence[Any], partition: int) -> int:
        """Impression records read again at recovery, below the checkpointed input offset: each was read before
        the checkpoint, so only the ones that opened an impression still open then -- its id OPENED in the
        checkpoint (:attr:`reopen`), its entry not -- open again (events read since join them as they would
        have); the rest (emitted, expired, duplicates, invalid, open with event types: in the checkpoint) is
        skipped without a count: it was counted when first read. Returns the newest time among the reopened.
        """
        parse, entries = _SlimImpression.FromString, self.entries
        recovered, reopen = self.recovered, self.reopen
        keep, sids = [], []
        for rec in records:
            try:
                m = parse(rec.value)
            except _DECODE_ERRORS:
                continue
            sid = m.request_id + b":" + m.item_id
            ts = reopen.get(sid)
            if ts is not None and (m.timestamp_ms or rec.timestamp) == ts:  # (else another record of the id)
                e = entries.get(sid)
                if e is None or e.__class__ is tuple:  # (a marker: its sample was found in the output)
                    keep.append(rec)
                    sids.append(sid)
            elif recovered:
                recovered.discard(sid)
        if not keep:
            return -1
        c = self.counts
        before = c.copy()
        newest = self.impressions(keep, partition)
        for sid in sids:
            if entries.get(sid).__class__ is not tuple:  # opened (or emitted at once): not again
                reopen.pop(sid, None)
        skipped = c.invalid + c.duplicate_impressions + c.expired_impressions - (
            before.invalid + before.duplicate_impressions + before.expired_impressions)
        c.impressions, c.invalid = before.impressions, before.invalid
        c.duplicate_impressions, c.expired_impressions = before.duplicate_impressions, before.expired_impressions
        c.reopened += len(keep) - skipped
        return newest

    def load(self, items: Iterable[tuple[bytes, Entry | None]]) -> None:
        """Apply stored (sid, entry-or-None) pairs in order (snapshot, then deltas); rebuilds counts and timelines.
        An OPENED id goes to :attr:`reopen` (its impression is re-read, :meth:`replay_impressions`) until a marker, an
        open entry or a removal of it comes."""
        entries, reopen = self.entries, self.reopen
        opened_max = OPENED + _MAX_MS
        for sid, e in items:
            if e is None:
                entries.pop(sid, None)
                reopen.pop(sid, None)
            elif e.__class__ is int and e < opened_max:
                reopen[sid] = e - OPENED
            else:
                entries[sid] = e
                if e.__class__ is not tuple:  # (early events: the impression is still to come)
                    reopen.pop(sid, None)
        self._rebuild()

    def load_blobs(self, blobs: Iterable[bytes]) -> None:
        """:meth:`load` from stored blobs."""
        self.load(item for blob in blobs for item in decode_entries(blob))

    def kind(self, sid: bytes) -> int | None:
        """OPEN, EARLY, DONE, or None (no entry)."""
        e = self.entries.get(sid)
        return None if e is None else _KIND_OF[e.__class__]

    def entry(self, sid: bytes) -> tuple[int, int, int, int, bytes, bytes] | None:
        """`sid`'s entry as a tuple (kind, a, b, c, types, payload), whatever its form (None: no entry):
        OPEN (close, partition, impression ms), EARLY (as stored), DONE (forget, label, window end)."""
        return _as_tuple(self.entries.get(sid), self.window_ms, self.retention_ms)

    def _rebuild(self) -> None:
        self.n_open = self.n_done = 0
        self._closing, self._forgetting = Timeline(), Timeline()
        for sid, e in self.entries.items():
            cls = e.__class__
            if cls is int:
                self.n_done += 1
                self._forgetting.add(e >> 1, sid)
            else:
                self.n_open += 1
                self._closing.add(_OPEN_HEAD.unpack_from(e)[0] + self.window_ms if cls is bytes else e[1], sid)
        self.clear_delta()

    def set_times(self, watermark_ms: int, floor_ms: int) -> None:
        self.watermark_ms = watermark_ms
        self.floor_ms = floor_ms



# ----------------------------------------------------------------------------- sample encoding


def _uvarint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # negative int32/int64: ten bytes, as protobuf writes them
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> bytes:
    """A Kafka record varint (zigzag, as the record format writes lengths and deltas)."""
    return _uvarint((n << 1) ^ (n >> 63))


_LEN = [_uvarint(i) for i in range(1 << 14)]  # varints of lengths / small values: one lookup
ZIGZAG = [_zigzag(i) for i in range(1 << 14)]  # Kafka record varints of lengths / offset deltas: one lookup
_POSITION = {0: b""} | {i: b"\x50" + _LEN[i] for i in range(1, 1 << 14)}  # LabeledSample.position (10) fields
_TAGGED = [[bytes((tag,)) + _LEN[n] for n in range(128)] for tag in (0x0A, 0x12, 0x1A, 0x22, 0x4A)]
_LOW14 = [bytes((i & 127 | 128, i >> 7 | 128)) for i in range(1 << 14)]  # a time's first two varint bytes


def _time_varint(ms: int) -> bytes:
    """Varint of an epoch-ms time: six bytes for 1971..2109, unrolled; anything else the loop."""
    if 1 << 35 <= ms < 1 << 42:
        return bytes((ms & 127 | 128, ms >> 7 & 127 | 128, ms >> 14 & 127 | 128, ms >> 21 & 127 | 128,
                      ms >> 28 & 127 | 128, ms >> 35))
    return _uvarint(ms)


def _ld(data: bytes) -> bytes:
    n = len(data)
    return _LEN[n] if n < 16384 else _uvarint(n)


def encode_payload(sid: bytes, request_id: bytes, user_id: bytes, item_id: bytes, served_feature_id: bytes,
                   position: int, model_version: bytes | None, imp_ms: int, feature_set: bytes = b"") -> bytes:
    """An open impression's payload: its negative sample's Kafka record after the offset delta, without the
    joined_at field (NEGATIVE_TAIL_LEN bytes, appended when it closes) and the header count.

    That is: the key (user id) and the value, each after its length as a
    record varint (:data:`ZIGZAG`; the value's counts the joined_at field),
    the value being the fields of the ``LabeledSample`` that do not depend
    on the label, as protobuf wire bytes: sample_id, request_id, user_id,
    item_id (1-4), features (9), position (10), model_version (11;
    serialized, None: unset), impression_timestamp_ms (7, last: protobuf
    reads fields in any order). `feature_set` is a serialized
    ``FeatureSetRef`` (empty: unset). Why this layout: a negative -- most
    samples -- then goes out as this, the shared joined_at field and a few
    bytes of framing (:mod:`streaming.sample_writer`), nothing re-encoded.
    The general form of the table-driven loop in :meth:`JoinState.impressions`,
    which makes the same bytes (the tests compare both with the protobuf API).
    """
    return record_payload(user_id, encode_body(sid, request_id, user_id, item_id, served_feature_id, position,
                                               model_version, imp_ms, feature_set))


def record_payload(key: bytes, body: bytes) -> bytes:
    """key and body in the payload layout (see :func:`encode_payload`)."""
    return _zz(len(key)) + key + _zz(len(body) + NEGATIVE_TAIL_LEN) + body


def _zz(n: int) -> bytes:
    return ZIGZAG[n] if n < 16384 else _zigzag(n)


def _read_zz(buf: bytes, pos: int) -> tuple[int, int]:
    """A record varint at `pos` -> (value, position after it)."""
    shift = raw = 0
    while True:
        b = buf[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7


def payload_parts(payload: bytes) -> tuple[bytes, bytes]:
    """(Kafka key, sample body) of a payload (:func:`encode_payload`)."""
    k, pos = _read_zz(payload, 0)
    key = payload[pos:pos + k]
    _, pos = _read_zz(payload, pos + k)
    return key, payload[pos:]


def record_rest(key: bytes, value: bytes) -> bytes:
    """A Kafka record after its offset delta, up to the value's end (the header count follows): key and value
    after their lengths."""
    return _zz(len(key)) + key + _zz(len(value)) + value


def iter_samples(runs: dict[bytes, list[bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each sample in `runs` ({tail: [record rest]}, see :meth:`JoinState.take_output`)."""
    for tail, rests in runs.items():
        for rest in rests:
            k, pos = _read_zz(rest, 0)
            key = rest[pos:pos + k]
            _, pos = _read_zz(rest, pos + k)
            yield key, rest[pos:] + tail


def _with_tail(payload: bytes, tail: bytes) -> bytes:
    """The record rest of a payload's sample with the label fields `tail` (:func:`record_rest` of its key and
    body + tail); the common case -- a one-byte key length, a two-byte value length either way -- without
    decoding the payload."""
    b0 = payload[0]
    if b0 < 0x80:
        at = 1 + (b0 >> 1)  # the value's length
        b1, b2 = payload[at], payload[at + 1]
        if b1 >= 0x80 and b2 < 0x80:
            n = (((b1 & 0x7F) | b2 << 7) >> 1) - NEGATIVE_TAIL_LEN + len(tail)
            if 64 <= n < 8192:
                return b"%b%b%b%b" % (payload[:at], ZIGZAG[n], payload[at + 2:], tail)
    key, body = payload_parts(payload)
    return record_rest(key, body + tail)


def _old_payload(payload: bytes) -> bytes:
    """A payload as checkpoints stored it before the record layout (key after a 2-byte length, then the body)."""
    n = payload[0] | payload[1] << 8
    return record_payload(payload[2:2 + n], payload[2 + n:])


def encode_body(sid: bytes, request_id: bytes, user_id: bytes, item_id: bytes, served_feature_id: bytes,
                position: int, model_version: bytes | None, imp_ms: int, feature_set: bytes = b"") -> bytes:
    """The label-independent fields of the sample (see :func:`encode_payload`)."""
    out = [b"\x0a", _ld(sid), sid, b"\x12", _ld(request_id), request_id,
           b"\x1a", _ld(user_id), user_id, b"\x22", _ld(item_id), item_id]
    if served_feature_id:
        inner = b"\x0a%b%b\x12%b%b" % (_ld(served_feature_id), served_feature_id, _ld(item_id), item_id)
        if feature_set:
            inner += b"\x1a%b%b" % (_ld(feature_set), feature_set)
        out += (b"\x4a", _ld(inner), inner)
    if position:
        out += (b"\x50", _uvarint(position))
    if model_version is not None:
        out += (b"\x5a", _ld(model_version), model_version)
    if imp_ms:
        out += (b"\x38", _uvarint(imp_ms))
    return b"".join(out)


_POSITIVE = b"\x2d\x00\x00\x80\x3f"  # label (5) = 1.0f
NEGATIVE_TAIL_LEN = 7  # a negative's label fields: joined_at_ms (12), a time of 1971..2109 (0x60 + 6 bytes)


def sample_tail(label: int, types: bytes, click_ms: int, joined_ms: int) -> bytes:
    """label (5), event_types (6), click_timestamp_ms (8), joined_at_ms (12): appended to the body.

    (Protobuf reads fields in any order; the message equals the one built with the API.)
    """
    joined = b"\x60" + _time_varint(joined_ms) if joined_ms else b""
    return positive_tail(types, click_ms, joined) if label else joined


def positive_tail(types: bytes, click_ms: int, joined: bytes) -> bytes:
    """:func:`sample_tail` of a positive, its joined_at_ms field (`joined`) made already."""
    if types.isascii():  # every type below 128: one varint byte each, the bytes themselves
        packed = types
    else:
        packed = b"".join(_LEN[t] if 0 <= t < 16384 else _uvarint(t) for t in types)
    # click: optional, present for positives even when 0
    return b"".join((_POSITIVE, b"\x32", _ld(packed), packed, b"\x40", _time_varint(click_ms), joined))


def build_sample(sid: bytes, imp: Impression, imp_ms: int, label: int, types: bytes, click_ms: int, joined_ms: int,
                 feature_set: bytes = b"") -> LabeledSample:
    """The same sample through the protobuf API: the reference :func:`encode_sample` is tested against."""
    s = LabeledSample(sample_id=sid, request_id=imp.request_id, user_id=imp.user_id, item_id=imp.item_id,
                      impression_timestamp_ms=imp_ms, position=imp.position, joined_at_ms=joined_ms)
    if label:
        s.label = 1.0
        s.event_types.extend(types)
        s.click_timestamp_ms = click_ms
    if imp.served_feature_id:
        f = s.features
        f.served_feature_id = imp.served_feature_id
        f.item_id = imp.item_id
        if feature_set:
            f.feature_set.ParseFromString(feature_set)
    if imp.HasField("model_version"):
        s.model_version.CopyFrom(imp.model_version)
    return s


# ----------------------------------------------------------------------------- watermark


class Watermark:
    """Event-time watermark over the input partitions, with a processing-time fallback for quiet streams.

    Why event time: after a restart or a backlog the joiner reads minutes of
    records in seconds; closing windows by the wall clock would then cut
    clicks off their impressions (a click read 2 s after its impression but
    logged 4 min later is inside a 5-min window). Event time gives the same
    labels however fast or late the records are read.

    Value: the newest event time read on each input partition, the minimum of
    it over the partitions that still have records to read (a lagging
    partition holds the watermark back, so its clicks are not cut off by
    faster ones), or over all partitions when every one is consumed to its
    end; minus `lateness_ms`. A partition that has records but none read yet
    holds it where it is. Never moves back.

    Quiet streams: when every partition has been consumed to its end for
    `idle_ms` (wall clock), the watermark advances with the wall clock from
    where it stood when the inputs went quiet, so the last windows close
    even if no record ever comes again.
    """

    def __init__(self, lateness_ms: int, idle_ms: int) -> None:
        self.lateness_ms = int(lateness_ms)
        self.idle_ms = int(idle_ms)
        self.newest: dict[Any, int] = {}
        self.value = -(1 << 62)
        self._idle_since: float | None = None
        self._idle_base = self.value

    def observe(self, partition: Any, event_ms: int) -> None:
        if event_ms > self.newest.get(partition, -(1 << 62)):
            self.newest[partition] = event_ms

    def update(self, partitions: Iterable[Any], caught_up: Iterable[Any], now_s: float) -> int:
        """Recompute from the partitions (all assigned) and those consumed to their end; returns the value."""
        parts = list(partitions)
        done = set(caught_up)
        newest = self.newest
        behind = [p for p in parts if p not in done]
        candidate: int | None
        if behind:
            times = [newest.get(p) for p in behind]
            candidate = None if any(t is None for t in times) else min(times)  # type: ignore[type-var]
        else:
            known = [newest[p] for p in parts if p in newest]
            candidate = max(known) if known else None
        if candidate is not None and candidate - self.lateness_ms > self.value:
            self.value = candidate - self.lateness_ms
        if parts and not behind:
            if self._idle_since is None:
                self._idle_since, self._idle_base = now_s, self.value
            else:
                quiet_ms = int((now_s - self._idle_since) * 1000)
                if quiet_ms >= self.idle_ms and self._idle_base + quiet_ms > self.value:
                    self.value = self._idle_base + quiet_ms
        else:
            self._idle_since = None
        return self.value

    @property
    def idle(self) -> bool:
        """True while every partition has been consumed to its end (since the last update)."""
        return self._idle_since is not None


# ----------------------------------------------------------------------------- wire form of entries

# Blob = blocks one after another. A block (written now) starts with the byte 3 and holds its entries column by
# column, so encoding is a few C-level passes (map, array, join) instead of a pack per entry:
#   header (_BLOCK), kinds (n bytes; 255: tombstone), a, b, c (n int64 each), len(sid), len(types), len(payload)
#   (n uint32 each), then the sids, the types and the payloads, concatenated. Little-endian.
# An entry of the older format (one per record: _HEAD, sid, types, payload) starts with its kind (0, 1, 2, 255):
# blobs written before are read as they are (its markers keep their stored forget time).
_BLOCK = struct.Struct("<BIQQQ")  # 3, n, total sid bytes, total types bytes, total payload bytes
_BLOCK_MAGIC = 3
# A log block (byte 4): markers and removals, in order: header (_LOG), n int64 values (window end * 2 + label; _GONE:
# removed; OPENED: an impression opened), n uint32 sid lengths, the sids.
_LOG = struct.Struct("<BIQ")  # 4, n, total sid bytes
_LOG_MAGIC = 4
_GONE = -(1 << 63)
OPENED = -(1 << 62)  # + impression time, in a log: the id's impression opened (re-read from the input at recovery)


def opened_time(value: Any) -> int | None:
    """The impression time of a stored OPENED value; None for anything else (a marker, an entry, None)."""
    return value - OPENED if value.__class__ is int and OPENED - _MAX_MS < value < OPENED + _MAX_MS else None

# An open block (byte 6): open impressions as they are kept: header (_OPEN_BLOCK), n uint32 sid lengths, n uint32
# entry lengths, the sids, the entries. (Byte 5: the same, from before the payloads' record layout.)
_OPEN_BLOCK = struct.Struct("<BIQQ")  # 6, n, total sid bytes, total entry bytes
_OPEN_MAGIC = 6
_OPEN_MAGIC_OLD = 5
_HEAD = struct.Struct("<BqqqHHI")  # the older format: kind, a, b, c, len(sid), len(types), len(payload)
_TOMB = (_TOMBSTONE, 0, 0, 0, b"", b"")
_KINDS_OPEN = bytes((OPEN, EARLY, _TOMBSTONE))  # in a block of columns (written now: early events, tombstones)
_SWAP = sys.byteorder != "little"
_at = [itemgetter(i) for i in range(6)]


def encode_entries(items: Iterable[tuple[bytes, Entry | None]]) -> bytes:
    """(sid, entry-or-None) pairs, each sid at most once -> one blob (None: a tombstone): markers in a log block,
    open impressions in an open block, early events and tombstones in a block of columns."""
    items = items if isinstance(items, list) else list(items)
    if not items:
        return b""
    sids = list(map(_at[0], items))
    entries = list(map(_at[1], items))
    if any(e.__class__ is not tuple and e is not None for e in entries):
        by_kind: dict[type, list[tuple[bytes, Any]]] = {int: [], bytes: [], tuple: []}
        for sid, e in items:
            by_kind[tuple if e is None else e.__class__].append((sid, e))
        markers, opened = by_kind[int], by_kind[bytes]
        return (encode_log([sid for sid, _ in markers], [e for _, e in markers])
                + encode_open([sid for sid, _ in opened], [e for _, e in opened]) + encode_entries(by_kind[tuple]))
    if None in entries:
        entries = [_TOMB if e is None else e for e in entries]
    columns = [array("q", list(map(_at[i], entries))) for i in (1, 2, 3)]  # (from a list: 4x faster than a map)
    types = list(map(_at[4], entries))
    payloads = list(map(_at[5], entries))
    columns += [array("I", list(map(len, col))) for col in (sids, types, payloads)]
    if _SWAP:
        for col in columns:
            col.byteswap()
    joined = [b"".join(sids), b"".join(types), b"".join(payloads)]
    head = _BLOCK.pack(_BLOCK_MAGIC, len(items), *map(len, joined))
    return b"".join([head, bytes(map(_at[0], entries))] + [col.tobytes() for col in columns] + joined)


class _Log:
    """A log block being written: markers and removals, each added to the block's columns as it happens."""

    __slots__ = ("sids", "lengths", "values")

    def __init__(self) -> None:
        self.sids = bytearray()
        self.lengths = array("I")
        self.values = array("q")

    def add(self, sid: bytes, value: int) -> None:
        self.sids += sid
        self.lengths.append(len(sid))
        self.values.append(value)

    def blob(self) -> bytes:
        if not self.lengths:
            return b""
        lengths, values = self.lengths, self.values
        if _SWAP:
            lengths, values = array("I", lengths), array("q", values)
            lengths.byteswap()
            values.byteswap()
        return b"".join((_LOG.pack(_LOG_MAGIC, len(lengths), len(self.sids)), values, lengths, self.sids))


def encode_log(sids: list[bytes], vals: list[int]) -> bytes:
    """A log block: markers (window end * 2 + label) and removals (_GONE) of `sids`, in order."""
    log = _Log()
    for sid, val in zip(sids, vals):
        log.add(sid, val)
    return log.blob()


def encode_open(sids: list[bytes], entries: list[bytes]) -> bytes:
    """An open block: open impressions (their entry bytes) of `sids`."""
    if not sids:
        return b""
    columns = [array("I", list(map(len, sids))), array("I", list(map(len, entries)))]
    head = _OPEN_BLOCK.pack(_OPEN_MAGIC, len(sids), sum(columns[0]), sum(columns[1]))
    if _SWAP:
        for col in columns:
            col.byteswap()
    return b"".join([head, columns[0].tobytes(), columns[1].tobytes(), *sids, *entries])  # one copy of the entries


def _as_tuple(e: Entry | None, window_ms: int, retention_ms: int) -> tuple[int, int, int, int, bytes, bytes] | None:
    cls = e.__class__
    if cls is bytes:
        imp_ms, partition, nt = _OPEN_HEAD.unpack_from(e)  # type: ignore[arg-type]
        return (OPEN, imp_ms + window_ms, partition, imp_ms, e[_OPEN_HEAD_SIZE:_OPEN_HEAD_SIZE + nt],  # type: ignore
                e[_OPEN_HEAD_SIZE + nt:])  # type: ignore[index]
    if cls is int:
        return DONE, (e >> 1) + retention_ms, e & 1, e >> 1, b"", b""  # type: ignore[operator]
    return e  # type: ignore[return-value]


def _open_entry(partition: int, imp_ms: int, types: bytes, payload: bytes) -> bytes:
    """An open impression's entry from a checkpoint written before the record layout."""
    return _OPEN_HEAD.pack(imp_ms, partition, len(types)) + types + _old_payload(payload)


def decode_entries(blob: bytes | memoryview) -> Iterator[tuple[bytes, Entry | None]]:
    """Inverse of :func:`encode_entries` and :func:`encode_log` (blobs of the older format too): (sid, entry-or-None)
    pairs in order. ValueError on a truncated blob."""
    mv = memoryview(blob)
    pos, end = 0, len(mv)
    while pos < end:
        if mv[pos] == _BLOCK_MAGIC:
            items, pos = _decode_block(mv, pos)
            yield from items
            continue
        if mv[pos] == _LOG_MAGIC:
            items, pos = _decode_log(mv, pos)
            yield from items
            continue
        if mv[pos] == _OPEN_MAGIC or mv[pos] == _OPEN_MAGIC_OLD:
            items, pos = _decode_open(mv, pos)
            yield from items
            continue
        if pos + _HEAD.size > end:
            raise ValueError("truncated checkpoint entry header")
        kind, a, b, c, nk, nt, npl = _HEAD.unpack_from(mv, pos)
        pos += _HEAD.size
        if pos + nk + nt + npl > end:
            raise ValueError("truncated checkpoint entry")
        sid = bytes(mv[pos:pos + nk])
        pos += nk
        if kind == _TOMBSTONE:
            yield sid, None
            continue
        if kind not in (OPEN, EARLY, DONE):
            raise ValueError(f"unknown checkpoint entry kind {kind}")
        types = bytes(mv[pos:pos + nt])
        pos += nt
        payload = bytes(mv[pos:pos + npl])
        pos += npl
        if kind == DONE:
            yield sid, c << 1 | (1 if b else 0)
        elif kind == OPEN:
            yield sid, _open_entry(b, c, types, payload)
        else:
            yield sid, (kind, a, b, c, types, payload)


def _decode_log(mv: memoryview, pos: int) -> tuple[list[tuple[bytes, Entry | None]], int]:
    if pos + _LOG.size > len(mv):
        raise ValueError("truncated checkpoint log header")
    _, n, n_sids = _LOG.unpack_from(mv, pos)
    pos += _LOG.size
    if pos + n * 12 + n_sids > len(mv):
        raise ValueError("truncated checkpoint log")
    vals, lengths = array("q"), array("I")
    vals.frombytes(mv[pos:pos + n * 8])
    lengths.frombytes(mv[pos + n * 8:pos + n * 12])
    if _SWAP:
        vals.byteswap()
        lengths.byteswap()
    pos += n * 12
    if sum(lengths) != n_sids:
        raise ValueError("corrupt checkpoint log (lengths)")
    data = bytes(mv[pos:pos + n_sids])
    sids = [data[i:i + k] for i, k in zip(accumulate(lengths, initial=0), lengths)]
    items = [(sid, None if v == _GONE else v) for sid, v in zip(sids, vals)]
    return items, pos + n_sids


def _decode_open(mv: memoryview, pos: int) -> tuple[list[tuple[bytes, Entry | None]], int]:
    start = pos
    if pos + _OPEN_BLOCK.size > len(mv):
        raise ValueError("truncated checkpoint open block header")
    _, n, n_sids, n_entries = _OPEN_BLOCK.unpack_from(mv, pos)
    pos += _OPEN_BLOCK.size
    if pos + n * 8 + n_sids + n_entries > len(mv):
        raise ValueError("truncated checkpoint open block")
    cut = []
    for i, total in enumerate((n_sids, n_entries)):
        lengths = array("I")
        lengths.frombytes(mv[pos + i * n * 4:pos + (i + 1) * n * 4])
        if _SWAP:
            lengths.byteswap()
        if sum(lengths) != total:
            raise ValueError("corrupt checkpoint open block (lengths)")
        cut.append(lengths)
    pos += n * 8
    out = []
    for lengths, total in zip(cut, (n_sids, n_entries)):
        data = bytes(mv[pos:pos + total])
        out.append([data[i:i + k] for i, k in zip(accumulate(lengths, initial=0), lengths)])
        pos += total
    if any(len(e) < _OPEN_HEAD_SIZE + 2 for e in out[1]):
        raise ValueError("corrupt checkpoint open block (an entry too short)")
    if mv[start] == _OPEN_MAGIC_OLD:
        heads = [_OPEN_HEAD_SIZE + e[_OPEN_HEAD_SIZE - 1] for e in out[1]]
        out[1] = [e[:h] + _old_payload(e[h:]) for e, h in zip(out[1], heads)]
    return list(zip(out[0], out[1])), pos


def _decode_block(mv: memoryview, pos: int) -> tuple[list[tuple[bytes, Entry | None]], int]:
    if pos + _BLOCK.size > len(mv):
        raise ValueError("truncated checkpoint block header")
    _, n, n_sids, n_types, n_payloads = _BLOCK.unpack_from(mv, pos)
    pos += _BLOCK.size
    stop = pos + n * 37 + n_sids + n_types + n_payloads
    if stop > len(mv):
        raise ValueError("truncated checkpoint block")
    kinds = bytes(mv[pos:pos + n])
    if kinds.translate(None, _KINDS_OPEN):
        raise ValueError(f"unknown checkpoint entry kind in {set(kinds) - set(_KINDS_OPEN)}")
    pos += n
    columns = []
    for code, width in (("q", 8), ("q", 8), ("q", 8), ("I", 4), ("I", 4), ("I", 4)):
        col = array(code)
        col.frombytes(mv[pos:pos + n * width])
        if _SWAP:
            col.byteswap()
        columns.append(col)
        pos += n * width
    a, b, c = columns[:3]
    cut = []
    for lengths, total in zip(columns[3:], (n_sids, n_types, n_payloads)):
        if sum(lengths) != total:
            raise ValueError("corrupt checkpoint block (lengths)")
        data = bytes(mv[pos:pos + total])
        starts = accumulate(lengths, initial=0)
        cut.append([data[i:i + k] for i, k in zip(starts, lengths)])
        pos += total
    sids, types, payloads = cut
    items = [(sid, None if k == _TOMBSTONE else _open_entry(b_, c_, t, p) if k == OPEN else (k, a_, b_, c_, t, p))
             for sid, k, a_, b_, c_, t, p in zip(sids, kinds, a, b, c, types, payloads)]
    return items, pos


def parse_sample_id(value: bytes) -> tuple[bytes, int, int] | None:
    """A samples-topic value -> (sample_id, impression time, label), or None if it is not a LabeledSample."""
    try:
        s = _SlimSample.FromString(value)
    except (_ProtoDecodeError, RuntimeError):
        return None
    if not s.sample_id:
        return None
    return s.sample_id, s.impression_timestamp_ms, int(s.label >= 0.5)


__all__ = ["DONE", "EARLY", "OPEN", "OPENED", "Entry", "JoinCounts", "JoinState", "Watermark", "decode_entries", "encode_entries",
           "ZIGZAG", "NEGATIVE_TAIL_LEN", "build_sample", "encode_body", "encode_log", "encode_open", "encode_payload",
           "event_type_numbers", "iter_samples", "opened_time", "parse_sample_id", "payload_parts", "positive_tail", "record_payload", "record_rest",
           "sample_id", "sample_tail"]
