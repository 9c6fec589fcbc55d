"""RerankService over loopback gRPC with the real Redis: a page with reasons, INVALID_ARGUMENT, health, reflection."""

from __future__ import annotations

import asyncio
import math

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto.cascade.v1 import common_pb2, rerank_pb2, rerank_pb2_grpc
from rerank.impressions import HOUR_MS, ImpressionHistory, now_ms
from rerank.service import SERVICE_NAME, build_rerank_server


def _cand(item_id: str, score: float, **kw) -> rerank_pb2.RerankCandidate:
    return rerank_pb2.RerankCandidate(item_id=item_id, score=score, **kw)


def _request(**kw) -> rerank_pb2.RerankRequest:
    base = dict(user_id="u1", count=8, request_id="req-1")
    base.update(kw)
    return rerank_pb2.RerankRequest(**base)


def _serve(config, redis_url, prefix, calls):
    """Start a server, run ``calls(stub, channel)`` against it, stop it; returns what calls returned."""

    async def scenario():
        server = build_rerank_server(config, redis_url, prefix=prefix, port=0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                return await calls(rerank_pb2_grpc.RerankServiceStub(ch), ch)
        finally:
            await server.stop(0)

    return asyncio.run(scenario())


def test_rerank_happy_path_with_reasons(stack, patient_config, redis, unique_prefix):
    now = now_ms()
    ImpressionHistory.from_config(redis, patient_config.rerank, unique_prefix).record("u1", ["seen1"], now - HOUR_MS)
    cands = [
        _cand("s1", 0.95, category="sports", author="a1", channels=[common_pb2.ChannelScore(channel="popular", score=3.5, rank=0)]),
        _cand("s2", 0.90, category="sports", author="a2"),
        _cand("s3", 0.85, category="sports", author="a3"),
        _cand("seen1", 0.84, category="news", author="a4"),
        _cand("n1", 0.80, category="news", author="a5"),
        _cand("s4", 0.75, category="sports", author="a6"),
        _cand("m1", 0.70, category="music", author="a7"),
        _cand("dup_low", 0.60, category="news", author="a8", group_id="story"),
        _cand("dup_high", 0.65, category="music", author="a9", group_id="story"),
        _cand("hidden", 0.99, category="tech", author="a10"),
        _cand("t1", 0.50, category="tech", author="a11"),
    ]
    ads = [_cand("ad1", 0.7, kind=common_pb2.ITEM_KIND_AD)]
    req = _request(candidates=cands, injections=ads,
                   context=common_pb2.RequestContext(attributes={"blocked_item_ids": "hidden"}))

    async def calls(stub, ch):
        return await stub.Rerank(req, timeout=5)

    resp = _serve(patient_config, stack.redis_url, unique_prefix, calls)
    ids = [i.item_id for i in resp.items]
    assert [i.position for i in resp.items] == list(range(len(resp.items))) and len(ids) == 8
    assert not resp.degraded and resp.policy_version.startswith("default-")
    dropped = {d.item_id: d.reason.rule for d in resp.dropped}
    assert dropped == {"seen1": "seen_filter", "hidden": "blocked_filter", "dup_low": "dedup_group"}
    # organic: s1 s2 | s3, s4 held back (2 sports in the window of 5) | n1 m1 dup_high | s3 s4; the ad at slot 3
    assert ids == ["s1", "s2", "n1", "ad1", "m1", "dup_high", "s3", "s4"]
    by_id = {i.item_id: i for i in resp.items}
    assert by_id["ad1"].kind == common_pb2.ITEM_KIND_AD and by_id["s1"].kind == common_pb2.ITEM_KIND_ORGANIC
    assert [(r.rule, r.explanation) for r in by_id["ad1"].reasons] == [("ad_slot", "inserted ad at slot 3 (priority 0.7)")]
    s3 = [(r.rule, r.explanation) for r in by_id["s3"].reasons]
    assert s3 == [("diversity", "moved down from 2 to 5 (category 'sports' already 2 in window 5)")]
    assert any(r.rule == "dedup_group" for r in by_id["dup_high"].reasons)
    assert by_id["s1"].reasons == [] and by_id["s1"].original_score == pytest.approx(0.95)
    assert by_id["s1"].channels[0].channel == "popular" and by_id["s1"].channels[0].score == 3.5


def test_disabled_rules_and_context_clock(stack, patient_config, unique_prefix):
    cands = [_cand("a", 0.9, category="x"), _cand("b", 0.8, category="x"), _cand("c", 0.7, category="x"),
             _cand("d", 0.6, category="y", published_at_ms=1_000_000)]
    ts = 1_000_000 + HOUR_MS  # a client clock in the past is used as is: d is one hour old then

    async def calls(stub, ch):
        plain = await stub.Rerank(_request(candidates=cands, count=4, disabled_rules=["diversity", "no_such_rule"]), timeout=5)
        clocked = await stub.Rerank(_request(candidates=cands, count=4, disabled_rules=["diversity"],
                                             context=common_pb2.RequestContext(timestamp_ms=ts)), timeout=5)
        return plain, clocked

    plain, clocked = _serve(patient_config, stack.redis_url, unique_prefix, calls)
    assert [i.item_id for i in plain.items] == ["a", "b", "c", "d"]
    assert all(r.rule != "diversity" for i in plain.items for r in i.reasons)
    boosted = {i.item_id: i for i in clocked.items}["d"]
    assert boosted.final_score > 0.6 and boosted.reasons[0].rule == "freshness_boost"
    assert "published 1.0h ago" in boosted.reasons[0].explanation


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: setattr(r, "count", 0), "count"),
    (lambda r: setattr(r, "count", 101), "count"),
    (lambda r: setattr(r, "user_id", ""), "user_id"),
    (lambda r: setattr(r, "user_id", "u" * 129), "user_id"),
    (lambda r: r.candidates.append(_cand("a", 0.1)), "candidates[2].item_id"),
    (lambda r: r.injections.append(_cand("b", 0.1, kind=common_pb2.ITEM_KIND_AD)), "injections[0].item_id"),
    (lambda r: r.candidates.extend(_cand(f"x{i}", 0.1) for i in range(1999)), "candidates"),
    (lambda r: r.injections.extend(_cand(f"ad{i}", 0.1, kind=common_pb2.ITEM_KIND_AD) for i in range(51)), "injections"),
    (lambda r: r.candidates.append(_cand("nan", math.nan)), "candidates[2].score"),
    (lambda r: r.candidates.append(_cand("big", 1.5)), "candidates[2].score"),
    (lambda r: r.candidates.append(_cand("", 0.5)), "candidates[2].item_id"),
    (lambda r: r.injections.append(_cand("organic_ad", 0.5)), "injections[0].kind"),
    (lambda r: r.candidates.append(_cand("ad_in_organic", 0.5, kind=common_pb2.ITEM_KIND_AD)), "candidates[2].kind"),
    (lambda r: r.injections.append(_cand("neg", 0.5, kind=common_pb2.ITEM_KIND_AD, requested_position=-1)), "injections[0].requested_position"),
])
def test_malformed_requests_are_invalid_argument(stack, patient_config, unique_prefix, mutate, field):
    req = _request(candidates=[_cand("a", 0.9), _cand("b", 0.8)])
    mutate(req)

    async def calls(stub, ch):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Rerank(req, timeout=5)
        return err.value

    err = _serve(patient_config, stack.redis_url, unique_prefix, calls)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'{field}'" in err.details()


