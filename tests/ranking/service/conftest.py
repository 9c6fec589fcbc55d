"""Fixtures of the ranking service tests: helpers importable, the registry and the service on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

# pytest 9 no longer puts test directories on sys.path: make `rank_service_helpers` importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncio  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from datetime import timedelta  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import grpc.aio  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
from rank_service_helpers import DEFS, FEATURE_SET, ITEMS, MODEL, TS_MS, USERS, NumpyLoader, NumpyScorer, write_artifact  # noqa: E402

from cascade.config import Config  # noqa: E402
from featurestore.client import FeatureClient, serving_time  # noqa: E402
from featurestore.online import OnlineStore  # noqa: E402
from featurestore.repository import FeatureRepo, load_repo  # noqa: E402
from proto.cascade.v1 import ranking_pb2_grpc  # noqa: E402
from ranking.registry import ModelRegistry  # noqa: E402
from ranking.service import build_ranking_server  # noqa: E402



@pytest.fixture(scope="session")
def rank_repo() -> FeatureRepo:
    return load_repo(DEFS)


@pytest.fixture()
def rank_env(redis: Any, unique_prefix: str, tmp_path: Path, config: Config, rank_repo: FeatureRepo) -> SimpleNamespace:
    """Online rows in the session's Redis (this test's namespace), a registry in tmp_path, a numpy-model loader."""
    store = OnlineStore(redis, unique_prefix)
    ts = pa.array([serving_time() - timedelta(hours=1)] * len(USERS), type=pa.timestamp("us", "UTC"))
    store.write_rows(rank_repo.view("rs_user"), pa.table({
        "user_id": list(USERS), "age": [20, 35, 61], "activity": [0.1, 0.9, 0.5], "event_ts": ts}))
    its = pa.array([serving_time() - timedelta(hours=1)] * len(ITEMS), type=pa.timestamp("us", "UTC"))
    store.write_rows(rank_repo.view("rs_item"), pa.table({
        "item_id": list(ITEMS), "quality": [((i * 37) % 11) / 10 for i in ITEMS],
        "rating_count_7d": [(i * 13) % 50 for i in ITEMS], "event_ts": its}))
    client = FeatureClient(store, rank_repo, feature_set_versions={FEATURE_SET: 1})
    cfg = config.model_copy(update={
        "paths": config.paths.model_copy(update={"artifacts_dir": tmp_path / "artifacts"}),
        "ranking": config.ranking.model_copy(update={
            "model": MODEL, "fallback_features": ("rs_item:rating_count_7d",), "registry_poll_ms": 50,
            "max_queue_delay_us": 1000, "deadline_ms": 10_000.0, "preferred_batch_sizes": (64, 256),
            "max_batch_size": 1024, "max_loaded_versions": 3, "fallback_model": ""}),
    })
    registry = ModelRegistry.from_config(cfg, repo=rank_repo)
    fingerprint = rank_repo.resolve(FEATURE_SET).fingerprint
    sources = tmp_path / "sources"

    def artifact(version: str, seed: int, **kw: Any) -> Path:
        return write_artifact(sources / version, name=MODEL, version=version, fingerprint=fingerprint, seed=seed, **kw)

    def expected(version: str, user: int | str, items: list[str]) -> np.ndarray:
        scorer = NumpyScorer(registry.artifact_path(version, MODEL))
        feats = client.get_online_features(None, {"user_id": [str(user)] * len(items), "item_id": list(items)},
                                           FEATURE_SET, {"event_ts": TS_MS})
        return scorer.score(feats).astype(np.float64)

    return SimpleNamespace(cfg=cfg, repo=rank_repo, client=client, store=store, registry=registry, loader=NumpyLoader(),
                           artifact=artifact, expected=expected, fingerprint=fingerprint)


Scenario = Callable[[Any], Awaitable[Any]]


@pytest.fixture()
def run_ranking(rank_env: SimpleNamespace) -> Callable[..., Any]:
    """Run `scenario(ns)` against a ranking server on loopback; ns has rank, admin (stubs), server, env."""

    def run(scenario: Scenario, *, cfg: Config | None = None, **kw: Any) -> Any:
        async def main() -> Any:
            kw.setdefault("loader", rank_env.loader)  # loader=None: the real one (ranking.artifact.load_scorer)
            server = build_ranking_server(cfg or rank_env.cfg, None, feature_client=rank_env.client,
                                          registry=rank_env.registry, port=0, **kw)
            await server.start()
            try:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    ns = SimpleNamespace(rank=ranking_pb2_grpc.RankingServiceStub(channel),
                                         admin=ranking_pb2_grpc.ModelAdminServiceStub(channel),
                                         server=server, env=rank_env, channel=channel)
                    return await asyncio.wait_for(scenario(ns), 60)
            finally:
                await server.stop(1.0)

        return asyncio.run(main())

    return run
