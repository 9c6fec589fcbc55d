"""RankingService.Rank and ModelAdminService over gRPC on loopback, against the real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from rank_service_helpers import MODEL, TS_MS

from proto.cascade.v1 import common_pb2, ranking_pb2
from ranking.fallback import squash_counts

DEEPFM = common_pb2.MODEL_KIND_DEEPFM


def req(user: Any, items: Any, **kw: Any) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(user_id=str(user), item_ids=[str(i) for i in items],
                                   context=common_pb2.RequestContext(timestamp_ms=TS_MS, country="FR"), **kw)


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


def popularity(env: Any, items: list[str]) -> np.ndarray:
    got = env.client.get_online_features(None, {"item_id": items}, ["rs_item:rating_count_7d"])
    return squash_counts(np.where(got.valid("rs_item:rating_count_7d"), got.column("rs_item:rating_count_7d"), 0))


def test_rank_returns_scores_in_request_order_and_names_the_version(rank_env: Any, run_ranking: Any) -> None:
    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)

    async def scenario(ns: Any) -> None:
        items = ["12", "10", "11", "30", "25"]
        r = await ns.rank.Rank(req(1, items))
        np.testing.assert_allclose(list(r.scores), rank_env.expected("v1", 1, items), rtol=1e-6)
        assert r.model_version == common_pb2.ModelVersion(model_name=MODEL, version="v1", kind=DEEPFM)
        assert not r.degraded and not r.degraded_reasons and not r.served_feature_id
        assert (r.experiment.experiment, r.experiment.bucket, r.experiment.overridden) == ("", "default", False)
        backwards = await ns.rank.Rank(req(1, items[::-1]))
        assert list(backwards.scores) == list(r.scores)[::-1]
        other_user = await ns.rank.Rank(req(2, items))
        np.testing.assert_allclose(list(other_user.scores), rank_env.expected("v1", 2, items), rtol=1e-6)
        assert all(0.0 <= s <= 1.0 for s in r.scores)
        assert rank_env.loader.scorers["v1"].warmed == (64, 256)  # warmed on the preferred sizes before serving

    run_ranking(scenario)


def test_malformed_requests_are_invalid_argument_and_unknown_models_not_found(rank_env: Any, run_ranking: Any) -> None:
    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)

    async def scenario(ns: Any) -> None:
        invalid = [
            req("", ["10"]),
            req(1, []),
            req(1, ["10", "11", "10"]),
            req(1, ["10", ""]),
            req("u" * 129, ["10"]),
            req(1, [str(i) for i in range(2001)]),
            req(1, ["10"], log_features=True),  # no request_id
            req(1, ["10"], model_name=""),
            ranking_pb2.RankRequest(user_id="1", item_ids=["10"], context=common_pb2.RequestContext(page_index=-1)),
        ]
        for r in invalid:
            assert await code_of(ns.rank.Rank(r)) == grpc.StatusCode.INVALID_ARGUMENT, r
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ns.rank.Rank(req(1, ["10", "11", "10"]))
        assert "item_ids[2]" in err.value.details()
        assert await code_of(ns.rank.Rank(req(1, ["10"], model_name="no_such_model"))) == grpc.StatusCode.NOT_FOUND
        assert await code_of(ns.rank.Rank(req(1, ["10"], model_version="v404"))) == grpc.StatusCode.NOT_FOUND
        ok = await ns.rank.Rank(req(1, [str(i) for i in range(2000)]))  # the upper bound itself is fine
        assert len(ok.scores) == 2000

    run_ranking(scenario)


def test_a_model_failure_is_answered_with_degraded_popularity_scores(rank_env: Any, run_ranking: Any) -> None:
    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)

    async def scenario(ns: Any) -> None:
        items = ["12", "10", "33"]
        rank_env.loader.scorers["v1"].fail = True
        r = await ns.rank.Rank(req(1, items))
        assert r.degraded and len(r.scores) == 3
        np.testing.assert_allclose(list(r.scores), popularity(rank_env, items), rtol=1e-12)
        assert r.model_version == common_pb2.ModelVersion(model_name=MODEL, version="heuristic:popularity",
                                                          kind=common_pb2.MODEL_KIND_HEURISTIC)
        (reason,) = r.degraded_reasons
        assert (reason.stage, reason.code, reason.component, reason.fallback) == (
            common_pb2.STAGE_RANKING, common_pb2.DEGRADATION_CODE_ERROR, MODEL, "popularity")
        assert "model exploded" in reason.message
        rank_env.loader.scorers["v1"].fail = False
        healthy = await ns.rank.Rank(req(1, items))
        assert not healthy.degraded and healthy.model_version.version == "v1"

    run_ranking(scenario)


def test_no_model_and_missing_entities_degrade_but_answer(rank_env: Any, run_ranking: Any) -> None:
    async def no_model(ns: Any) -> None:
        r = await ns.rank.Rank(req(1, ["10", "11"]))
        assert r.degraded and r.model_version.kind == common_pb2.MODEL_KIND_HEURISTIC
        assert r.degraded_reasons[0].code == common_pb2.DEGRADATION_CODE_MODEL_UNAVAILABLE
        np.testing.assert_allclose(list(r.scores), popularity(rank_env, ["10", "11"]), rtol=1e-12)

    run_ranking(no_model)
    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)

    async def missing(ns: Any) -> None:
        r = await ns.rank.Rank(req(9, ["10", "99"]))  # user 9 and item 99 have no rows
        assert r.model_version.version == "v1" and r.degraded
        (reason,) = r.degraded_reasons
        assert (reason.stage, reason.code, reason.fallback) == (
            common_pb2.STAGE_FEATURES, common_pb2.DEGRADATION_CODE_FEATURES_MISSING, "default_features")
        assert reason.component == "rs_item,rs_user"
        np.testing.assert_allclose(list(r.scores), rank_env.expected("v1", 9, ["10", "99"]), rtol=1e-6)

    run_ranking(missing)


def test_a_model_missing_its_deadline_is_answered_with_the_fallback(rank_env: Any, run_ranking: Any) -> None:
    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)
    cfg = rank_env.cfg.model_copy(update={"ranking": rank_env.cfg.ranking.model_copy(update={"deadline_ms": 100.0})})

    async def scenario(ns: Any) -> None:
        rank_env.loader.scorers["v1"].delay_s = 1.0
        r = await ns.rank.Rank(req(1, ["10", "11"]), timeout=10)
        assert r.degraded and r.model_version.version == "heuristic:popularity"
        assert r.degraded_reasons[0].code == common_pb2.DEGRADATION_CODE_TIMEOUT
        rank_env.loader.scorers["v1"].delay_s = 0.0

    run_ranking(scenario, cfg=cfg)


def test_a_corrupt_publish_is_refused_while_the_live_model_keeps_serving(rank_env: Any, run_ranking: Any) -> None:
    from ranking.registry import ArtifactRejected

    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)

    async def scenario(ns: Any) -> None:
        bad = rank_env.artifact("v2", 2)
        (bad / "model.pt").write_bytes(b"\x00" * 64)
        with pytest.raises(ArtifactRejected, match="model.pt"):
            await ns.server.manager.publish(bad, auto_promote=True)
        r = await ns.rank.Rank(req(1, ["10", "11"]))
        assert r.model_version.version == "v1" and not r.degraded
        listed = await ns.admin.ListVersions(ranking_pb2.ListVersionsRequest(model_name=MODEL))
        status = {v.model.version: (v.status, v.status_message) for v in listed.versions}
        assert status["v1"][0] == ranking_pb2.MODEL_VERSION_STATUS_LIVE
        assert status["v2"][0] == ranking_pb2.MODEL_VERSION_STATUS_REJECTED and "model.pt" in status["v2"][1]

    run_ranking(scenario)


def test_model_admin_service(rank_env: Any, run_ranking: Any) -> None:
    reg = rank_env.registry
    reg.publish(rank_env.artifact("v1", 1), auto_promote=True)
    reg.publish(rank_env.artifact("v2", 2))

    async def scenario(ns: Any) -> None:
        a = ns.admin
        live = await a.GetLiveVersion(ranking_pb2.GetLiveVersionRequest(model_name=MODEL))
        assert live.live.model.version == "v1" and live.live.status == ranking_pb2.MODEL_VERSION_STATUS_LIVE
        assert live.live.feature_set == common_pb2.FeatureSetRef(name="rs_ranker", version=1)
        assert live.live.artifact_uri.startswith("file://") and live.live.metrics["auc"] == pytest.approx(0.51)
        assert not live.HasField("traffic_split")
        listed = await a.ListVersions(ranking_pb2.ListVersionsRequest(model_name=MODEL))
        assert [v.model.version for v in listed.versions] == ["v2", "v1"]  # newest first
        assert listed.versions[0].status == ranking_pb2.MODEL_VERSION_STATUS_LOADED  # preloaded, warm for a pin
        only_live = await a.ListVersions(ranking_pb2.ListVersionsRequest(
            model_name=MODEL, status_filter=[ranking_pb2.MODEL_VERSION_STATUS_LIVE]))
        assert [v.model.version for v in only_live.versions] == ["v1"]

        pinned = await a.PinVersion(ranking_pb2.PinVersionRequest(model_name=MODEL, version="v2", reason="try"))
        assert (pinned.live.model.version, pinned.previous.model.version) == ("v2", "v1")
        assert (await ns.rank.Rank(req(1, ["10"]))).model_version.version == "v2"
        back = await a.Rollback(ranking_pb2.RollbackRequest(model_name=MODEL, reason="v2 is worse"))
        assert (back.live.model.version, back.rolled_back_from.model.version) == ("v1", "v2")
        assert (await ns.rank.Rank(req(1, ["10"]))).model_version.version == "v1"
        assert await code_of(a.Rollback(ranking_pb2.RollbackRequest(model_name=MODEL))) == grpc.StatusCode.FAILED_PRECONDITION

        split = await a.SetTrafficSplit(ranking_pb2.SetTrafficSplitRequest(model_name=MODEL, split=ranking_pb2.TrafficSplit(
            experiment="ab_v2", treatment_version="v2", treatment_fraction=0.5)))
        assert split.split.updated_at_ms > 0
        got = await a.GetLiveVersion(ranking_pb2.GetLiveVersionRequest(model_name=MODEL))
        assert got.traffic_split.treatment_version == "v2" and got.live.model.version == "v1"
        seen: dict[str, set[str]] = {"control": set(), "treatment": set()}
        for u in range(40):
            r = await ns.rank.Rank(req(u, ["10"]))
            assert r.experiment.experiment == "ab_v2"
            seen[r.experiment.bucket].add(r.model_version.version)
            again = await ns.rank.Rank(req(u, ["11"]))
            assert again.experiment.bucket == r.experiment.bucket  # stable per user
        assert seen == {"control": {"v1"}, "treatment": {"v2"}}
        forced = await ns.rank.Rank(req(1, ["10"], model_version="v2"))
        assert forced.model_version.version == "v2" and forced.experiment.overridden
        await a.SetTrafficSplit(ranking_pb2.SetTrafficSplitRequest(model_name=MODEL))
        assert (await ns.rank.Rank(req(1, ["10"]))).experiment.experiment == ""

        assert await code_of(a.PinVersion(ranking_pb2.PinVersionRequest(model_name=MODEL, version="v404"))) == grpc.StatusCode.NOT_FOUND
        assert await code_of(a.GetLiveVersion(ranking_pb2.GetLiveVersionRequest(model_name="nope"))) == grpc.StatusCode.NOT_FOUND
        assert await code_of(a.ListVersions(ranking_pb2.ListVersionsRequest(model_name=""))) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(a.SetTrafficSplit(ranking_pb2.SetTrafficSplitRequest(model_name=MODEL, split=ranking_pb2.TrafficSplit(
            experiment="ab", treatment_version="v2", treatment_fraction=2.0)))) == grpc.StatusCode.INVALID_ARGUMENT
        reg.mark_failed("v2", "load failed: test")
        assert await code_of(a.PinVersion(ranking_pb2.PinVersionRequest(model_name=MODEL, version="v2"))) == grpc.StatusCode.FAILED_PRECONDITION
        actions = [e["action"] for e in reg.state(MODEL).audit]
        assert actions.count("pin") == 1 and "rollback" in actions and actions.count("set_traffic_split") == 2

    run_ranking(scenario)


def test_a_version_that_fails_to_load_is_marked_failed_and_the_live_one_keeps_serving(rank_env: Any, run_ranking: Any) -> None:
    reg = rank_env.registry
    reg.publish(rank_env.artifact("v1", 1), auto_promote=True)
    rank_env.loader.broken.add("v2")

    async def scenario(ns: Any) -> None:
        reg.publish(rank_env.artifact("v2", 2), auto_promote=True)  # as a trainer in another process would
        for _ in range(200):  # the watcher tries it, fails, records it
            if reg.version("v2", MODEL).status == "failed":
                break
            await asyncio.sleep(0.05)
        assert reg.version("v2", MODEL).status == "failed"
        r = await ns.rank.Rank(req(1, ["10"]))
        assert r.model_version.version == "v1" and not r.degraded

    run_ranking(scenario)


def test_served_features_are_logged_to_kafka_without_blocking(rank_env: Any, run_ranking: Any, stack: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from featurestore.served_log import ServedFeatureLogger, read_served_log_kafka

    rank_env.registry.publish(rank_env.artifact("v1", 1), auto_promote=True)
    started = datetime.now(UTC) - timedelta(seconds=5)
    logger = ServedFeatureLogger.from_config(stack.kafka_bootstrap, rank_env.cfg)
    items = ["12", "10", "11"]

    async def scenario(ns: Any) -> str:
        r = await ns.rank.Rank(req(1, items, log_features=True, request_id="feed-req-1"))
        assert r.served_feature_id and not r.degraded and r.model_version.version == "v1"
        return r.served_feature_id

    try:
        sid = run_ranking(scenario, served_logger=logger)
        assert logger.flush(20)
    finally:
        logger.close()
    records = [rec for rec in read_served_log_kafka(stack.kafka_bootstrap, rank_env.cfg.kafka, since=started, timeout_s=30)
               if rec["served_feature_id"] == sid]
    assert len(records) == 1
    rec = records[0]
    assert rec["request_id"] == "feed-req-1" and rec["feature_set"] == "rs_ranker" and rec["feature_set_version"] == 1
    assert [str(v) for v in rec["entity_keys"]["item_id"]] == items
    assert rec["values"]["rs_request:hour"] == [13, 13, 13]

    async def unconfigured(ns: Any) -> None:
        r = await ns.rank.Rank(req(1, items, log_features=True, request_id="feed-req-2"))
        assert r.scores and not r.served_feature_id and r.degraded
        (reason,) = r.degraded_reasons
        assert reason.stage == common_pb2.STAGE_LOGGING

    run_ranking(unconfigured)
