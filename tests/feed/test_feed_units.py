"""Pure logic of the gateway: deadline slices, experiment buckets, request validation, the fallback record."""

from __future__ import annotations

import math

import pytest

from feed.deadline import Budget, stage_slice
from feed.experiments import Experiments, RankingTarget, assign_bucket
from feed.fallback import LastGoodFeeds
from feed.validation import validate_request
from proto.cascade.v1 import common_pb2, feed_pb2
from ranking.traffic import TrafficSplit
from serving.validation import ValidationError

SHARES = {"features": 0.10, "recall": 0.25, "ranking": 0.45, "rerank": 0.20}
ALL = ("recall", "features", "ranking", "rerank")


# ---------------------------------------------------------------- deadline slicing


def test_each_stage_gets_its_share_of_what_is_left_among_the_pending_stages():
    assert stage_slice("recall", 0.100, ALL, SHARES) == pytest.approx(0.025)
    # recall used 10 of its 25 ms: 90 ms left among features, ranking, rerank (0.75 of the shares)
    assert stage_slice("ranking", 0.090, ("features", "ranking", "rerank"), SHARES) == pytest.approx(0.090 * 0.45 / 0.75)
    assert stage_slice("features", 0.090, ("features", "ranking", "rerank"), SHARES) == pytest.approx(0.090 * 0.10 / 0.75)
    # the last stage gets everything that is left but the reserve
    assert stage_slice("rerank", 0.030, ("rerank",), SHARES, reserve_s=0.003) == pytest.approx(0.027)


def test_slices_never_exceed_the_remaining_time_and_sum_to_it():
    remaining, reserve = 0.2, 0.005
    parts = [stage_slice(s, remaining, ALL, SHARES, reserve) for s in ALL]
    assert sum(parts) == pytest.approx(remaining - reserve)
    assert all(0 <= p <= remaining for p in parts)


def test_degenerate_budgets():
    assert stage_slice("recall", 0.002, ALL, SHARES, reserve_s=0.005) == 0.0  # nothing left past the reserve
    assert stage_slice("recall", -1.0, ALL, SHARES) == 0.0
    assert stage_slice("rerank", 0.08, ("ranking", "rerank"), {}) == pytest.approx(0.04)  # no shares: even split
    assert stage_slice("ranking", 0.08, ("ranking", "rerank"), {"ranking": 0.0, "rerank": 1.0}) == 0.0
    assert stage_slice("extra", 0.06, ("rerank",), SHARES) == 0.0  # a stage without a share gets nothing
    assert stage_slice("rerank", 0.06, (), SHARES) == pytest.approx(0.06)  # itself counts as pending


def test_budget_slices_shrink_with_the_clock():
    now = [100.0]
    b = Budget(0.1, SHARES, 0.0, clock=lambda: now[0])
    assert b.slice("recall", ALL) == pytest.approx(0.025)
    now[0] += 0.04  # recall took 40 ms
    assert b.remaining() == pytest.approx(0.06)
    assert b.slice("ranking", ("features", "ranking", "rerank")) == pytest.approx(0.06 * 0.45 / 0.75)
    now[0] += 1.0
    assert b.remaining() == 0.0 and b.slice("rerank", ("rerank",)) == 0.0


# ---------------------------------------------------------------- experiment buckets


def test_buckets_are_stable_and_match_the_treatment_share():
    users = [f"user-{i}" for i in range(20_000)]
    first = [assign_bucket("ranking_ab", u, 0.3) for u in users]
    assert first == [assign_bucket("ranking_ab", u, 0.3) for u in users]  # deterministic
    share = first.count("treatment") / len(users)
    sd = math.sqrt(0.3 * 0.7 / len(users))
    assert abs(share - 0.3) < 5 * sd, share
    # raising the share only adds users to treatment; another experiment name reshuffles
    more = [assign_bucket("ranking_ab", u, 0.5) for u in users]
    assert all(m == "treatment" for f, m in zip(first, more) if f == "treatment")
    other = [assign_bucket("other_exp", u, 0.3) for u in users]
    assert sum(a != b for a, b in zip(first, other)) > len(users) * 0.3
    # the same hash as ranking's traffic splits: one experiment name, one bucket per user on both sides
    split = TrafficSplit("ranking_ab", "v2", 0.3)
    assert first[:500] == [split.bucket(u) for u in users[:500]]


