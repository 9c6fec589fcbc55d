"""RecallService over real gRPC on loopback, with real Redis: channels, the user's features, validation, health, reflection."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import grpc
import grpc.aio
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from featurestore.client import FeatureClient
from featurestore.online import OnlineStore
from featurestore.repository import get_repo
from proto.cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc
from recall.covisit import publish_covisit
from recall.fresh import FreshIndex
from recall.service import SERVICE_NAME, build_recall_server, default_channels, user_key
from recall.trending import TrendingStore
from recall_helpers import HOUR_MS, T0_MS, ScriptedChannel, events_table

NOW = T0_MS + 10 * 24 * HOUR_MS
USER = 7


@pytest.fixture()
def seeded(redis, unique_prefix, config):
    """Co-visitation, trending and fresh tables under the test's namespace; user 7 recently rated 100 then 50."""
    ns = unique_prefix
    publish_covisit(redis, ns, pa.table({"item_id": [100, 50], "neighbors": [[101, 102, 103], [104]],
                                         "scores": [[0.9, 0.8, 0.7], [0.5]]}), version="v7")
    hours = (NOW - T0_MS) / HOUR_MS
    log = events_table([(1, 200, hours - 1), (2, 200, hours - 2), (3, 201, hours - 1), (4, 100, hours - 1)])
    TrendingStore(redis, ns, half_life_hours=6.0, event_weights={"click": 1.0}).bootstrap(log, as_of=NOW)
    FreshIndex(redis, ns, max_age_hours=48.0).bootstrap(pa.table({
        "item_id": [300, 301], "published_ts": pa.array([(NOW - HOUR_MS) * 1000, (NOW - 100 * HOUR_MS) * 1000], pa.int64()).cast(pa.timestamp("us", "UTC")),
    }), NOW)
    repo = get_repo()
    store = OnlineStore(redis, ns)
    ts = lambda h: datetime.fromtimestamp((NOW - h * HOUR_MS) / 1000, tz=timezone.utc)  # noqa: E731
    store.add_events(repo.view("user_activity"), [(USER, ts(5), {"item_id": 50, "rating": 4.0}),
                                                  (USER, ts(2), {"item_id": 100, "rating": 5.0})])
    return FeatureClient(store, repo)


def recall_config(config, **extra):
    rc = config.recall.model_copy(update={
        "channel_quotas": {**config.recall.channel_quotas, **extra.get("quotas", {})},
        "channel_timeouts_ms": {"embedding": 1000.0, "item2item": 1000.0, "popular": 1000.0, "fresh": 1000.0,
                                **extra.get("timeouts", {})},
    })
    return config.model_copy(update={"recall": rc})


def serve(config, stack, ns, feature_client, scenario, extra_channels=(), **extra):
    cfg = recall_config(config, **extra)

    async def main():
        channels, closers = default_channels(cfg, stack.redis_url, namespace=ns)
        server = build_recall_server(cfg, stack.redis_url, [*channels, *extra_channels], feature_client=feature_client, port=0)
        server._async_closers.extend(closers)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                return await scenario(recall_pb2_grpc.RecallServiceStub(ch), ch)
        finally:
            await server.stop(0)

    return asyncio.run(main())


def request(count=20, **kw):
    kw.setdefault("context", common_pb2.RequestContext(timestamp_ms=NOW))
    return recall_pb2.RecallRequest(user_id=str(USER), count=count, **kw)


