"""The joiner's state machine: impressions ⋈ events -> labelled samples, driven by an event-time watermark.

Pure logic, no I/O: :class:`JoinState` is fed raw Kafka values
(``records_pb2.Impression`` and ``events_pb2.Event``), is told the watermark,
and hands finished samples to an ``emit`` callback. :mod:`streaming.joiner`
wires it to Kafka and Redis. Everything here is deterministic given the inputs,
so it is unit-tested without servers.

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
:meth:`JoinState.take_delta` (the final value of each touched key, or None
when it was removed) and stored by :mod:`streaming.join_checkpoint`;
:func:`encode_entries` / :func:`decode_entries` are their wire form.
"""

from __future__ import annotations

import heapq
from collections import deque
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

from google.protobuf.message import DecodeError as _ProtoDecodeError

from proto.cascade.v1.common_pb2 import FeatureSetRef
from proto.cascade.v1.events_pb2 import Event, EventType
from proto.cascade.v1.records_pb2 import Impression, LabeledSample

# Entry kinds. An entry is a tuple (kind, a, b, c, types, payload):
#   OPEN:  (OPEN, close_ms, partition, impression_ms, types, sample-to-be: see JoinState._payload)
#   EARLY: (EARLY, close_ms, first positive event ms or -1, its client timestamp_ms, types, b"")
#   DONE:  (DONE, forget_ms, label, window_end_ms, b"", b"")
# `types` is the distinct event types seen, one byte each, in first-occurrence order.
OPEN, EARLY, DONE = 0, 1, 2
_TOMBSTONE = 255
Entry = tuple[int, int, int, int, bytes, bytes]

Emit = Callable[[bytes, bytes, int, int], None]  # (sample value, key (user_id), input partition, label)


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


def sample_id(request_id: str, item_id: str) -> str:
    """The deterministic id of an impression's sample (records.proto: "<request_id>:<item_id>")."""
    return f"{request_id}:{item_id}"


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
    evicted_markers: int = 0  # emitted markers forgotten early (max_emitted)

    def minus(self, other: "JoinCounts") -> "JoinCounts":
        return JoinCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def copy(self) -> "JoinCounts":
        return JoinCounts(**vars(self))

    @property
    def samples(self) -> int:
        return self.positives + self.negatives


class Timeline:
    """Sample ids by a time (close or forget), taken in time order: buckets of `bucket_ms` under a heap of buckets.

    Why not a heap of (time, id): a push and a pop cost ~1.5 us per impression,
    twice (close, then forget); a bucket is a list append. Items are not
    removed when their entry changes: `time_of(sid)` (None: no longer
    scheduled) is asked when the bucket comes up, and an item whose time moved
    to another bucket is dropped there. Exact: nothing is returned before its
    time; only the order within a bucket is arbitrary.
    """

    __slots__ = ("ms", "lists", "keys")

    def __init__(self, bucket_ms: int = 100) -> None:
        self.ms = bucket_ms
        self.lists: dict[int, deque[str]] = {}
        self.keys: list[int] = []  # heap of bucket numbers

    def add(self, t: int, sid: str) -> None:
        b = t // self.ms
        lst = self.lists.get(b)
        if lst is None:
            self.lists[b] = deque((sid,))
            heapq.heappush(self.keys, b)
        else:
            lst.append(sid)

    def next_time(self) -> int:
        """Start of the earliest bucket (a lower bound of the next time); a huge number when empty."""
        return self.keys[0] * self.ms if self.keys else 1 << 62

    def pop_due(self, now: int, time_of: Callable[[str], int | None]) -> list[str]:
        """Every id whose time is <= `now` (an id added twice may come twice)."""
        out: list[str] = []
        keys, lists, ms = self.keys, self.lists, self.ms
        while keys and keys[0] * ms <= now:
            b = keys[0]
            keep: deque[str] = deque()
            for sid in lists[b]:
                t = time_of(sid)
                if t is None or t // ms != b:
                    continue  # stale
                if t <= now:
                    out.append(sid)
                else:
                    keep.append(sid)
            if keep:  # the bucket `now` falls in
                lists[b] = keep
                break
            heapq.heappop(keys)
            del lists[b]
        return out

    def pop_first(self, time_of: Callable[[str], int | None]) -> str | None:
        """The oldest id (by bucket, then insertion), removed; None when empty."""
        keys, lists, ms = self.keys, self.lists, self.ms
        while keys:
            b = keys[0]
            lst = lists[b]
            while lst:
                sid = lst.popleft()
                t = time_of(sid)
                if t is not None and t // ms == b:
                    return sid
            heapq.heappop(keys)
            del lists[b]
        return None


