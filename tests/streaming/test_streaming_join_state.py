"""The joiner's state machine without servers: joins, duplicates, orphans, watermark, bounds, persistence."""

from __future__ import annotations

import pytest

from proto.cascade.v1.common_pb2 import ChannelScore, ExperimentAssignment, FeatureSetRef, ModelVersion
from proto.cascade.v1.events_pb2 import Event
from proto.cascade.v1.records_pb2 import Impression, LabeledSample
from streaming.dedup import SampleDeduper
from streaming.join_state import (
    DONE,
    EARLY,
    OPEN,
    JoinState,
    Watermark,
    decode_entries,
    encode_entries,
    event_type_numbers,
    opened_time,
    parse_sample_id,
)

W = 10_000  # attribution window, ms
T0 = 1_700_000_000_000
CLICK, LIKE, DWELL = 1, 2, 4


def imp(req: str, item: str, ts: int, user: str = "u1", **kw) -> bytes:
    return Impression(request_id=req, user_id=user, item_id=item, timestamp_ms=ts, **kw).SerializeToString()


def ev(req: str, item: str, ts: int, type: int = CLICK, event_id: str = "", user: str = "u1") -> bytes:
    return Event(event_id=event_id or f"{req}-{item}-{ts}-{type}", type=type, user_id=user, item_id=item,
                 request_id=req, timestamp_ms=ts - 7, received_at_ms=ts).SerializeToString()


class Out:
    def __init__(self) -> None:
        self.samples: list[tuple[LabeledSample, bytes, int]] = []

    def __call__(self, value: bytes, key: bytes, partition: int, label: int) -> None:
        s = LabeledSample.FromString(value)
        assert int(s.label) == label
        self.samples.append((s, key, partition))

    def labels(self) -> dict[str, int]:
        ids = [s.sample_id for s, _, _ in self.samples]
        assert len(ids) == len(set(ids)), f"a sample id was emitted twice: {ids}"
        return {s.sample_id: int(s.label) for s, _, _ in self.samples}


def make(out: Out, **kw) -> JoinState:
    args = dict(window_ms=W, positive_types=frozenset({CLICK}), max_pending=1000, max_emitted=1000,
                retention_ms=5_000, emit=out, clock_ms=lambda: T0 + 99)
    args.update(kw)
    return JoinState(**args)


def test_click_joins_at_once_and_window_closes_negative() -> None:
    out = Out()
    st = make(out, feature_set=("fs", 3))
    mv = ModelVersion(model_name="ctr", version="v7", kind=1)
    st.impression(imp("r1", "a", T0, position=2, served_feature_id="sf1", model_version=mv,
                      experiment=ExperimentAssignment(bucket="control"),
                      recall_channels=[ChannelScore(channel="popular", score=1.0)]), partition=3)
    st.impression(imp("r1", "b", T0, position=3), partition=3)
    st.event(ev("r1", "a", T0 + 500, type=DWELL))
    st.event(ev("r1", "a", T0 + 900))
    assert out.labels() == {"r1:a": 1}  # positive as soon as the click arrives
    s, key, partition = out.samples[0]
    assert key == b"u1" and partition == 3
    assert (s.request_id, s.user_id, s.item_id, s.position) == ("r1", "u1", "a", 2)
    assert list(s.event_types) == [DWELL, CLICK]  # first-occurrence order
    assert s.impression_timestamp_ms == T0 and s.click_timestamp_ms == T0 + 900 - 7  # the event's own time
    assert s.features.served_feature_id == "sf1" and s.features.item_id == "a"
    assert (s.features.feature_set.name, s.features.feature_set.version) == ("fs", 3)
    assert s.model_version == mv and s.joined_at_ms == T0 + 99
    st.advance(T0 + W - 1)
    assert out.labels() == {"r1:a": 1}
    st.advance(T0 + W)  # the window of r1:b ends at T0 + W
    assert out.labels() == {"r1:a": 1, "r1:b": 0}
    neg = out.samples[1][0]
    assert neg.label == 0 and not neg.event_types and not neg.HasField("click_timestamp_ms")
    assert not neg.HasField("features")  # no served_feature_id on that impression
    assert st.counts.closed_watermark == 1 and st.n_open == 0 and st.n_done == 2