def test_no_experiment_and_extreme_shares():
    assert assign_bucket("", "u1", 0.5) == "default"
    assert {assign_bucket("e", f"u{i}", 0.0) for i in range(100)} == {"control"}
    assert {assign_bucket("e", f"u{i}", 1.0) for i in range(100)} == {"treatment"}


def test_overrides_and_bucket_ranking_targets():
    exp = Experiments("ranking_ab", 0.5, {"treatment": "ftrl", "control": "@v1"})
    natural = exp.assign("u7")
    forced = exp.assign("u7", bucket="treatment" if natural.bucket == "control" else "control", overridden=True)
    assert forced.bucket != natural.bucket and forced.overridden and not natural.overridden
    t = exp.assign("u7", bucket="treatment", overridden=True).ranking
    assert t == RankingTarget("ftrl", None)
    assert exp.assign("u7", bucket="control", overridden=True).ranking == RankingTarget(None, "v1")
    assert exp.assign("u7", bucket="treatment", model_version="v9", overridden=True).ranking == RankingTarget("ftrl", "v9")
    none = Experiments("", 0.5).assign("u7", bucket="treatment", overridden=True)
    assert none.bucket == "default" and none.overridden  # ignored without an experiment, still flagged
    assert RankingTarget.parse("deepfm@v3") == RankingTarget("deepfm", "v3")
    for bad in ("", "deepfm@", "@"):
        with pytest.raises(ValueError):
            RankingTarget.parse(bad)


# ---------------------------------------------------------------- validation


def _req(**kw):
    r = feed_pb2.GetFeedRequest(user_id="u1", count=10)
    for k, v in kw.items():
        if k == "exclude_item_ids":
            r.exclude_item_ids.extend(v)
        elif k == "context":
            r.context.CopyFrom(v)
        elif k == "overrides":
            r.experiment_overrides.CopyFrom(v)
        else:
            setattr(r, k, v)
    return r


MALFORMED = [
    ({"user_id": ""}, "user_id"),
    ({"user_id": "   "}, "user_id"),
    ({"user_id": "é" * 65}, "user_id"),  # 130 bytes
    ({"count": 0}, "count"),
    ({"count": 101}, "count"),
    ({"count": -3}, "count"),
    ({"request_id": ""}, "request_id"),
    ({"request_id": "a" * 65}, "request_id"),
    ({"request_id": "has space"}, "request_id"),
    ({"request_id": "slash/no"}, "request_id"),
    ({"exclude_item_ids": ["1"] * 1001}, "exclude_item_ids"),
    ({"exclude_item_ids": ["1", ""]}, "exclude_item_ids[1]"),
    ({"exclude_item_ids": ["x" * 129]}, "exclude_item_ids[0]"),
    ({"context": common_pb2.RequestContext(page_index=-1)}, "context.page_index"),
    ({"context": common_pb2.RequestContext(surface="s" * 65)}, "context.surface"),
    ({"context": common_pb2.RequestContext(device_id="d" * 129)}, "context.device_id"),
    ({"context": common_pb2.RequestContext(attributes={f"k{i}": "v" for i in range(33)})}, "context.attributes"),
    ({"context": common_pb2.RequestContext(attributes={"k": "v" * 257})}, "context.attributes['k']"),
    ({"overrides": feed_pb2.ExperimentOverrides(bucket="blue")}, "experiment_overrides.bucket"),
    ({"overrides": feed_pb2.ExperimentOverrides(ranking_model_version="")}, "experiment_overrides.ranking_model_version"),
    ({"overrides": feed_pb2.ExperimentOverrides(recall_quotas={"popular": 5001})}, "experiment_overrides.recall_quotas['popular']"),
    ({"overrides": feed_pb2.ExperimentOverrides(recall_quotas={"popular": -1})}, "experiment_overrides.recall_quotas['popular']"),
]