class JoinState:
    """Open impressions, early events and emitted markers, keyed by sample id.

    `emit(value, key, partition, label)` receives each serialized
    ``LabeledSample`` with its Kafka key (user_id) and the input partition of
    its impression. `feature_set` (name, version) fills
    ``LabeledSample.features.feature_set``; None leaves it unset.
    """

    def __init__(self, *, window_ms: int, positive_types: frozenset[int], max_pending: int, max_emitted: int,
                 retention_ms: int, emit: Emit, feature_set: tuple[str, int] | None = None,
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
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.entries: dict[str, Entry] = {}
        self.n_open = 0  # OPEN + EARLY entries
        self.n_done = 0  # DONE entries
        self._closing = Timeline()  # OPEN/EARLY sids by close time (stale items skipped)
        self._forgetting = Timeline()  # DONE sids by forget time
        self.dirty: set[str] = set()
        self.watermark_ms = -(1 << 62)
        self.floor_ms = -(1 << 62)  # newest window end of a forgotten marker
        self.counts = counts if counts is not None else JoinCounts()  # shared across recoveries by the joiner
        self.recovered: set[str] = set()  # ids found in the output tail at recovery (to count replays apart)

    # ------------------------------------------------------------------ input
    def impression(self, value: bytes, partition: int, record_ts: int = 0) -> int:
        """Feed one impressions-topic value; returns its event time (ms), or -1 if it was skipped as invalid."""
        c = self.counts
        c.impressions += 1
        try:
            imp = Impression.FromString(value)
        except (_ProtoDecodeError, RuntimeError):
            c.invalid += 1
            return -1
        req, item, user = imp.request_id, imp.item_id, imp.user_id
        if not req or not item or not user or len(user) > 16_000:  # ids are 1-128 bytes (common.proto)
            c.invalid += 1
            return -1
        ts = imp.timestamp_ms or record_ts
        sid = f"{req}:{item}"
        close = ts + self.window_ms
        entries = self.entries
        e = entries.get(sid)
        if e is None:
            if close <= self.floor_ms:
                c.expired_impressions += 1
                return ts
            entries[sid] = (OPEN, close, partition, ts, b"", self._payload(sid, imp, ts))
            self.n_open += 1
            self._closing.add(close, sid)
            self.dirty.add(sid)
            if self.n_open > self.max_pending:
                self._overflow()
            return ts
        kind = e[0]
        if kind == EARLY:
            pos_ms = e[2]
            if pos_ms >= 0 and pos_ms <= close:
                self._emit_sample(sid, self._payload(sid, imp, ts), partition, ts, 1, e[4], e[3])
            else:
                if pos_ms >= 0:
                    c.late_clicks += 1
                entries[sid] = (OPEN, close, partition, ts, e[4], self._payload(sid, imp, ts))
                self._closing.add(close, sid)
                self.dirty.add(sid)
        elif kind == DONE and sid in self.recovered:
            self.recovered.discard(sid)
            c.replayed += 1
        else:
            c.duplicate_impressions += 1
        return ts

    def event(self, value: bytes, record_ts: int = 0) -> int:
        """Feed one events-topic value; returns its time for the watermark (ms), or -1 if it was skipped."""
        c = self.counts
        c.events += 1
        try:
            ev = Event.FromString(value)
        except (_ProtoDecodeError, RuntimeError):
            c.invalid += 1
            return -1
        ts = ev.received_at_ms or ev.timestamp_ms or record_ts  # server time: progress
        cts = ev.timestamp_ms or ts  # when it happened: attribution
        req, item = ev.request_id, ev.item_id
        if not req:
            c.no_request_id += 1
            return ts
        etype = ev.type
        if not item or etype == 0:
            c.invalid += 1
            return ts
        sid = f"{req}:{item}"
        positive = etype in self.positive
        entries = self.entries
        e = entries.get(sid)
        if e is None:
            close = ts + self.window_ms
            entries[sid] = (EARLY, close, cts if positive else -1, ev.timestamp_ms if positive else 0, bytes((etype,)), b"")
            self.n_open += 1
            self._closing.add(close, sid)
            self.dirty.add(sid)
            if self.n_open > self.max_pending:
                self._overflow()
            return ts
        kind = e[0]
        if kind == OPEN:
            if cts > e[1]:  # after the impression's window: not attributed
                if positive:
                    c.late_clicks += 1
                return ts
            types = e[4] if etype in e[4] else e[4] + bytes((etype,))
            if positive:
                self._emit_sample(sid, e[5], e[2], e[3], 1, types, ev.timestamp_ms)
            elif types is not e[4]:
                entries[sid] = (OPEN, e[1], e[2], e[3], types, e[5])
                self.dirty.add(sid)
        elif kind == EARLY:
            types = e[4] if etype in e[4] else e[4] + bytes((etype,))
            close = max(e[1], ts + self.window_ms)
            if positive and e[2] >= 0:
                c.duplicate_clicks += 1
                if types is e[4] and close == e[1]:
                    return ts
                entries[sid] = (EARLY, close, e[2], e[3], types, b"")
            elif positive:
                entries[sid] = (EARLY, close, cts, ev.timestamp_ms, types, b"")
            elif types is e[4] and close == e[1]:
                return ts
            else:
                entries[sid] = (EARLY, close, e[2], e[3], types, b"")
            if close != e[1]:
                self._closing.add(close, sid)
            self.dirty.add(sid)
        else:  # DONE
            if positive:
                if e[2]:
                    c.duplicate_clicks += 1
                else:
                    c.late_clicks += 1
            else:
                c.events_after_close += 1
        return ts

    # ------------------------------------------------------------------ time
    def advance(self, watermark_ms: int) -> None:
        """Move the watermark (never back): close windows that ended, drop orphans, forget old markers."""
        if watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        wm = self.watermark_ms
        if self._closing.next_time() <= wm:
            for sid in self._closing.pop_due(wm, self._close_time):
                self._close(sid, "watermark")
        if self._forgetting.next_time() <= wm:
            forgotten = 0
            for sid in self._forgetting.pop_due(wm, self._forget_time):
                forgotten += self._forget(sid)
            self.counts.forgotten += forgotten

    def drain(self) -> None:
        """End of input: close every open impression as a negative and drop every early event as an orphan."""
        while True:
            sid = self._closing.pop_first(self._close_time)
            if sid is None:
                return
            self._close(sid, "drain")

    def _close_time(self, sid: str) -> int | None:
        e = self.entries.get(sid)
        return None if e is None or e[0] == DONE else e[1]

    def _forget_time(self, sid: str) -> int | None:
        e = self.entries.get(sid)
        return e[1] if e is not None and e[0] == DONE else None

    def _close(self, sid: str, cause: str) -> bool:
        e = self.entries.get(sid)
        if e is None or e[0] == DONE:
            return False  # already closed (a sid listed twice)
        c = self.counts
        if e[0] == OPEN:
            if cause == "watermark":
                c.closed_watermark += 1
            elif cause == "overflow":
                c.closed_overflow += 1
            else:
                c.closed_drain += 1
            self._emit_sample(sid, e[5], e[2], e[3], 0, b"", 0)
        else:
            self.n_open -= 1
            if e[2] >= 0:
                c.orphan_clicks += 1
            else:
                c.orphan_events += 1
            if cause == "overflow":
                c.overflow_orphans += 1
            del self.entries[sid]
            self.dirty.add(sid)
        return True

    def _overflow(self) -> None:
        while self.n_open > self.max_pending:
            sid = self._closing.pop_first(self._close_time)
            if sid is None:
                return
            self._close(sid, "overflow")

    def _forget(self, sid: str) -> bool:
        e = self.entries.get(sid)
        if e is None or e[0] != DONE:
            return False
        del self.entries[sid]
        self.n_done -= 1
        self.dirty.add(sid)
        self.recovered.discard(sid)
        if e[3] > self.floor_ms:
            self.floor_ms = e[3]
        return True

    # ------------------------------------------------------------------ output
    def _payload(self, sid: str, imp: Impression, imp_ms: int) -> bytes:
        """What an open impression keeps: its Kafka key (user id, length-prefixed) and the sample's fixed fields.

        Encoded once, when the impression arrives (it is parsed then anyway):
        closing it only appends the label fields, and the checkpoint stores
        this rather than the whole impression (no score, experiment, recall
        channels: ~40 % smaller).
        """
        key = imp.user_id.encode()
        return _KEY_LEN.pack(len(key)) + key + encode_body(sid, imp, imp_ms, self._feature_set_ref)

    def _emit_sample(self, sid: str, payload: bytes, partition: int, imp_ms: int, label: int, types: bytes,
                     click_ms: int) -> None:
        n = payload[0] | payload[1] << 8
        value = payload[2 + n:] + sample_tail(label, types, click_ms, self.clock_ms())
        self.emit(value, payload[2:2 + n], partition, label)
        self.mark_emitted(sid, imp_ms + self.window_ms, label)
        if label:
            self.counts.positives += 1
        else:
            self.counts.negatives += 1

    def mark_emitted(self, sid: str, window_end_ms: int, label: int) -> bool:
        """Record that `sid`'s sample is in the output (also used at recovery for samples found in the topic).

        Returns False if it was already marked.
        """
        e = self.entries.get(sid)
        if e is not None:
            if e[0] == DONE:
                return False
            self.n_open -= 1  # an open impression or early events become the marker
        forget = window_end_ms + self.retention_ms
        self.entries[sid] = (DONE, forget, int(label), window_end_ms, b"", b"")
        self.n_done += 1
        self.dirty.add(sid)
        self._forgetting.add(forget, sid)
        if self.n_done > self.max_emitted:
            self._evict_markers()
        return True

    def _evict_markers(self) -> None:
        while self.n_done > self.max_emitted:
            sid = self._forgetting.pop_first(self._forget_time)
            if sid is None:
                return
            if self._forget(sid):
                self.counts.evicted_markers += 1

    # ------------------------------------------------------------------ persistence
    def take_delta(self) -> list[tuple[str, Entry | None]]:
        """The final value of every key touched since the last call (None: removed); clears the dirty set."""
        entries = self.entries
        out = [(sid, entries.get(sid)) for sid in self.dirty]
        self.dirty = set()
        return out

    def snapshot(self) -> Iterator[tuple[str, Entry]]:
        return iter(self.entries.items())

    def load(self, items: Iterable[tuple[str, Entry | None]]) -> None:
        """Apply stored (sid, entry-or-None) pairs in order (snapshot, then deltas); rebuilds counts and timelines."""
        entries = self.entries
        for sid, e in items:
            if e is None:
                entries.pop(sid, None)
            else:
                entries[sid] = e
        self._rebuild()

    def _rebuild(self) -> None:
        self.n_open = self.n_done = 0
        self._closing, self._forgetting = Timeline(), Timeline()
        for sid, e in self.entries.items():
            if e[0] == DONE:
                self.n_done += 1
                self._forgetting.add(e[1], sid)
            else:
                self.n_open += 1
                self._closing.add(e[1], sid)
        self.dirty = set()

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


_LEN = [_uvarint(i) for i in range(1 << 14)]  # varints of lengths / small values: one lookup
_KEY_LEN = struct.Struct("<H")


def _time_varint(ms: int) -> bytes:
    """Varint of an epoch-ms time: six bytes for 1971..2109, unrolled; anything else the loop."""
    if 1 << 35 <= ms < 1 << 42:
        return bytes((ms & 127 | 128, ms >> 7 & 127 | 128, ms >> 14 & 127 | 128, ms >> 21 & 127 | 128,
                      ms >> 28 & 127 | 128, ms >> 35))
    return _uvarint(ms)


def _ld(data: bytes) -> bytes:
    n = len(data)
    return _LEN[n] if n < 16384 else _uvarint(n)


def encode_body(sid: str, imp: Impression, imp_ms: int, feature_set: bytes = b"") -> bytes:
    """The fields of an impression's ``LabeledSample`` that do not depend on the label, as protobuf wire bytes.

    sample_id, request_id, user_id, item_id (1-4), impression_timestamp_ms (7),
    features (9), position (10), model_version (11), in field order, as
    protobuf writes them. `feature_set` is a serialized ``FeatureSetRef``
    (empty: unset). Why by hand: the joiner encodes one per impression, and
    one bytes format over table lookups costs ~2 us where building the message
    with the protobuf API and serializing it costs ~3 (the tests compare the
    two on random impressions, edge cases included).
    """
    L = _LEN
    s = sid.encode()
    r = imp.request_id.encode()
    u = imp.user_id.encode()
    it = imp.item_id.encode()
    sf = imp.served_feature_id.encode()
    pos = imp.position
    if sf and 1 << 35 <= imp_ms < 1 << 42 and 0 <= pos < 16384 and imp.HasField("model_version"):
        try:  # the common case: every length and the position below 16384 (one-lookup varints)
            inner = b"\x0a%b%b\x12%b%b" % (L[len(sf)], sf, L[len(it)], it)
            if feature_set:
                inner += b"\x1a%b%b" % (L[len(feature_set)], feature_set)
            mv = imp.model_version.SerializeToString()
            ms = imp_ms
            head = b"\x0a%b%b\x12%b%b\x1a%b%b\x22%b%b\x38%b\x4a%b%b" % (
                L[len(s)], s, L[len(r)], r, L[len(u)], u, L[len(it)], it,
                bytes((ms & 127 | 128, ms >> 7 & 127 | 128, ms >> 14 & 127 | 128, ms >> 21 & 127 | 128,
                       ms >> 28 & 127 | 128, ms >> 35)),
                L[len(inner)], inner)
            if pos:
                return head + b"\x50%b\x5a%b%b" % (L[pos], L[len(mv)], mv)
            return head + b"\x5a%b%b" % (L[len(mv)], mv)
        except IndexError:
            pass
    out = b"\x0a%b%b\x12%b%b\x1a%b%b\x22%b%b" % (_ld(s), s, _ld(r), r, _ld(u), u, _ld(it), it)
    if imp_ms:
        out += b"\x38" + _time_varint(imp_ms)
    if sf:
        inner = b"\x0a%b%b\x12%b%b" % (_ld(sf), sf, _ld(it), it)
        if feature_set:
            inner += b"\x1a%b%b" % (_ld(feature_set), feature_set)
        out += b"\x4a%b%b" % (_ld(inner), inner)
    if pos:
        out += b"\x50" + (L[pos] if 0 < pos < 16384 else _uvarint(pos))
    if imp.HasField("model_version"):
        mv = imp.model_version.SerializeToString()
        out += b"\x5a%b%b" % (_ld(mv), mv)
    return out


_POSITIVE = b"\x2d\x00\x00\x80\x3f"  # label (5) = 1.0f


def sample_tail(label: int, types: bytes, click_ms: int, joined_ms: int) -> bytes:
    """label (5), event_types (6), click_timestamp_ms (8), joined_at_ms (12): appended to :func:`encode_body`.

    (Protobuf reads fields in any order; the message equals the one built with the API.)
    """
    joined = b"\x60" + _time_varint(joined_ms) if joined_ms else b""
    if not label:
        return joined
    out = _POSITIVE
    if types:
        packed = b"".join(_LEN[t] if 0 <= t < 16384 else _uvarint(t) for t in types)
        out += b"\x32%b%b" % (_ld(packed), packed)
    return out + b"\x40" + _time_varint(click_ms) + joined  # click: optional, present for positives even when 0


def encode_sample(sid: str, imp: Impression, imp_ms: int, label: int, types: bytes, click_ms: int, joined_ms: int,
                  feature_set: bytes = b"") -> bytes:
    """The serialized ``LabeledSample`` of an impression: :func:`encode_body` + :func:`sample_tail`."""
    return encode_body(sid, imp, imp_ms, feature_set) + sample_tail(label, types, click_ms, joined_ms)


def build_sample(sid: str, imp: Impression, imp_ms: int, label: int, types: bytes, click_ms: int, joined_ms: int,
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

_HEAD = struct.Struct("<BqqqHHI")  # kind, a, b, c, len(sid), len(types), len(payload)


def encode_entries(items: Iterable[tuple[str, Entry | None]]) -> bytes:
    """(sid, entry-or-None) pairs -> one blob (a None entry is a tombstone)."""
    pack = _HEAD.pack
    parts: list[bytes] = []
    append = parts.append
    for sid, e in items:
        key = sid.encode()
        if e is None:
            append(pack(_TOMBSTONE, 0, 0, 0, len(key), 0, 0))
            append(key)
        else:
            types, payload = e[4], e[5]
            append(pack(e[0], e[1], e[2], e[3], len(key), len(types), len(payload)))
            append(key)
            if types:
                append(types)
            if payload:
                append(payload)
    return b"".join(parts)


def decode_entries(blob: bytes | memoryview) -> Iterator[tuple[str, Entry | None]]:
    """Inverse of :func:`encode_entries`; ValueError on a truncated blob."""
    mv = memoryview(blob)
    unpack = _HEAD.unpack_from
    size = _HEAD.size
    pos, end = 0, len(mv)
    while pos < end:
        if pos + size > end:
            raise ValueError("truncated checkpoint entry header")
        kind, a, b, c, nk, nt, npl = unpack(mv, pos)
        pos += size
        stop = pos + nk + nt + npl
        if stop > end:
            raise ValueError("truncated checkpoint entry")
        sid = bytes(mv[pos:pos + nk]).decode()
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
        yield sid, (kind, a, b, c, types, payload)


def parse_sample_id(value: bytes) -> tuple[str, int, int] | None:
    """A samples-topic value -> (sample_id, impression time, label), or None if it is not a LabeledSample."""
    try:
        s = LabeledSample.FromString(value)
    except (_ProtoDecodeError, RuntimeError):
        return None
    if not s.sample_id:
        return None
    return s.sample_id, s.impression_timestamp_ms, int(s.label >= 0.5)


__all__ = ["DONE", "EARLY", "OPEN", "Entry", "JoinCounts", "JoinState", "Watermark", "decode_entries", "encode_entries",
           "build_sample", "encode_body", "encode_sample", "event_type_numbers", "parse_sample_id",
           "sample_id", "sample_tail"]
