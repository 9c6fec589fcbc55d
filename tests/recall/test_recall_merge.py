"""The merge: quotas, de-duplication with attribution, filtering, backfill, and channels that time out or fail."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recall.channel import RecallQuery
from recall.merge import ChannelStatus, RecallMerger
from recall_helpers import ScriptedChannel
from serving.context import request_scope

Q = RecallQuery(user_id=1, now_ms=0)


def merger(*channels, quotas, timeouts=None, weights=None, overfetch=0.0, rrf_k=0.0, order=None) -> RecallMerger:
    return RecallMerger(list(channels), quotas=quotas, timeouts_ms=timeouts or {c.name: 1000.0 for c in channels},
                        weights=weights, rrf_k=rrf_k, overfetch=overfetch, order=order)


def run(m: RecallMerger, count: int, query: RecallQuery = Q, **kw):
    return asyncio.run(m.recall(query, count, **kw))


def test_quotas_dedup_and_attribution():
    a = ScriptedChannel("a", [1, 2, 3, 4, 5, 6])
    b = ScriptedChannel("b", [3, 7, 8, 9])
    m = merger(a, b, quotas={"a": 3, "b": 2}, overfetch=1.0)
    res = run(m, 5)
    assert a.calls == [6] and b.calls == [4]  # quota x (1 + overfetch)
    # primary: a's first 3 (1, 2, 3) and b's first 2 (3, 7): 3 is shared, so one backfill, the best of the rest
    # by merged score (b's 8 at position 2 beats a's 4 at position 3)
    assert sorted(res.items.tolist()) == [1, 2, 3, 7, 8]
    assert res.backfilled == 1
    # 3 was returned by both and keeps both channels, with their native scores and ranks
    assert res.attributions(res.items.tolist().index(3)) == [("a", pytest.approx(1.0 - 0.1 * 2), 2), ("b", 1.0, 0)]
    assert res.channels_of(1) == ["a"] and res.channels_of(7) == ["b"]
    # merged = sum of 1 / (0 + pos + 1): 3 = 1/3 + 1, 1 = 1, 2 = 1/2, 7 = 1/2, 8 = 1/3
    assert res.items.tolist() == [3, 1, 2, 7, 8]  # equal merged score (2, 7): smaller id first
    assert res.merged_scores.tolist() == pytest.approx([4 / 3, 1.0, 0.5, 0.5, 1 / 3])
    assert [(o.name, o.status, o.quota, o.returned) for o in res.outcomes] == [
        ("a", ChannelStatus.OK, 3, 6), ("b", ChannelStatus.OK, 2, 4)]
    assert not res.degraded


def test_filtering_exclude_and_recent_items():
    a = ScriptedChannel("a", [1, 2, 3, 4, 5])
    m = merger(a, quotas={"a": 3})
    res = run(m, 3, RecallQuery(user_id=1, now_ms=0, recent_items=(2,)), exclude=[4])
    assert res.items.tolist() == [1, 3, 5]
    assert a.calls == [3 + 2]  # asked for quota + room for the 2 filtered ids
    # the channel's ranks stay its own
    assert res.attributions(1) == [("a", pytest.approx(0.75), 2)]


def test_request_quotas_weights_and_count_scaling():
    a = ScriptedChannel("a", list(range(100, 200)))
    b = ScriptedChannel("b", list(range(200, 300)))
    m = merger(a, b, quotas={"a": 60, "b": 40})
    res = run(m, 10)  # fewer wanted than the quotas add up to: every quota shrinks in proportion
    assert a.calls[-1] == 6 and b.calls[-1] == 4 and len(res) == 10
    res = run(m, 100, quotas={"b": 0})  # a request disables b
    assert res.outcome("b").status == ChannelStatus.SKIPPED and res.outcome("b").message == "disabled (quota 0)"
    assert set(res.items.tolist()) <= set(range(100, 200)) and not res.degraded
    m = merger(a, b, quotas={"a": 5, "b": 5}, weights={"a": 1.0, "b": 3.0}, rrf_k=1.0)
    res = run(m, 10)
    assert res.items[0] == 200 and res.merged_scores[0] == pytest.approx(3 / 2)


def test_backfill_when_a_channel_under_delivers_or_does_not_apply():
    a = ScriptedChannel("a", [1, 2, 3, 4, 5, 6, 7, 8])
    short = ScriptedChannel("short", [20])
    m = merger(a, short, quotas={"a": 4, "short": 4}, overfetch=1.0)
    res = run(m, 8)
    assert len(res) == 8 and res.backfilled == 3  # short gave 1 of 4: a's surplus fills up
    assert set(res.items.tolist()) == {1, 2, 3, 4, 5, 6, 7, 20}
    # a channel that does not apply to the user is SKIPPED and its quota goes to the others up front
    na = ScriptedChannel("na", [30, 31], applicable=False)
    m = merger(a, na, quotas={"a": 4, "na": 4})
    res = run(m, 8)
    assert res.outcome("na").status == ChannelStatus.SKIPPED and na.calls == []
    assert a.calls[-1] == 8 and len(res) == 8 and not res.degraded
    # configured but not loaded: SKIPPED too, listed in configuration order
    m = merger(a, quotas={"emb": 4, "a": 4}, order=["emb", "a"])
    res = run(m, 8)
    assert [o.name for o in res.outcomes] == ["emb", "a"]
    assert res.outcome("emb").status == ChannelStatus.SKIPPED and res.outcome("emb").message == "channel not loaded"


def test_a_channel_that_times_out_degrades_but_does_not_fail():
    fast = ScriptedChannel("fast", [1, 2, 3, 4])
    slow = ScriptedChannel("slow", [9, 10], delay_s=5.0)
    m = merger(fast, slow, quotas={"fast": 2, "slow": 2}, timeouts={"fast": 2000.0, "slow": 50.0}, overfetch=1.0)
    res = run(m, 4)
    assert res.outcome("slow").status == ChannelStatus.TIMEOUT
    assert res.outcome("slow").latency_ms == pytest.approx(50.0)
    assert res.outcome("slow").returned == 0 and "50.0 ms" in res.outcome("slow").message
    assert res.outcome("fast").status == ChannelStatus.OK
    assert res.degraded and not res.all_failed
    assert res.items.tolist() == [1, 2, 3, 4]  # fast's surplus backfilled the lost quota


def test_the_request_deadline_caps_every_channel_budget():
    slow = ScriptedChannel("slow", [1], delay_s=5.0)
    m = merger(slow, quotas={"slow": 1}, timeouts={"slow": 10_000.0})

    async def scenario():
        with request_scope("rid", 0.2):
            return await m.recall(Q, 1)

    res = asyncio.run(scenario())
    assert res.outcome("slow").status == ChannelStatus.TIMEOUT
    assert res.outcome("slow").latency_ms < 200.0 and res.all_failed and len(res) == 0


def test_a_channel_that_raises_is_an_error_and_others_still_answer():
    ok = ScriptedChannel("ok", [1, 2])
    bad = ScriptedChannel("bad", [5], error=ConnectionError("redis went away"))
    m = merger(ok, bad, quotas={"ok": 2, "bad": 2})
    res = run(m, 4)
    assert res.outcome("bad").status == ChannelStatus.ERROR
    assert res.outcome("bad").message == "ConnectionError: redis went away"
    assert res.items.tolist() == [1, 2] and res.degraded and not res.all_failed
    # every channel failing is reported as such (the service turns it into UNAVAILABLE)
    res = run(merger(bad, quotas={"bad": 2}), 4)
    assert res.all_failed and len(res) == 0


def test_a_channel_returning_garbage_is_an_error():
    class Broken:
        name = "broken"

        async def recall(self, query, k):
            return [1, 2, 3]

    ok = ScriptedChannel("ok", [1])
    res = run(merger(ok, Broken(), quotas={"ok": 1, "broken": 1}), 2)
    assert res.outcome("broken").status == ChannelStatus.ERROR and "not a ChannelResult" in res.outcome("broken").message
    assert res.items.tolist() == [1]


def test_duplicates_inside_one_channel_list_count_once():
    a = ScriptedChannel("a", [1, 1, 2])
    res = run(merger(a, quotas={"a": 3}), 3)
    assert res.items.tolist() == [1, 2]
    assert res.attributions(0) == [("a", 1.0, 0)]
    assert np.all(np.diff(res.merged_scores) <= 0)


def test_a_second_round_tops_up_a_short_union():
    a = ScriptedChannel("a", list(range(1, 9)))
    short = ScriptedChannel("short", [20])
    m = merger(a, short, quotas={"a": 2, "short": 2})  # no overfetch: nothing to backfill from in round one
    res = run(m, 4)
    assert a.calls == [2, 3] and short.calls == [2]  # only the channel that filled its ask is asked again
    assert res.topped_up and sorted(res.items.tolist()) == [1, 2, 3, 20]
    # nothing more to get: no second round
    res = run(merger(ScriptedChannel("tiny", [1]), quotas={"tiny": 5}), 5)
    assert not res.topped_up and res.items.tolist() == [1]


def test_a_channels_capacity_moves_its_excess_quota_up_front():
    class Bounded(ScriptedChannel):
        def capacity(self, query):
            return 2

    a = ScriptedChannel("a", list(range(1, 20)))
    b = Bounded("b", [50, 51])
    res = run(merger(a, b, quotas={"a": 4, "b": 4}), 8)
    assert b.calls == [2] and a.calls == [6]  # b's 2 unusable slots went to a before anything ran
    assert len(res) == 8 and not res.topped_up
