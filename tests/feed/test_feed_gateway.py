"""FeedService.GetFeed over real gRPC against the real stack: the contract, degradation, transports, validation.

Everything is real: the session's embedded Redis and Kafka, the synthetic
pipeline of ``feed_env`` (trained DeepFM and embedding index, recall tables,
online features), the stage servers built exactly as ``build_feed_server``
builds them, gRPC on loopback.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from typing import Any

import grpc
import grpc.aio
import pytest
from kafka import TopicPartition

from feed.experiments import assign_bucket
from feed.gateway import FALLBACK_MODEL
from proto.cascade.v1 import common_pb2, feed_pb2, feed_pb2_grpc, records_pb2
from rerank.impressions import ImpressionHistory
from rerank.rules_config import load_rules
from rerank.stores import BlockLists
from recall.trending import TrendingKeys
from stack.clients import kafka_consumer, redis_client

SURFACE = "feed_test"


def request(env: Any, user: Any, count: int = 20, **kw: Any) -> feed_pb2.GetFeedRequest:
    kw.setdefault("context", common_pb2.RequestContext(timestamp_ms=env.end_ms, surface=SURFACE,
                                                       platform=common_pb2.PLATFORM_ANDROID))
    return feed_pb2.GetFeedRequest(user_id=str(user), count=count, **kw)


def reasons_of(resp: feed_pb2.GetFeedResponse) -> list[str]:
    return [f"{common_pb2.Stage.Name(r.stage)} {common_pb2.DegradationCode.Name(r.code)} {r.fallback}: {r.message}"
            for r in resp.degraded_reasons]


def check_items(resp: feed_pb2.GetFeedResponse, count: int) -> list[str]:
    """The per-item contract; returns the item ids."""
    ids = [i.item_id for i in resp.items]
    assert len(ids) == count, (len(ids), reasons_of(resp))
    assert len(set(ids)) == len(ids), Counter(ids).most_common(3)
    for pos, it in enumerate(resp.items):
        assert it.position == pos
        assert math.isfinite(it.score)
        assert it.recall_channels or it.reasons, f"item {it.item_id} is not explained"
        for ch in it.recall_channels:
            assert ch.channel and math.isfinite(ch.score) and ch.rank >= 0
        if it.HasField("ranking_score"):
            assert 0.0 <= it.ranking_score <= 1.0
        assert it.kind == common_pb2.ITEM_KIND_ORGANIC
    assert resp.request_id and resp.served_at_ms > 0
    return ids


def trending_head(env: Any, n: int) -> list[str]:
    """The most popular items: every user's recall brings them (the popular channel)."""
    client = redis_client(env.redis_url, env.config.redis)
    try:
        return [m.decode() for m in client.zrevrange(TrendingKeys.of(env.namespace).glob, 0, n - 1)]
    finally:
        client.close()


def diversity_violations(env: Any, resp: feed_pb2.GetFeedResponse) -> list[str]:
    """Windows of config/rerank.toml's diversity rule over the page that break it without a relaxation reason."""
    rule = next(r for r in load_rules(env.config.rerank.rules_file, env.config.rerank).rules if r.type == "diversity")
    items = list(resp.items)
    out = []
    for c in rule.constraints:
        col = 0 if c.field == "category" else 1
        for a in range(0, max(0, len(items) - c.window + 1)):
            window = items[a:a + c.window]
            counts = Counter(env.attrs[i.item_id][col] for i in window)
            value, n = counts.most_common(1)[0]
            relaxed = any(r.rule == rule.rule_name and "relax" in r.explanation.lower() for i in window for r in i.reasons)
            if n > c.max and not relaxed:
                out.append(f"{c.field} {value!r} {n}x in positions {a}..{a + c.window - 1}")
    return out


def consume_impressions(env: Any, request_ids: set[str], expected: int, since: dict[TopicPartition, int],
                        timeout_s: float = 30.0) -> list[records_pb2.Impression]:
    topic = "impressions"
    consumer = kafka_consumer(env.kafka, env.config.kafka, None)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, since.get(tp, 0))
        found: list[records_pb2.Impression] = []
        end = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < end:
            for records in consumer.poll(timeout_ms=300).values():
                for rec in records:
                    imp = records_pb2.Impression.FromString(rec.value)
                    if imp.request_id in request_ids:
                        assert rec.key == imp.user_id.encode()
                        found.append(imp)
        return found
    finally:
        consumer.close()