def test_click_before_impression() -> None:
    out = Out()
    st = make(out)
    st.event(ev("r2", "x", T0 + 300, type=LIKE))
    st.event(ev("r2", "x", T0 + 400))
    assert st.kind(b"r2:x") == EARLY and not out.samples
    st.impression(imp("r2", "x", T0), partition=0)
    assert out.labels() == {"r2:x": 1}
    assert list(out.samples[0][0].event_types) == [LIKE, CLICK]
    # an early non-positive event becomes part of the open impression
    st.event(ev("r3", "y", T0 + 10, type=DWELL))
    st.impression(imp("r3", "y", T0), partition=0)
    assert st.kind(b"r3:y") == OPEN and st.entry(b"r3:y")[4] == bytes([DWELL])


def test_attribution_by_click_time_progress_by_server_time() -> None:
    out = Out()
    st = make(out)
    st.impression(imp("r", "a", T0), partition=0)
    st.impression(imp("r", "b", T0), partition=0)
    batched = Event(event_id="b1", type=CLICK, user_id="u1", item_id="a", request_id="r", timestamp_ms=T0 + W - 100,
                    received_at_ms=T0 + W + 3_000)  # clicked in the window, sent by the app 3 s after it ended
    assert st.event(batched.SerializeToString()) == T0 + W + 3_000  # the watermark sees the server's time
    assert out.labels() == {"r:a": 1}
    late = Event(event_id="b2", type=CLICK, user_id="u1", item_id="b", request_id="r", timestamp_ms=T0 + W + 1,
                 received_at_ms=T0 + W + 2)
    st.event(late.SerializeToString())
    assert st.counts.late_clicks == 1 and "r:b" not in out.labels()
    ahead = Event(event_id="b3", type=LIKE, user_id="u9", item_id="z", request_id="q", timestamp_ms=T0 + 240_000,
                  received_at_ms=T0 + 5)  # a client clock four minutes ahead cannot move the watermark
    assert st.event(ahead.SerializeToString()) == T0 + 5


def test_duplicates_make_one_sample() -> None:
    out = Out()
    st = make(out)
    st.impression(imp("r", "a", T0), partition=0)
    st.impression(imp("r", "a", T0), partition=0)  # re-sent impression while open
    click = ev("r", "a", T0 + 50, event_id="e1")
    st.event(click)
    st.event(click)  # same event_id again (a retried LogEvents)
    st.event(ev("r", "a", T0 + 80, event_id="e2"))  # a second click on the same impression
    st.impression(imp("r", "a", T0), partition=0)  # and the impression once more, after the sample
    st.advance(T0 + 10 * W)
    assert out.labels() == {"r:a": 1}
    assert st.counts.duplicate_impressions == 2 and st.counts.duplicate_clicks == 2
    # early duplicate clicks too
    st.event(ev("q", "b", T0 + 20, event_id="e3"))
    st.event(ev("q", "b", T0 + 20, event_id="e3"))
    st.impression(imp("q", "b", T0 + 10), partition=0)
    assert out.labels()["q:b"] == 1 and st.counts.duplicate_clicks == 3