@pytest.mark.parametrize("kw, field", MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_requests_name_the_field(kw, field):
    with pytest.raises(ValidationError) as err:
        validate_request(_req(**kw))
    assert err.value.field == field


def test_valid_requests_and_what_they_carry():
    ok = validate_request(_req(request_id="req-1:a.B_9", count=100, exclude_item_ids=["1"] * 1000,
                               context=common_pb2.RequestContext(surface="")))
    assert ok.request_id == "req-1:a.B_9" and ok.count == 100 and ok.exclude == {"1"} and ok.surface == "home_feed"
    assert not ok.overridden and ok.bucket is None
    ov = validate_request(_req(overrides=feed_pb2.ExperimentOverrides(bucket="control", ranking_model_version="v1",
                                                                      recall_quotas={"popular": 0},
                                                                      disabled_rerank_rules=["nope"])))
    assert ov.overridden and ov.bucket == "control" and ov.model_version == "v1" and ov.recall_quotas == {"popular": 0}
    assert ov.disabled_rules == ("nope",)  # unknown rule names are passed on (rerank ignores them)
    assert validate_request(_req(overrides=feed_pb2.ExperimentOverrides(disabled_rerank_rules=["x"]))).overridden
    assert not validate_request(_req(overrides=feed_pb2.ExperimentOverrides())).overridden  # set but empty
    assert validate_request(_req(user_id="anon:device-1")).request_id is None  # unset: the server generates one


# ---------------------------------------------------------------- last good feed record


def test_the_last_good_record_keeps_the_page_first_then_more_of_the_ranked_list():
    page = feed_pb2.GetFeedResponse(request_id="r", served_at_ms=5)
    for i, item in enumerate(["a", "b"]):
        page.items.add(item_id=item, score=1.0 - i / 10, position=i)
    more = [feed_pb2.FeedItem(item_id=x, score=0.1) for x in ("b", "c", "d", "e")]
    stored = feed_pb2.GetFeedResponse.FromString(LastGoodFeeds.record(page, more, max_items=4))
    assert [i.item_id for i in stored.items] == ["a", "b", "c", "d"]
    assert stored.request_id == "r" and stored.served_at_ms == 5


# ---------------------------------------------------------------- item attributes (real feature store)


def test_item_attributes_are_read_once_then_served_from_the_cache(feed_env):
    from featurestore.client import FeatureClient

    from feed.attributes import EMPTY, ItemAttributes

    env = feed_env
    now = [1000.0]
    client = FeatureClient.from_config(env.config, env.redis_url, check_registry=False)
    try:
        attrs = ItemAttributes(client, env.config.feed.item_attributes, cache_items=4, cache_ttl_s=60.0, clock=lambda: now[0])
        ids = ["1", "2", "3"]
        assert attrs.cached(ids) is None  # nothing cached yet
        first = attrs.read("7", [*ids, "999999"])
        assert [a[:2] for a in first.attrs[:3]] == [env.attrs[i][:2] for i in ids]  # category, author of the catalogue
        assert first.attrs[3] == EMPTY and first.missing == 1  # not in the catalogue
        assert attrs.stats == {"hits": 0, "misses": 4}
        assert attrs.cached(ids).attrs == first.attrs[:3]  # no I/O now
        again = attrs.read("7", ["4", "1"])  # only "4" is read
        assert attrs.stats["misses"] == 5 and again.attrs[1] == first.attrs[0]
        assert attrs.cached(["1"]) is None and attrs.cached(["2", "4"]) is not None  # 4 entries at most: first in, first out
        now[0] += 61.0
        assert attrs.cached(["2"]) is None  # expired
    finally:
        client.close()
