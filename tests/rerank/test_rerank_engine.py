"""RerankEngine in process: the pure pass, failing rules, validation shared with gRPC, proto conversion."""

from __future__ import annotations

import pytest

from cascade.config import RerankConfig
from proto.cascade.v1 import common_pb2, rerank_pb2
from rerank import Candidate, ItemKind, RerankEngine, RerankInput, load_rules, parse_rules
from rerank.rules import Rule
from serving.validation import ValidationError

NOW = 1_750_000_000_000


class _Broken(Rule):
    type = "broken"

    def __init__(self) -> None:
        self.params = type("P", (), {"rule_name": "broken"})()
        self.stores = None

    def apply(self, slate, ctx):
        raise RuntimeError("bug in a rule")


def _engine(rules=None) -> RerankEngine:
    return RerankEngine(rules or load_rules())


def _inp(**kw) -> RerankInput:
    base = dict(user_id="u1", count=3, now_ms=NOW,
                candidates=[Candidate("a", .9, category="x"), Candidate("b", .8, category="x"),
                            Candidate("c", .7, category="x"), Candidate("d", .6, category="y")])
    base.update(kw)
    return RerankInput(**base)


def test_a_failing_rule_is_skipped_and_reported():
    engine = _engine(parse_rules({"rules": [{"type": "dedup_group"}]}))
    engine.rules.insert(0, _Broken())
    result = engine.apply(_inp())
    assert result.item_ids == ["a", "b", "c"]  # the broken rule's input carried on
    assert [(d.rule, d.code, d.fallback) for d in result.degradations] == [("broken", "ERROR", "skipped")]
    assert "bug in a rule" in result.degradations[0].message
    proto = result.to_proto()
    assert proto.degraded and proto.degraded_reasons[0].code == common_pb2.DEGRADATION_CODE_ERROR
    assert proto.degraded_reasons[0].stage == common_pb2.STAGE_RERANK and proto.degraded_reasons[0].component == "broken"


def test_pure_pass_without_fetched_values_degrades_only_redis_rules():
    result = _engine().apply(_inp(blocked_item_ids=frozenset({"b"})))
    assert {d.rule: d.fallback for d in result.degradations} == {
        "seen_filter": "skipped", "blocked_filter": "request_data_only", "availability_filter": "request_data_only"}
    assert [d.item_id for d in result.dropped] == ["b"]
    assert result.item_ids == ["a", "c", "d"]  # b blocked by the request; two x fit in a window of 5
    full = _engine().apply(_inp(), {"seen_filter": {}, "blocked_filter": (frozenset(), frozenset()), "availability_filter": {}})
    assert not full.degraded


def test_disabled_rules_in_process():
    inp = _inp(disabled_rules=frozenset({"diversity", "seen_filter", "blocked_filter", "availability_filter"}))
    result = _engine().apply(inp)
    assert result.item_ids == ["a", "b", "c"] and not result.degraded


def test_candidates_in_any_order_and_item_state_on_the_candidate():
    inp = _inp(candidates=[Candidate("low", .1), Candidate("gone", .99, available=False), Candidate("high", .9),
                           Candidate("tie1", .5), Candidate("tie2", .5)], count=5,
               disabled_rules=frozenset({"seen_filter", "blocked_filter"}))
    result = _engine().apply(inp, {"availability_filter": {}})
    assert result.item_ids == ["high", "tie1", "tie2", "low"]
    assert result.dropped[0].item_id == "gone" and result.dropped[0].reason.rule == "availability_filter"
    assert all(i.kind == ItemKind.ORGANIC for i in result.items)


@pytest.mark.parametrize(("kw", "field"), [
    ({"count": 0}, "count"),
    ({"user_id": " "}, "user_id"),
    ({"candidates": [Candidate("a", .5), Candidate("a", .4)]}, "candidates[1].item_id"),
    ({"injections": [Candidate("x", .5, kind=ItemKind.ORGANIC)]}, "injections[0].kind"),
    ({"candidates": [Candidate("a", float("inf"))]}, "candidates[0].score"),
])
def test_in_process_validation_is_the_grpc_validation(kw, field):
    with pytest.raises(ValidationError) as err:
        _engine().apply(_inp(**kw))
    assert err.value.field == field


def test_limits_come_from_the_config():
    engine = RerankEngine(parse_rules({"rules": []}), RerankConfig(max_count=5, max_candidates=3, max_injections=1))
    with pytest.raises(ValidationError, match="count"):
        engine.apply(_inp(count=6))
    with pytest.raises(ValidationError, match="at most 3"):
        engine.apply(_inp(candidates=[Candidate(f"c{i}", .5) for i in range(4)]))
    with pytest.raises(ValidationError, match="at most 1"):
        engine.apply(_inp(candidates=[], injections=[Candidate(f"i{i}", .5, kind=ItemKind.AD) for i in range(2)]))


def test_proto_in_proto_out():
    req = rerank_pb2.RerankRequest(
        user_id="u1", count=4,
        candidates=[rerank_pb2.RerankCandidate(item_id="a", score=.9, category="x",
                                               channels=[common_pb2.ChannelScore(channel="fresh", score=1.0, rank=2)]),
                    rerank_pb2.RerankCandidate(item_id="b", score=.8, kind=common_pb2.ITEM_KIND_ORGANIC)],
        injections=[rerank_pb2.RerankCandidate(item_id="boost", score=.5, kind=common_pb2.ITEM_KIND_BOOSTED,
                                               requested_position=1)],
        context=common_pb2.RequestContext(timestamp_ms=NOW, attributes={"blocked_authors": " , nobody "}),
    )
    result = _engine().apply(req, {"seen_filter": {}, "blocked_filter": (frozenset(), frozenset()), "availability_filter": {}})
    resp = result.to_proto()
    assert [(i.item_id, i.position, i.kind) for i in resp.items] == [
        ("a", 0, common_pb2.ITEM_KIND_ORGANIC), ("boost", 1, common_pb2.ITEM_KIND_BOOSTED), ("b", 2, common_pb2.ITEM_KIND_ORGANIC)]
    assert resp.items[0].channels[0].channel == "fresh" and resp.items[0].channels[0].rank == 2
    assert resp.items[1].reasons[0].rule == "boost_slot"
    assert resp.policy_version == result.policy_version and not resp.degraded