def test_orphans_no_request_id_late_and_invalid_are_counted() -> None:
    out = Out()
    st = make(out)
    st.event(ev("gone", "z", T0))  # its impression never comes
    st.event(ev("gone2", "z", T0, type=DWELL))
    st.event(Event(event_id="d", type=CLICK, user_id="u1", item_id="z", timestamp_ms=T0).SerializeToString())
    st.event(b"\xff\xff not a proto")
    st.impression(imp("", "a", T0), partition=0)  # no request id
    st.impression(imp("late", "a", T0), partition=0)
    st.advance(T0 + W - 1)
    assert st.counts.orphan_clicks == 0 and b"gone:z" in st.entries
    st.event(ev("late", "a", T0 + W + 50))  # read before the window closed, but clicked after it
    st.advance(T0 + W + 10)
    assert out.labels() == {"late:a": 0}
    assert st.counts.orphan_clicks == 1 and st.counts.orphan_events == 1
    assert st.counts.no_request_id == 1 and st.counts.invalid == 2 and st.counts.late_clicks == 1
    assert b"gone:z" not in st.entries
    st.event(ev("late", "a", T0 + W + 20))  # a click for an emitted negative: late, no new sample
    assert st.counts.late_clicks == 2 and len(out.samples) == 1


def test_bounded_state_closes_oldest_as_negatives() -> None:
    out = Out()
    st = make(out, max_pending=3)
    for i in range(5):
        st.impression(imp(f"r{i}", "a", T0 + i * 100), partition=0)
    assert st.n_open == 3 and out.labels() == {"r0:a": 0, "r1:a": 0}
    assert st.counts.closed_overflow == 2
    st.event(ev("r0", "a", T0 + 50))  # its click, after the early close: late, not a second sample
    st.event(ev("x", "y", T0 + 999))  # an early click overflows too: the oldest entry goes (r2)
    assert st.n_open == 3 and out.labels()["r2:a"] == 0 and st.counts.late_clicks == 1


def test_markers_are_forgotten_and_expired_impressions_dropped() -> None:
    out = Out()
    st = make(out, retention_ms=1_000)
    st.impression(imp("r", "a", T0), partition=0)
    st.advance(T0 + W)  # closes: window end T0 + W, marker until T0 + W + 1000
    assert st.n_done == 1
    st.impression(imp("r", "a", T0), partition=0)
    assert st.counts.duplicate_impressions == 1
    st.advance(T0 + W + 1_000)
    assert st.n_done == 0 and st.floor_ms == T0 + W and st.counts.forgotten == 1
    st.impression(imp("r", "a", T0), partition=0)  # could be a duplicate of the forgotten sample: dropped
    st.impression(imp("s", "a", T0 + 1), partition=0)  # window ends after the floor: a late impression, kept
    assert st.counts.expired_impressions == 1
    st.advance(T0 + W + 1_001)
    assert out.labels() == {"r:a": 0, "s:a": 0}
    # max_emitted: the oldest markers go early, raising the floor
    st2 = make(Out(), max_emitted=2)
    for i in range(3):
        st2.impression(imp(f"m{i}", "a", T0 + i), partition=0)
    st2.advance(T0 + W + 5)
    assert st2.n_done == 2 and st2.counts.evicted_markers == 1 and st2.floor_ms == T0 + W


def test_drain_closes_everything() -> None:
    out = Out()
    st = make(out)
    st.impression(imp("r", "a", T0), partition=0)
    st.event(ev("o", "b", T0))
    st.drain()
    assert out.labels() == {"r:a": 0} and st.counts.closed_drain == 1 and st.counts.orphan_clicks == 1
    assert st.n_open == 0


