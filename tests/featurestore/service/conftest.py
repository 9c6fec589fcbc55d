"""Fixtures of the feature-service tests: the test definitions, seeded online rows, a FeatureService on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc.aio
import pyarrow as pa
import pytest

from cascade.config import Config
from featurestore.client import FeatureClient, serving_time
from featurestore.online import OnlineStore
from featurestore.registry import Registry
from featurestore.repository import FeatureRepo, load_repo
from featurestore.service import build_feature_server
from proto.cascade.v1 import features_pb2_grpc

DEFS = Path(__file__).resolve().with_name("service_features.py")


@pytest.fixture(scope="session")
def service_repo() -> FeatureRepo:
    return load_repo(DEFS)


def _ts(*times: Any) -> pa.Array:
    return pa.array(list(times), type=pa.timestamp("us", "UTC"))


@pytest.fixture()
def seeded(redis: Any, unique_prefix: str, service_repo: FeatureRepo) -> SimpleNamespace:
    """Rows relative to the real clock (the gRPC server reads as of its receive time).

    profile: user 1 fresh, user 2 older than the 1-day TTL, user 4 all NULL, user 3 absent.
    item_stats: item 5; affinity: (1, 5); clicks (6h window): user 1 two events, user 2 one event 8h ago.
    """
    store = OnlineStore(redis, unique_prefix)
    now = serving_time()
    repo = service_repo
    fresh, stale, recent = now - timedelta(hours=1), now - timedelta(days=2), now - timedelta(minutes=1)
    store.write_rows(repo.view("profile"), pa.table({
        "user_id": [1, 2, 4],
        "age": [30, 41, None],
        "score": [0.9, 0.1, None],
        "city": ["Paris", "Rome", None],
        "vip": [True, False, None],
        "emb": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], None],
        "tags": [["a", "é"], ["b"], None],
        "event_ts": _ts(fresh, stale, recent),
    }))
    store.write_rows(repo.view("item_stats"), pa.table({
        "item_id": [5], "ctr": [0.25], "recent": [[1, -2, 2**40]], "weights": [[0.5, 1.5]], "event_ts": _ts(fresh),
    }))
    store.write_rows(repo.view("affinity"), pa.table({"user_id": [1], "item_id": [5], "strength": [0.7], "event_ts": _ts(fresh)}))
    store.add_events(repo.view("clicks"), [
        (1, now - timedelta(minutes=5), {"dwell": 3.0}),
        (1, now - timedelta(minutes=1), {"dwell": 5.0}),
        (2, now - timedelta(hours=8), {"dwell": 1.0}),
    ])
    client = FeatureClient(store, repo, feature_set_versions={"ranker": 1})
    return SimpleNamespace(store=store, client=client, repo=repo, now=now, fresh=fresh, stale=stale, recent=recent)


@pytest.fixture()
def feature_config(config: Config, tmp_path: Path, unique_prefix: str, service_repo: FeatureRepo) -> Config:
    """The session config pointed at the test definitions, a fresh registry (applied) and this test's key namespace."""
    cfg = config.model_copy(update={
        "paths": config.paths.model_copy(update={"var_dir": tmp_path}),
        "features": config.features.model_copy(update={"definitions": DEFS, "project": unique_prefix}),
    })
    Registry(cfg.registry_dir).apply(service_repo)
    return cfg


Scenario = Callable[[features_pb2_grpc.FeatureServiceStub, grpc.aio.Channel], Awaitable[Any]]


@pytest.fixture()
def run_service(feature_config: Config, stack: Any) -> Callable[[Scenario], Any]:
    """Run `scenario(stub, channel)` against a FeatureService built by `build_feature_server` on loopback."""

    def run(scenario: Scenario) -> Any:
        async def main() -> Any:
            server = build_feature_server(feature_config, stack.redis_url, port=0)
            await server.start()
            try:
                async with grpc.aio.insecure_channel(server.address) as channel:
                    return await scenario(features_pb2_grpc.FeatureServiceStub(channel), channel)
            finally:
                await server.stop(0)

        return asyncio.run(main())

    return run
