"""The service on real model artifacts: DeepFM saved with `ranking.artifact.save_artifact`, served by `load_scorer`.

Two small (untrained, differently seeded) DeepFMs over the test feature set
are published into the registry and served through the default loader (the
configured backend when the artifact has it, else its first one); every
response's scores must equal the artifact's own scorer on the same features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from rank_service_helpers import FEATURE_SET, MODEL, TS_MS

from proto.cascade.v1 import common_pb2, ranking_pb2


def _deepfm_artifact(out: Path, resolved: Any, ranking: Any, version: str, seed: int) -> Path:
    import torch

    from ranking.artifact import save_artifact
    from ranking.encoding import FeatureEncoder
    from ranking.models import build_from_settings

    rng = np.random.default_rng(seed)
    n = 64
    table = pa.table({
        "user_id": rng.integers(1, 4, n), "item_id": rng.integers(10, 40, n),
        "rs_user__age": rng.integers(18, 70, n), "rs_user__activity": rng.random(n),
        "rs_item__quality": rng.random(n), "rs_item__rating_count_7d": rng.integers(0, 50, n),
        "rs_clicks__click_count_1d": rng.integers(0, 5, n), "rs_request__hour": rng.integers(0, 24, n),
    })
    encoder = FeatureEncoder.from_config(resolved, ranking).fit(table)
    torch.manual_seed(seed)
    model = build_from_settings("deepfm", encoder.layout(), ranking)
    save_artifact(model, encoder, out, kind="deepfm", feature_set_name=resolved.name,
                  feature_set_fingerprint=resolved.fingerprint, metrics={"auc": 0.5}, name=MODEL, version=version,
                  onnx=False)
    return out


def test_real_deepfm_artifacts_are_served_swapped_and_named(rank_env: Any, run_ranking: Any, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from ranking.artifact import load_scorer

    small = rank_env.cfg.ranking.model_copy(update={"hash_buckets": 1009, "embedding_dim": 4, "mlp_hidden": (16,),
                                                    "threads": 1})
    cfg = rank_env.cfg.model_copy(update={"ranking": small})
    resolved = rank_env.repo.resolve(FEATURE_SET)
    reg = rank_env.registry
    for version, seed in (("real1", 1), ("real2", 2)):
        reg.publish(_deepfm_artifact(tmp_path / version, resolved, small, version, seed), auto_promote=(version == "real1"))
    items = ["12", "10", "33", "99"]

    def expected(version: str, user: str) -> np.ndarray:
        scorer = load_scorer(reg.artifact_path(version, MODEL), "eager", 1)
        feats = rank_env.client.get_online_features(None, {"user_id": [user] * len(items), "item_id": items},
                                                    FEATURE_SET, {"event_ts": TS_MS})
        return scorer.score(feats).astype(np.float64)

    def request(user: str) -> ranking_pb2.RankRequest:
        return ranking_pb2.RankRequest(user_id=user, item_ids=items, context=common_pb2.RequestContext(timestamp_ms=TS_MS))

    async def scenario(ns: Any) -> None:
        live = ns.server.manager.live_model(MODEL)
        assert live.version == "real1" and live.scorer.backend_name == "eager"  # the artifact has no ONNX file
        r = await ns.rank.Rank(request("2"))
        assert r.model_version == common_pb2.ModelVersion(model_name=MODEL, version="real1", kind=common_pb2.MODEL_KIND_DEEPFM)
        np.testing.assert_allclose(list(r.scores), expected("real1", "2"), rtol=1e-5, atol=1e-7)
        await ns.admin.PinVersion(ranking_pb2.PinVersionRequest(model_name=MODEL, version="real2"))
        r2 = await ns.rank.Rank(request("2"))
        assert r2.model_version.version == "real2"
        np.testing.assert_allclose(list(r2.scores), expected("real2", "2"), rtol=1e-5, atol=1e-7)
        assert list(r2.scores) != list(r.scores)

    run_ranking(scenario, cfg=cfg, loader=None)