def test_candidates_from_every_channel_with_the_users_history(config, stack, unique_prefix, seeded):
    async def scenario(stub, ch):
        return await stub.Recall(request(exclude_item_ids=["101"]), timeout=10)

    resp = serve(config, stack, unique_prefix, seeded, scenario)
    ids = [c.item_id for c in resp.candidates]
    channels = {c.item_id: [s.channel for s in c.channels] for c in resp.candidates}
    assert "101" not in ids  # excluded by the request
    assert "100" not in ids and "50" not in ids  # the user's recent items
    assert channels["102"] == ["item2item"] and channels["104"] == ["item2item"]
    assert channels["200"] == ["popular"] and channels["300"] == ["fresh"]
    assert "301" not in ids  # published 100h ago: not fresh
    assert sorted(ids) == ["102", "103", "104", "200", "201", "300"]  # each once
    scores = [c.merged_score for c in resp.candidates]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    c102 = next(c for c in resp.candidates if c.item_id == "102")
    assert c102.channels[0].score == pytest.approx(0.8) and c102.channels[0].rank == 1  # rank 0 is the excluded 101
    stats = {s.channel: s for s in resp.channel_stats}
    assert [s.channel for s in resp.channel_stats] == ["embedding", "item2item", "popular", "fresh"]
    assert stats["embedding"].status == recall_pb2.CHANNEL_STATUS_SKIPPED and stats["embedding"].message == "channel not loaded"
    for name in ("item2item", "popular", "fresh"):
        assert stats[name].status == recall_pb2.CHANNEL_STATUS_OK and stats[name].latency_ms > 0
        assert 0 < stats[name].returned_count <= stats[name].quota
    assert not resp.degraded and not resp.degraded_reasons
    assert resp.index_version == "v7"