def end_offsets(env: Any) -> dict[TopicPartition, int]:
    consumer = kafka_consumer(env.kafka, env.config.kafka, None)
    try:
        parts = [TopicPartition("impressions", p) for p in consumer.partitions_for_topic("impressions")]
        return consumer.end_offsets(parts)
    finally:
        consumer.close()


# ============================================================================ the contract


def test_getfeed_contract_over_grpc(feed_env, feed_helpers):
    env = feed_env
    user = env.users[0]
    head = trending_head(env, 40)
    seen, blocked, excluded = head[:15], head[15:20], head[20:23]
    client = redis_client(env.redis_url, env.config.redis)
    ImpressionHistory.from_config(client, env.config.rerank).record(str(user), seen)
    BlockLists(client, env.config.rerank.key_prefix).block_items(str(user), blocked)
    client.close()
    offsets = end_offsets(env)
    setup = env.setup

    async def scenario() -> tuple[Any, Any, Any]:
        async with feed_helpers.feed_server(env) as server:
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = feed_pb2_grpc.FeedServiceStub(ch)
                first = await stub.GetFeed(request(env, user, exclude_item_ids=excluded), timeout=30)
                assert await server.gateway.background.drain(30)
                second = await stub.GetFeed(request(env, user, request_id=f"client-{uuid.uuid4().hex[:8]}"), timeout=30)
                assert await server.gateway.background.drain(30)
                return first, second, dict(server.gateway.background.stats)

    first, second, stats = asyncio.run(scenario())
    for resp in (first, second):
        assert not resp.degraded, reasons_of(resp)
        ids = check_items(resp, 20)
        assert not set(ids) & set(seen), "a recently seen item was served"
        assert not set(ids) & set(blocked), "a blocked item was served"
        assert not diversity_violations(env, resp), diversity_violations(env, resp)
        assert resp.model_versions[0] == common_pb2.ModelVersion(model_name="deepfm", version=setup.model_version,
                                                                 kind=common_pb2.MODEL_KIND_DEEPFM)
        assert any(m.model_name == "rerank_policy" and m.kind == common_pb2.MODEL_KIND_HEURISTIC for m in resp.model_versions)
        exp = env.config.feed.experiment_name
        assert resp.experiment == common_pb2.ExperimentAssignment(
            experiment=exp, bucket=assign_bucket(exp, str(user), env.config.feed.treatment_share), overridden=False)
        assert resp.served_feature_id  # ranking logged the vectors it scored with
        assert all(i.HasField("ranking_score") for i in resp.items)
    assert not set(check_items(first, 20)) & set(excluded)
    assert not set(first.items[i].item_id for i in range(20)) & set(i.item_id for i in second.items), \
        "the second feed repeats the first page"
    uuid.UUID(first.request_id)  # server generated: a UUID
    assert second.request_id.startswith("client-")
    assert stats.get("history_ok") == 2 and stats.get("impressions_ok") == 2 and stats.get("last_good_ok") == 2, stats

    # every served item reached Kafka as an Impression with the fields of records.proto
    got = consume_impressions(env, {first.request_id, second.request_id}, 40, offsets)
    by_key = {(i.request_id, i.item_id): i for i in got}
    assert len(by_key) == 40, f"{len(by_key)} of 40 impressions found"
    for resp in (first, second):
        for it in resp.items:
            imp = by_key[(resp.request_id, it.item_id)]
            assert imp.user_id == str(user) and imp.position == it.position
            assert imp.score == pytest.approx(it.score) and imp.ranking_score == pytest.approx(it.ranking_score)
            assert imp.model_version == resp.model_versions[0]
            assert imp.experiment == resp.experiment and imp.served_feature_id == resp.served_feature_id
            assert imp.timestamp_ms == resp.served_at_ms and list(imp.recall_channels) == list(it.recall_channels)
            assert imp.kind == it.kind and imp.surface == SURFACE and imp.degraded == resp.degraded


