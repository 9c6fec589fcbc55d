"""A published FTRL version as ranking's fallback model: when the main model fails, Rank answers with its scores."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncio  # noqa: E402
from datetime import timedelta  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from ftrl_trainer_helpers import CROSSES, DEFS, FS, trainer_config  # noqa: E402

from featurestore.repository import load_repo  # noqa: E402
from streaming.trainer_synthetic import SyntheticWorld  # noqa: E402


def test_ftrl_version_scores_when_the_main_model_fails(config: Any, redis: Any, unique_prefix: str,
                                                       tmp_path: Path) -> None:
    import grpc.aio

    from featurestore.client import FeatureClient, serving_time
    from featurestore.online import OnlineStore
    from proto.cascade.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
    from ranking.artifact import load_scorer, save_artifact
    from ranking.encoding import FeatureEncoder
    from ranking.models import build_from_settings
    from ranking.registry import ModelRegistry
    from ranking.service import build_ranking_server
    from streaming.ftrl import FTRLProximal
    from streaming.hashing import SparseLayout, parse_crosses
    from streaming.publish import Publisher
    from streaming.trainer_features import ServedRows, fit_table

    repo = load_repo(DEFS)
    world = SyntheticWorld(repo, FS, n_users=10, n_items=40, seed=9)
    store = OnlineStore(redis, unique_prefix)
    for view in ("st_user", "st_item"):
        store.write_rows(repo.view(view), world.view_table(view, serving_time() - timedelta(hours=1)))
    client = FeatureClient(store, repo, feature_set_versions={FS: 1})
    small = config.ranking.model_copy(update={"hash_buckets": 1009, "embedding_dim": 4, "mlp_hidden": (8,), "threads": 1})
    cfg = trainer_config(config, tmp_path)
    cfg = cfg.model_copy(update={"ranking": small.model_copy(update={
        "model": "main", "fallback_model": cfg.streaming.model_name, "registry_poll_ms": 50, "deadline_ms": 10_000.0,
        "preferred_batch_sizes": (16,), "max_batch_size": 256})})
    resolved = repo.resolve(FS)
    registry = ModelRegistry.from_config(cfg, repo=repo)
    pairs = [(rec, i) for rec, smp in world.requests(40, start_ms=1_767_225_600_000) for i in range(len(smp))]
    rows = ServedRows(pairs, ["user_id", "item_id"], FS)
    # the main model: a (small, untrained) DeepFM over the same feature set
    enc = FeatureEncoder.from_config(resolved, small)
    enc.fit(fit_table(enc, rows))
    save_artifact(build_from_settings("deepfm", enc.layout(), small), enc, tmp_path / "main", kind="deepfm",
                  feature_set_name=FS, feature_set_fingerprint=resolved.fingerprint, metrics={}, name="main",
                  version="m1", onnx=False)
    registry.publish(tmp_path / "main", auto_promote=True)
    # the FTRL model, learned on the synthetic clicks and published as the trainer does
    fenc = FeatureEncoder.from_config(resolved, small.model_copy(update={"hash_buckets": 4096}))
    fenc.fit(fit_table(fenc, rows))
    layout = SparseLayout(fenc, parse_crosses(CROSSES, fenc))
    learner = FTRLProximal(layout.dim, alpha=0.3, l1=0.01, l2=0.01)
    idx, val = layout.sparse(fenc.encode_online(rows))
    y = np.array([float(np.random.default_rng(i).random() < 0.3) for i in range(len(rows))])
    learner.learn_many(idx, val, y)
    version = Publisher(registry, layout, name=cfg.streaming.model_name, fingerprint=resolved.fingerprint).publish(
        learner.weights(), {"samples_learned": float(len(rows))}, {"offsets": {}})

    class Broken:
        """The main model's scorer, failing at scoring time (its encoding works: the features are read)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.encoder = inner.encoder

        def encode(self, features: Any) -> Any:
            return self.inner.encode(features)

        def score_encoded(self, arrays: Any) -> np.ndarray:
            raise RuntimeError("main model exploded")

        def warmup(self, sizes: Any) -> None:
            return None

    def loader(path: Path, record: Any) -> Any:
        scorer = load_scorer(path, "eager", 1)
        return Broken(scorer) if record.name == "main" else scorer

    user, items, ts = world.users[2], world.items[:8], 1_767_225_600_000

    async def scenario() -> Any:
        server = build_ranking_server(cfg, None, feature_client=client, registry=registry, loader=loader, port=0)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                return await ranking_pb2_grpc.RankingServiceStub(channel).Rank(ranking_pb2.RankRequest(
                    user_id=user, item_ids=items, context=common_pb2.RequestContext(timestamp_ms=ts)), timeout=20)
        finally:
            await server.stop(1.0)

    r = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert r.degraded and r.degraded_reasons[0].fallback == cfg.streaming.model_name
    assert r.model_version == common_pb2.ModelVersion(model_name=cfg.streaming.model_name, version=version,
                                                      kind=common_pb2.MODEL_KIND_FTRL)
    feats = client.get_online_features(None, {"user_id": [user] * len(items), "item_id": items}, FS, {"event_ts": ts})
    want = load_scorer(registry.artifact_path(version, cfg.streaming.model_name), "eager", 1).score(feats)
    np.testing.assert_allclose(list(r.scores), want, rtol=1e-5, atol=1e-6)
    assert np.ptp(want) > 0  # the model's own ranking, not a constant