def test_health_and_reflection(stack, patient_config, unique_prefix):
    async def calls(stub, ch):
        health = health_pb2_grpc.HealthStub(ch)
        statuses = [(await health.Check(health_pb2.HealthCheckRequest(service=s), timeout=2)).status
                    for s in (SERVICE_NAME, "")]
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        names = []
        async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            names = [s.name for s in resp.list_services_response.service]
        return statuses, names

    statuses, names = _serve(patient_config, stack.redis_url, unique_prefix, calls)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


def test_without_redis_the_page_is_served_degraded(patient_config):
    async def calls(stub, ch):
        return await stub.Rerank(_request(candidates=[_cand("a", 0.9), _cand("b", 0.8)]), timeout=5)

    resp = _serve(patient_config, None, "unused", calls)
    assert [i.item_id for i in resp.items] == ["a", "b"]
    assert resp.degraded
    reasons = {(d.component, d.code, d.fallback) for d in resp.degraded_reasons}
    assert ("seen_filter", common_pb2.DEGRADATION_CODE_UNAVAILABLE, "skipped") in reasons
    assert ("blocked_filter", common_pb2.DEGRADATION_CODE_UNAVAILABLE, "request_data_only") in reasons
    assert all(d.stage == common_pb2.STAGE_RERANK for d in resp.degraded_reasons)