def test_timeouts_errors_and_all_failed(config, stack, unique_prefix, seeded):
    slow = ScriptedChannel("slow", [900], delay_s=5.0)
    bad = ScriptedChannel("bad", [901], error=RuntimeError("boom"))

    async def scenario(stub, ch):
        ok = await stub.Recall(request(channel_quotas={"slow": 0, "bad": 0}), timeout=10)
        degraded = await stub.Recall(request(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recall(request(channel_quotas={"item2item": 0, "popular": 0, "fresh": 0, "slow": 0}), timeout=10)
        return ok, degraded, err.value

    ok, degraded, err = serve(config, stack, unique_prefix, seeded, scenario, [slow, bad],
                              quotas={"slow": 10, "bad": 10}, timeouts={"slow": 50.0, "bad": 1000.0})
    assert not ok.degraded and {s.channel: s.status for s in ok.channel_stats}["slow"] == recall_pb2.CHANNEL_STATUS_SKIPPED
    stats = {s.channel: s for s in degraded.channel_stats}
    assert stats["slow"].status == recall_pb2.CHANNEL_STATUS_TIMEOUT and stats["slow"].latency_ms == pytest.approx(50.0)
    assert stats["bad"].status == recall_pb2.CHANNEL_STATUS_ERROR and stats["bad"].message == "RuntimeError: boom"
    assert degraded.degraded and len(degraded.candidates) > 0
    reasons = {(r.component, r.code) for r in degraded.degraded_reasons}
    assert reasons == {("slow", common_pb2.DEGRADATION_CODE_TIMEOUT), ("bad", common_pb2.DEGRADATION_CODE_ERROR)}
    assert all(r.stage == common_pb2.STAGE_RECALL for r in degraded.degraded_reasons)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "bad: ERROR" in err.details()


@pytest.mark.parametrize("kw, field", [
    ({"count": 0}, "count"),
    ({"count": 5001}, "count"),
    ({"channel_quotas": {"nope": 5}}, "channel_quotas['nope']"),
    ({"channel_quotas": {"popular": -1}}, "channel_quotas['popular']"),
    ({"channel_quotas": {"popular": 5001}}, "channel_quotas['popular']"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "x" * 129}, "user_id"),
    ({"exclude_item_ids": ["1", ""]}, "exclude_item_ids[1]"),
    ({"exclude_item_ids": ["1"] * 10_001}, "exclude_item_ids"),
    ({"context": common_pb2.RequestContext(page_index=-1)}, "context.page_index"),
])
def test_malformed_requests_are_invalid_argument(config, stack, unique_prefix, seeded, kw, field):
    async def scenario(stub, ch):
        req = recall_pb2.RecallRequest(user_id=str(USER), count=10)
        for k, v in kw.items():
            if k == "channel_quotas":
                req.channel_quotas.update(v)
            elif k == "exclude_item_ids":
                req.exclude_item_ids.extend(v)
            elif k == "context":
                req.context.CopyFrom(v)
            else:
                setattr(req, k, v)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recall(req, timeout=10)
        return err.value

    err = serve(config, stack, unique_prefix, seeded, scenario)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert repr(field) in err.details()


def test_health_reflection_and_a_cold_user(config, stack, unique_prefix, seeded):
    async def scenario(stub, ch):
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        names: list[str] = []
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            names = [s.name for s in resp.list_services_response.service]
        cold = await stub.Recall(recall_pb2.RecallRequest(user_id="someone-new", count=5,
                                                          context=common_pb2.RequestContext(timestamp_ms=NOW)), timeout=10)
        return health, names, cold

    health, names, cold = serve(config, stack, unique_prefix, seeded, scenario)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    stats = {s.channel: s for s in cold.channel_stats}
    assert stats["item2item"].status == recall_pb2.CHANNEL_STATUS_SKIPPED  # no history
    # popular and fresh give all they have (four items), and 100 is nobody's history here
    assert sorted(c.item_id for c in cold.candidates) == ["100", "200", "201", "300"] and not cold.degraded
    assert user_key("42") == 42 and user_key("someone-new") == user_key("someone-new") > 0


def _tiny_embedding(tmp_path):
    """A real artifact (flat index + numpy query tower) whose query is the mean of the recent items' vectors."""
    import numpy as np

    from recall.artifacts import LiveIndex, write_artifact
    from recall.channels.embedding import EmbeddingChannel
    from recall.embedding.query import QueryEncoder
    from recall.embedding.spec import tower_spec
    from recall.index import IndexParams, ItemIndex

    ids = np.array([50, 100, 500, 501, 502], dtype=np.int64)
    vecs = np.array([[1, 0, 0, 0], [1, 0.1, 0, 0], [0.9, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    spec = tower_spec("movielens")
    dim, feat = 4, 2
    w = np.zeros((dim + feat * len(spec.user_features), dim), np.float32)
    w[:dim] = np.eye(dim, dtype=np.float32)
    enc = QueryEncoder(spec, buckets=8, history_len=20, normalize=False, item_ids=ids,
                       item_table=np.vstack([np.zeros((1, dim), np.float32), vecs]), position_logits=np.zeros(20, np.float32),
                       user_table=np.zeros((8 * len(spec.user_features), feat), np.float32),  # feature j, bucket b: row 8j + b
                       layers=[(w, np.zeros(dim, np.float32))])
    path = write_artifact(tmp_path / "emb", ItemIndex.build(vecs, ids, IndexParams(kind="flat")), enc)
    live = LiveIndex(tmp_path / "emb")
    live.load()
    return EmbeddingChannel(live, faiss_threads=1), path.name


def test_the_embedding_channel_reads_from_the_same_feature_read(config, stack, unique_prefix, seeded, tmp_path):
    emb, version = _tiny_embedding(tmp_path)

    async def scenario(stub, ch):
        return await stub.Recall(request(count=10), timeout=10)

    cfg = recall_config(config)

    async def main():
        channels, closers = default_channels(cfg, stack.redis_url, namespace=unique_prefix, embedding=emb)
        server = build_recall_server(cfg, stack.redis_url, channels, feature_client=seeded, port=0)
        server._async_closers.extend(closers)
        await server.start()
        try:
            refs = server.servicer.feature_refs()
            async with grpc.aio.insecure_channel(server.address) as ch:
                return refs, await scenario(recall_pb2_grpc.RecallServiceStub(ch), ch)
        finally:
            await server.stop(0)

    refs, resp = asyncio.run(main())
    assert refs[0] == "user_activity:item_id_last20_30d" and "user_profile:age" in refs  # one read for every channel
    by_id = {c.item_id: [s.channel for s in c.channels] for c in resp.candidates}
    assert by_id["500"] == ["embedding"]  # nearest to the mean of 100 and 50, which are the user's own
    assert "100" not in by_id and "50" not in by_id
    assert emb.stats["feature_fetches"] == 0  # it found its inputs in RecallQuery.user_features
    stats = {s.channel: s.status for s in resp.channel_stats}
    assert stats["embedding"] == recall_pb2.CHANNEL_STATUS_OK
    assert resp.index_version == f"{version},v7"


def test_a_misnamed_feature_refuses_to_start(config, stack, unique_prefix, seeded):
    cfg = recall_config(config)
    cfg = cfg.model_copy(update={"recall": cfg.recall.model_copy(update={"category_features": ("user_profile:nope",)})})
    with pytest.raises(ValueError, match="user_profile:nope"):
        build_recall_server(cfg, stack.redis_url, [], feature_client=seeded, port=0)