def test_malformed_requests_are_invalid_argument_over_grpc(feed_env, feed_helpers):
    env = feed_env
    cases = [
        (feed_pb2.GetFeedRequest(user_id="", count=5), "user_id"),
        (feed_pb2.GetFeedRequest(user_id="u" * 129, count=5), "user_id"),
        (feed_pb2.GetFeedRequest(user_id="1", count=0), "count"),
        (feed_pb2.GetFeedRequest(user_id="1", count=101), "count"),
        (feed_pb2.GetFeedRequest(user_id="1", count=5, request_id="bad id!"), "request_id"),
        (feed_pb2.GetFeedRequest(user_id="1", count=5, exclude_item_ids=["1"] * 1001), "exclude_item_ids"),
        (feed_pb2.GetFeedRequest(user_id="1", count=5, context=common_pb2.RequestContext(page_index=-2)), "context.page_index"),
        (feed_pb2.GetFeedRequest(user_id="1", count=5, experiment_overrides=feed_pb2.ExperimentOverrides(bucket="x")),
         "experiment_overrides.bucket"),
        # checked downstream, reported as the request's fault, not degraded
        (feed_pb2.GetFeedRequest(user_id="1", count=5, experiment_overrides=feed_pb2.ExperimentOverrides(
            recall_quotas={"no_such_channel": 3})), "experiment_overrides.recall_quotas"),
        (feed_pb2.GetFeedRequest(user_id="1", count=5, experiment_overrides=feed_pb2.ExperimentOverrides(
            ranking_model_version="never-published")), "experiment_overrides.ranking_model_version"),
    ]

    async def scenario() -> list[tuple[str, Any, str]]:
        out = []
        async with feed_helpers.feed_server(env) as server:
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = feed_pb2_grpc.FeedServiceStub(ch)
                for req, field in cases:
                    try:
                        await stub.GetFeed(req, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        out.append((field, exc.code(), exc.details()))
                    else:
                        out.append((field, grpc.StatusCode.OK, ""))
        return out

    for field, code, details in asyncio.run(scenario()):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert repr(field)[1:-1] in details, (field, details)


# ============================================================================ degradation


def test_stage_failures_degrade_with_the_right_reason_instead_of_failing(feed_env, feed_helpers):
    """gRPC transport: stop ranking mid-test, then rerank, then recall; the feed keeps answering."""
    env = feed_env
    user = env.users[1]
    cfg = feed_helpers.with_feed(env.config, stage_transport="grpc")

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with feed_helpers.stage_servers(env) as stages:
            addresses = {name: s.address for name, s in stages.items()}
            async with feed_helpers.feed_server(env, cfg, addresses=addresses) as server:
                async with grpc.aio.insecure_channel(server.address) as ch:
                    stub = feed_pb2_grpc.FeedServiceStub(ch)
                    out["healthy"] = await stub.GetFeed(request(env, user, count=10), timeout=30)
                    assert await server.gateway.background.drain(30)  # the last good feed is stored
                    await stages["ranking"].stop(0)
                    out["no_ranking"] = await stub.GetFeed(request(env, user, count=10), timeout=30)
                    await stages["rerank"].stop(0)
                    out["no_rerank"] = await stub.GetFeed(request(env, user, count=10, exclude_item_ids=["1"]), timeout=30)
                    await stages["recall"].stop(0)
                    out["no_recall"] = await stub.GetFeed(request(env, user, count=5), timeout=30)
                    out["no_recall_new_user"] = await stub.GetFeed(request(env, env.users[7], count=5), timeout=30)
                    assert await server.gateway.background.drain(30)
                    out["stats"] = dict(server.gateway.background.stats)
        return out

    got = asyncio.run(scenario())
    healthy = got["healthy"]
    assert not healthy.degraded, reasons_of(healthy)
    assert healthy.model_versions[0].kind == common_pb2.MODEL_KIND_DEEPFM

    r = got["no_ranking"]
    check_items(r, 10)
    assert r.degraded and any(x.stage == common_pb2.STAGE_RANKING and x.code == common_pb2.DEGRADATION_CODE_UNAVAILABLE
                              and x.fallback == "recall_score" for x in r.degraded_reasons), reasons_of(r)
    assert r.model_versions[0] == common_pb2.ModelVersion(model_name=FALLBACK_MODEL, version="heuristic:recall_score",
                                                          kind=common_pb2.MODEL_KIND_HEURISTIC)
    assert not any(i.HasField("ranking_score") for i in r.items)
    assert not set(i.item_id for i in r.items) & set(i.item_id for i in healthy.items)  # rerank still filters seen

    r = got["no_rerank"]
    ids = check_items(r, 10)
    assert "1" not in ids
    stages = {(x.stage, x.code, x.fallback) for x in r.degraded_reasons}
    assert (common_pb2.STAGE_RANKING, common_pb2.DEGRADATION_CODE_UNAVAILABLE, "recall_score") in stages
    assert (common_pb2.STAGE_RERANK, common_pb2.DEGRADATION_CODE_UNAVAILABLE, "ranked_order") in stages, reasons_of(r)
    assert all(not i.reasons for i in r.items)  # no rerank rule ran

    r = got["no_recall"]
    check_items(r, 5)
    recall_reasons = [x for x in r.degraded_reasons if x.stage == common_pb2.STAGE_RECALL]
    assert recall_reasons and recall_reasons[0].code == common_pb2.DEGRADATION_CODE_UNAVAILABLE, reasons_of(r)
    assert recall_reasons[0].fallback == "last_good_feed", reasons_of(r)
    assert r.model_versions[0].version == "heuristic:last_good_feed"
    # the last good feed holds more than the page that was served from it; what was shown since is skipped
    shown = {i.item_id for k in ("healthy", "no_ranking", "no_rerank") for i in got[k].items}
    assert not {i.item_id for i in r.items} & shown

    r = got["no_recall_new_user"]  # no last good feed: the most popular items
    check_items(r, 5)
    assert [x.fallback for x in r.degraded_reasons if x.stage == common_pb2.STAGE_RECALL] == ["popularity"], reasons_of(r)
    assert [i.item_id for i in r.items] == trending_head(env, 5)
    assert all(i.recall_channels[0].channel == "popular" for i in r.items)
    assert got["stats"].get("last_good_ok") == 1, got["stats"]  # only the healthy feed was a good one


def test_an_inprocess_stage_past_its_slice_times_out_into_the_fallback(feed_env, feed_helpers):
    """In process: a ranking slice too small to score in (stage_budget) -> TIMEOUT, served by recall score."""
    from prometheus_client import REGISTRY

    env = feed_env
    shares = {**env.config.feed.stage_budget, "ranking": 1e-7}
    cfg = feed_helpers.with_feed(env.config, stage_budget=shares)

    def metric(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (metric("cascade_feed_degraded_total", stage="ranking", code="timeout"),
              metric("cascade_feed_stage_seconds_count", stage="rerank", transport="inprocess"))

    async def scenario() -> Any:
        async with feed_helpers.feed_server(env, cfg) as server:
            result = await server.gateway.get_feed(request(env, env.users[2], count=8))
            assert await server.gateway.background.drain(30)
            return result

    result = asyncio.run(scenario())
    resp = result.response
    check_items(resp, 8)
    assert any(x.stage == common_pb2.STAGE_RANKING and x.code == common_pb2.DEGRADATION_CODE_TIMEOUT
               and x.fallback == "recall_score" for x in resp.degraded_reasons), reasons_of(resp)
    assert result.timings.recall_ms > 0 and result.timings.rerank_ms > 0 and result.timings.total_ms > 0
    assert not result.good
    # the Prometheus series every service exports through serving.start_metrics_server
    assert metric("cascade_feed_degraded_total", stage="ranking", code="timeout") == before[0] + 1
    assert metric("cascade_feed_stage_seconds_count", stage="rerank", transport="inprocess") >= before[1] + 1


# ============================================================================ same code path


def test_both_transports_give_the_same_feed(feed_env, feed_helpers):
    env = feed_env
    user = env.users[3]
    overrides = feed_pb2.ExperimentOverrides(disabled_rerank_rules=["seen_filter"])  # the first feed is not "seen" by the second

    async def scenario() -> tuple[Any, Any, Any]:
        async with feed_helpers.stage_servers(env) as stages:
            local = feed_helpers.with_feed(env.config, stage_transport="inprocess")
            remote = feed_helpers.with_feed(env.config, stage_transport="grpc")
            async with feed_helpers.feed_server(env, local, servers=stages) as a, \
                    feed_helpers.feed_server(env, remote, addresses={n: s.address for n, s in stages.items()}) as b:
                assert a.pipeline.transport == "inprocess" and b.pipeline.transport == "grpc"
                ra = await a.gateway.get_feed(request(env, user, count=15, experiment_overrides=overrides))
                rb = await b.gateway.get_feed(request(env, user, count=15, experiment_overrides=overrides))
                async with grpc.aio.insecure_channel(b.address) as ch:  # and through the FeedService itself
                    rc = await feed_pb2_grpc.FeedServiceStub(ch).GetFeed(
                        request(env, user, count=15, experiment_overrides=overrides), timeout=30)
                return ra, rb, rc

    ra, rb, rc = asyncio.run(scenario())

    def comparable(resp: feed_pb2.GetFeedResponse) -> feed_pb2.GetFeedResponse:
        c = feed_pb2.GetFeedResponse()
        c.CopyFrom(resp)
        c.ClearField("request_id")
        c.ClearField("served_at_ms")
        c.ClearField("served_feature_id")
        return c

    assert not ra.response.degraded, reasons_of(ra.response)
    check_items(ra.response, 15)
    assert ra.response.experiment.overridden
    assert comparable(ra.response) == comparable(rb.response)
    assert comparable(rc) == comparable(ra.response)
    assert ra.timings.ranking_ms > 0 and rb.timings.ranking_ms > 0


# ============================================================================ the CLI


def test_cascade_feed_show_prints_an_explained_feed(feed_env, feed_helpers, capsys):
    from feed import cli

    env = feed_env

    async def scenario() -> int:
        async with feed_helpers.feed_server(env) as server:
            argv = ["--user", str(env.users[4]), "--count", "5", "--address", server.address,
                    "--timestamp-ms", str(env.end_ms)]
            return await asyncio.to_thread(cli.main, argv)

    assert asyncio.run(scenario()) == 0
    out = capsys.readouterr().out
    assert f"feed for user {env.users[4]}: 5 items" in out
    assert "deepfm" in out and "rerank_policy" in out and "experiment: ranking_ab" in out
    rows = [line for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 5 and all("#" in row for row in rows)  # every item shows its channels


# ============================================================================ experiments


def test_buckets_pick_the_ranking_model_and_overrides_are_flagged(feed_env, feed_helpers):
    """feed.bucket_ranking sends treatment users to a second (non-live) DeepFM version; overrides force either way."""
    from featurestore.repository import get_repo
    from feed.synthetic import train_deepfm
    from ranking.registry import ModelRegistry

    env = feed_env
    setup = env.setup
    out = env.work / "train" / "deepfm-v2"
    if not out.exists():
        train_deepfm(setup.config, setup.paths, out, rows=3000, epochs=1, seed=1)
    registry = ModelRegistry.from_config(setup.config, repo=get_repo(setup.config.features.definitions))
    v2 = registry.publish(out)  # registered, loaded as the newest version, not live
    live = setup.model_version
    assert v2 != live
    exp = env.config.feed.experiment_name
    cfg = feed_helpers.with_feed(env.config, bucket_ranking={"treatment": f"@{v2}"}, treatment_share=0.5)
    buckets = {assign_bucket(exp, str(u), 0.5): str(u) for u in env.users[10:60]}
    treated, control = buckets["treatment"], buckets["control"]

    async def scenario() -> list[Any]:
        async with feed_helpers.feed_server(env, cfg) as server:
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = feed_pb2_grpc.FeedServiceStub(ch)
                reqs = [
                    request(env, treated, count=5),
                    request(env, control, count=5),
                    request(env, control, count=5, experiment_overrides=feed_pb2.ExperimentOverrides(bucket="treatment")),
                    request(env, treated, count=5, experiment_overrides=feed_pb2.ExperimentOverrides(ranking_model_version=live)),
                ]
                return [await stub.GetFeed(r, timeout=30) for r in reqs]

    t, c, forced, pinned = asyncio.run(scenario())
    for resp in (t, c, forced, pinned):
        check_items(resp, 5)
        assert not resp.degraded, reasons_of(resp)
    assert (t.model_versions[0].version, t.experiment.bucket, t.experiment.overridden) == (v2, "treatment", False)
    assert (c.model_versions[0].version, c.experiment.bucket, c.experiment.overridden) == (live, "control", False)
    assert (forced.model_versions[0].version, forced.experiment.bucket, forced.experiment.overridden) == (v2, "treatment", True)
    assert (pinned.model_versions[0].version, pinned.experiment.bucket, pinned.experiment.overridden) == (live, "treatment", True)