def test_delta_and_snapshot_round_trip() -> None:
    out = Out()
    st = make(out)
    st.impression(imp("r", "a", T0), partition=1)
    st.event(ev("r", "a", T0 + 3, type=DWELL))  # an open impression with an event type
    st.event(ev("e", "b", T0 + 5, type=DWELL))
    st.impression(imp("d", "c", T0), partition=0)
    st.event(ev("d", "c", T0 + 5))
    first = st.take_delta()
    assert {sid for sid, _ in first} == {b"r:a", b"e:b", b"d:c"} and not st.take_delta()
    assert dict(first)[b"r:a"] == st.entries[b"r:a"] and st.entry(b"r:a")[2:5] == (1, T0, bytes([DWELL]))
    st.event(ev("e", "b", T0 + 6))  # the early entry becomes positive
    st.advance(T0 + W)  # r:a closes (marker); e:b's early entry (positive at T0+6, close T0+W+6) stays
    second = st.take_delta()
    blob = encode_entries(first) + encode_entries(second)
    restored = make(Out())
    restored.load(decode_entries(blob))
    assert restored.entries == st.entries
    assert (restored.n_open, restored.n_done) == (st.n_open, st.n_done)
    assert restored.kind(b"r:a") == DONE and restored.kind(b"e:b") == EARLY
    # the restored state keeps joining: the positive early entry's impression arrives
    out2 = Out()
    joined = make(out2)
    joined.load(decode_entries(blob))
    joined.impression(imp("e", "b", T0 + 1), partition=0)
    assert out2.labels() == {"e:b": 1}
    # tombstones: a forgotten marker and an orphaned early entry disappear
    st.advance(T0 + W + 10_000)
    third = st.take_delta()
    assert any(e is None for _, e in third)
    restored.load(decode_entries(encode_entries(third)))
    assert restored.entries == st.entries and not restored.entries
    with pytest.raises(ValueError):
        list(decode_entries(blob[:-3]))


def test_delta_log_and_older_blobs() -> None:
    """The delta is the markers/removals log then the changed open entries; blobs of the older format still load."""
    import struct

    from streaming.join_state import encode_log, encode_open, payload_parts, record_payload

    st = make(Out(), retention_ms=1_000)
    st.impression(imp("r", "a", T0), partition=0)
    st.impression(imp("r", "b", T0 + 1), partition=1)
    st.event(ev("r", "b", T0 + 2))  # positive at once: a marker, the open entry leaves the delta
    st.event(ev("o", "z", T0 + 5, type=DWELL))  # early, later an orphan
    st.advance(T0 + W)  # r:a closes
    blob = b"".join(st.take_delta_blobs())
    restored = make(Out(), retention_ms=1_000)
    restored.load_blobs([blob])
    assert restored.entries == st.entries and set(st.entries) == {b"r:a", b"r:b", b"o:z"}
    assert st.kind(b"r:b") == DONE and st.entries[b"r:b"] == (T0 + 1 + W) * 2 + 1  # a marker: window end * 2 + label
    st.advance(T0 + 2 * W + 1_001)  # o:z orphaned, both markers forgotten: three removals
    second = b"".join(st.take_delta_blobs())
    assert [e for _, e in decode_entries(second)] == [None, None, None]
    restored.load_blobs([second])
    assert restored.entries == st.entries == {}
    assert st.take_delta_blobs() == [] and encode_log([], []) == b""
    # one record per entry, as blobs were written before this format
    head = struct.Struct("<BqqqHHI")
    old_payload = b"\x02\x00u1" + b"BODY"  # the key after a 2-byte length, then the sample's fields
    old = (head.pack(DONE, 123, 1, 100, 3, 0, 0) + b"x:1" + head.pack(OPEN, 500, 2, 400, 3, 1, 8) + b"y:2" + b"\x04"
           + old_payload + head.pack(255, 0, 0, 0, 3, 0, 0) + b"x:1")
    opened = struct.pack("<qHB", 400, 2, 1) + b"\x04" + record_payload(b"u1", b"BODY")
    assert list(decode_entries(old + blob)) == [(b"x:1", 201), (b"y:2", opened), (b"x:1", None)] + list(
        decode_entries(blob))
    assert payload_parts(opened[12:]) == (b"u1", b"BODY")
    # an open block of the layout before (byte 5): its payloads are converted too
    block = encode_open([b"y:2"], [struct.pack("<qHB", 400, 2, 1) + b"\x04" + old_payload])
    assert list(decode_entries(b"\x05" + block[1:])) == [(b"y:2", opened)]
    for cut in (1, 5, len(blob) // 2):
        with pytest.raises(ValueError):
            list(decode_entries(blob[:-cut]))


def test_deltas_rebuild_the_state_under_random_traffic() -> None:
    """Whatever happens between checkpoints (late and duplicate records, clicks before impressions, event types on
    open impressions, windows closing mid-bucket, overflow, evictions), the deltas applied in order give the durable
    state, and re-reading the impressions read so far (replay_impressions) re-opens exactly the rest."""
    import random
    from collections import namedtuple

    Rec = namedtuple("Rec", "value timestamp")
    rng = random.Random(11)
    for max_pending, max_emitted in ((10_000, 10_000), (40, 60)):
        kw = dict(max_pending=max_pending, max_emitted=max_emitted, retention_ms=3_000)
        st, restored = make(Out(), **kw), make(Out(), **kw)
        blobs: list[bytes] = []
        read: list[tuple[Rec, int]] = []
        now = T0
        for step in range(3_000):
            now += rng.randrange(0, 40)
            req, item = f"r{rng.randrange(400)}", f"i{rng.randrange(3)}"
            roll = rng.random()
            if roll < 0.5:  # some close about where the watermark is: in the bucket it is in
                ts = now - W - rng.randrange(0, 1_000) if rng.random() < 0.5 else now - 3 * W + rng.randrange(-200, 200)
                read.append((Rec(imp(req, item, ts), 0), rng.randrange(2)))
                st.impression(read[-1][0].value, partition=read[-1][1])
            elif roll < 0.8:
                st.event(ev(req, item, now - W - rng.randrange(0, 800), type=rng.choice((CLICK, LIKE, DWELL))))
            elif roll < 0.95:
                st.advance(now - W - W - rng.randrange(0, 300))
            else:
                blobs += st.take_delta_blobs()
                restored = make(Out(), **kw)
                restored.load_blobs(blobs)
                durable = dict(st.snapshot())
                assert restored.entries == {k: v for k, v in durable.items() if opened_time(v) is None}, step
                assert restored.reopen == {k: opened_time(v) for k, v in durable.items()
                                          if opened_time(v) is not None}, step
                if step % 7 == 0:  # a recovery: the checkpoint, then every impression read so far again
                    out = Out()
                    again = make(out, **kw)
                    again.load_blobs(blobs)
                    again.set_times(st.watermark_ms, st.floor_ms)
                    for rec, partition in read:
                        again.replay_impressions([rec], partition)
                    assert again.entries == st.entries and not out.samples, step
        blobs += st.take_delta_blobs()
        restored = make(Out(), **kw)
        restored.load_blobs(blobs)
        assert restored.entries == {k: v for k, v in st.snapshot() if opened_time(v) is None}
        assert st.counts.samples > 100
        assert len(restored.entries) < len(st.entries)  # open impressions are not in the deltas, only their ids


def test_open_impressions_are_replayed_not_stored() -> None:
    """A checkpoint holds an open impression's id and time only; re-reading the input opens it again (the record
    that opened it, not a duplicate of another time or one already emitted); an older checkpoint's open
    impressions, which cannot be re-read, stay in every snapshot (pin_open)."""
    from collections import namedtuple

    Rec = namedtuple("Rec", "value timestamp")
    st = make(Out())
    records = [Rec(imp("r", "a", T0), 0), Rec(imp("r", "b", T0 + 1), 0), Rec(imp("r", "a", T0 + 5), 0)]
    st.impressions(records, partition=0)
    st.event(ev("r", "b", T0 + 3))  # r:b emitted
    blobs = st.take_delta_blobs()
    assert sum(map(len, blobs)) < 100  # ids and integers, no samples
    out = Out()
    again = make(out)
    again.load_blobs(blobs)
    assert again.reopen == {b"r:a": T0} and b"r:a" not in again.entries
    assert again.replay_impressions(records[2:], 0) == -1 and again.reopen  # another time: not the one
    assert again.replay_impressions(records, 0) == T0 and not again.reopen and not out.samples
    assert again.entries == st.entries and again.counts.reopened == 1 and again.counts.impressions == 0
    # a checkpoint of the format before: the open impression was stored and is kept
    old = make(Out())
    old.load(st.snapshot())
    old.load([(b"r:a", st.entries[b"r:a"])])
    old.pin_open()
    assert dict(old.snapshot())[b"r:a"] == st.entries[b"r:a"]


def test_recovered_samples_are_marked_and_replays_counted() -> None:
    out = Out()
    st = make(out)
    value = imp("r", "a", T0)
    st.impression(value, partition=0)
    st.impression(imp("r", "b", T0), partition=0)
    emitted = Out()
    other = make(emitted)
    other.impression(value, partition=0)
    other.event(ev("r", "a", T0 + 5))
    sid, imp_ms, label = parse_sample_id(emitted.samples[0][0].SerializeToString())
    assert (sid, imp_ms, label) == (b"r:a", T0, 1)
    assert st.mark_emitted(sid, imp_ms + W, label) and not st.mark_emitted(sid, imp_ms + W, label)
    st.recovered.add(sid)
    assert st.n_open == 1 and st.n_done == 1
    st.impression(value, partition=0)  # the replayed impression
    assert st.counts.replayed == 1 and st.counts.duplicate_impressions == 0
    st.drain()
    assert out.labels() == {"r:b": 0}


def test_watermark_min_of_partitions_idle_advance() -> None:
    wm = Watermark(lateness_ms=100, idle_ms=2_000)
    parts = ["i0", "i1", "e0"]
    assert wm.update(parts, [], 0.0) < 0  # nothing read yet
    wm.observe("i0", 10_000)
    wm.observe("i1", 5_000)
    assert wm.update(parts, [], 0.0) < 0  # e0 has records but none read: holds
    wm.observe("e0", 7_000)
    assert wm.update(parts, [], 0.0) == 4_900  # the slowest partition decides
    assert wm.update(parts, ["i1"], 0.0) == 6_900  # i1 consumed to its end: no longer holds
    assert wm.update(parts, ["i1", "e0", "i0"], 0.0) == 9_900  # all caught up: the newest
    assert wm.update(parts, ["i1", "e0", "i0"], 1.9) == 9_900  # quiet, within the grace
    assert wm.update(parts, ["i1", "e0", "i0"], 5.0) == 9_900 + 5_000  # quiet: the wall clock takes over
    wm.observe("i1", 6_000)
    assert wm.update(parts, [], 6.0) == 14_900  # never moves back


def test_positive_types_and_dedup() -> None:
    assert event_type_numbers(["click", "LIKE"]) == frozenset({1, 2})
    with pytest.raises(ValueError, match="unknown event type"):
        event_type_numbers(["clik"])
    d = SampleDeduper(capacity=2)
    assert d.filter(["a", "b", "a", "c", "a"]) == [True, True, False, True, True]  # "a" evicted by "c"
    assert d.duplicates == 1 and d.evicted == 2 and len(d) == 2
    again = SampleDeduper.from_state(d.state(), capacity=2)
    assert again.check("a") and not again.check("b")


def test_samples_match_protobuf() -> None:
    """Samples made by the joiner's table-driven encoding (and its general form) equal the protobuf API's."""
    import random

    from streaming.join_state import build_sample, encode_payload, payload_parts

    rng = random.Random(5)
    cases = 0
    for feature_set in (None, ("deepfm_movielens", 12)):
        fs = FeatureSetRef(name=feature_set[0], version=feature_set[1]).SerializeToString() if feature_set else b""
        out = Out()
        st = make(out, feature_set=feature_set, max_pending=10_000, max_emitted=10_000)
        made = {}
        for i in range(300):
            long_id = rng.random() < 0.2
            im = Impression(request_id="r" * rng.choice((1, 20, 127, 128, 300)) if long_id else f"req{rng.randrange(10**6)}",
                            user_id=rng.choice(("u", "ü")) + str(rng.randrange(1000)), item_id=f"i{i}",
                            position=rng.choice((0, 1, 127, 128, 20000, -1)), timestamp_ms=rng.choice((0, T0, 5, 1 << 45)),
                            served_feature_id=rng.choice(("", "sf-1", "x" * 200, "sfé")), score=rng.random(),
                            experiment=ExperimentAssignment(bucket="b"), surface="home")
            if rng.random() < 0.7:
                im.model_version.CopyFrom(ModelVersion(model_name=rng.choice(("ctr", "ctré")), version=f"v{rng.randrange(9)}",
                                                       kind=rng.choice((0, 3, 200))))
            sid = f"{im.request_id}:{im.item_id}"
            st.impression(im.SerializeToString(), partition=0, record_ts=T0 + 1)
            ts = im.timestamp_ms or T0 + 1
            payload = st.entry(sid.encode())[5]
            mv = im.model_version.SerializeToString() if im.HasField("model_version") else None
            assert payload == encode_payload(sid.encode(), im.request_id.encode(), im.user_id.encode(), im.item_id.encode(),
                                             im.served_feature_id.encode(), im.position, mv, ts, fs)
            assert payload_parts(payload)[0] == im.user_id.encode()
            types = b""
            if rng.random() < 0.5:
                types = bytes(rng.sample([DWELL, 8, 9], rng.randrange(0, 3))) + bytes([CLICK])
                click_ms = rng.choice((0, ts + 5))  # 0: unset, the received time counts
                for t in types:
                    st.event(Event(event_id=f"e{i}{t}", type=t, user_id=im.user_id, item_id=im.item_id,
                                   request_id=im.request_id, timestamp_ms=click_ms, received_at_ms=ts).SerializeToString())
            made[sid] = (im, ts, types, click_ms if types else 0)
        st.drain()
        assert len(out.samples) == len(made) == 300 and st.counts.invalid == 0
        for got, key, _ in out.samples:
            im, ts, types, click_ms = made[got.sample_id]
            want = build_sample(got.sample_id, im, ts, int(bool(types)), types, click_ms, T0 + 99, fs)
            assert got == want and key == im.user_id.encode()
            # the same bytes as protobuf's own, only the order of fields differs
            assert sorted(got.SerializeToString()) == sorted(want.SerializeToString())
            cases += 1
    assert cases == 600


def test_strings_that_are_not_utf8_make_no_sample() -> None:
    """The slim decoding reads strings as bytes; what the full parse refuses is still refused (counted invalid), and
    so are times beyond any clock."""
    out = Out()
    st = make(out)
    good_mv = ModelVersion(model_name="ctr", version="v1").SerializeToString()
    bad = [
        b"\x0a\x02r1\x12\x02\xff\xfe\x1a\x01a",  # user_id
        b"\x0a\x02r2\x12\x01u\x1a\x02\xc3\x28",  # item_id
        b"\x0a\x02r3\x12\x01u\x1a\x01a\x4a\x01\xff",  # served_feature_id
        b"\x0a\x02r4\x12\x01u\x1a\x01a\x3a\x05\x0a\x03\xe2\x82\x28",  # model_version.model_name
        b"\x0a\x02r5\x12\x01u\x1a\x01a\x3a\x01\xff",  # model_version: present, not a message
        b"\x0a\x02r6\x12\x01u\x1a\x01a\x3a\x03\x0a\x05a",  # model_version: truncated
    ]
    for value in bad:
        with pytest.raises(Exception):
            Impression.FromString(value)
        assert st.impression(value, partition=0, record_ts=T0) == -1
    st.event(b"\x12\x01a\x22\x01\xff\x2a\x01r\x10\x01")  # an event with a non-UTF-8 item id
    assert st.impression(imp("r8", "a", 1 << 62), partition=0) == -1  # no clock makes that time
    assert st.event(ev("r8", "a", -(1 << 61))) == -1
    fine = b"\x0a\x02r7\x12\x01u\x1a\x01a\x3a" + bytes([len(good_mv)]) + good_mv
    assert st.impression(fine, partition=0, record_ts=T0) == T0
    st.drain()
    assert st.counts.invalid == len(bad) + 3 and out.labels() == {"r7:a": 0}
    assert out.samples[0][0].model_version.model_name == "ctr"


def test_events_count_every_event_record_fed_in_a_batch() -> None:
    """`counts.events` is the number of event records read, positives that emit a sample included (the positive
    path once reused the loop's counter for a length)."""
    out = Out()
    st = make(out)
    st.impressions([_R(imp("r1", x, T0), T0) for x in "abc"], partition=0)
    st.events([_R(ev("r1", x, T0 + 100), T0) for x in "abc"] + [_R(ev("r1", "z", T0 + 100), T0)])
    assert out.labels() == {"r1:a": 1, "r1:b": 1, "r1:c": 1}
    assert st.counts.events == 4 and st.counts.positives == 3


class _R:
    """A ConsumerRecord's fields the batch entry points read."""

    def __init__(self, value: bytes, timestamp: int) -> None:
        self.value, self.timestamp = value, timestamp


def test_early_clicks_make_the_samples_protobuf_makes_and_their_markers() -> None:
    """Events read before their impression (the common case when the events topic is read ahead): the positive
    sample made when the impression comes equals the protobuf API's, and its marker is in state and delta."""
    import random

    from streaming.join_state import build_sample

    rng = random.Random(11)
    out = Out()
    st = make(out, max_pending=10_000, max_emitted=10_000)
    made = {}
    for i in range(200):
        ts = rng.choice((T0, T0 + 7_000, 1 << 45))
        im = Impression(request_id=f"q{i}", user_id=rng.choice(("u", "ü")) + str(i), item_id=f"i{i}", position=i % 12,
                        timestamp_ms=ts, served_feature_id=rng.choice(("", "sf")),
                        model_version=ModelVersion(model_name="ctr", version="v1", kind=1))
        types = bytes(rng.sample([DWELL, LIKE, 200], rng.randrange(0, 3))) + bytes([CLICK])
        click_ms = rng.choice((ts + 5, 0, 100, ts + W))  # 100: the general tail (a time below 2**14)
        for t in types:
            st.event(Event(event_id=f"e{i}{t}", type=t, user_id=im.user_id, item_id=im.item_id, request_id=im.request_id,
                           timestamp_ms=click_ms, received_at_ms=ts + 1).SerializeToString())
        made[f"q{i}:i{i}"] = (im, types, click_ms)
    st.take_delta_blobs()
    for sid in made:
        assert st.kind(sid.encode()) == EARLY
    st.impressions([_R(made[sid][0].SerializeToString(), T0) for sid in made], partition=2)
    assert len(out.samples) == len(made) and st.counts.positives == len(made) and st.n_open == 0
    for got, key, partition in out.samples:
        im, types, click_ms = made[got.sample_id]
        want = build_sample(got.sample_id, im, im.timestamp_ms, 1, types, click_ms, T0 + 99)
        assert got == want and key == im.user_id.encode() and partition == 2
        assert st.entry(got.sample_id.encode())[:4] == (DONE, im.timestamp_ms + W + 5_000, 1, im.timestamp_ms + W)
    restored = make(Out(), max_pending=10_000, max_emitted=10_000)
    restored.load(decode_entries(b"".join(st.take_delta_blobs())))
    assert {sid.encode() for sid in made} == {sid for sid, e in restored.entries.items() if e.__class__ is int}
