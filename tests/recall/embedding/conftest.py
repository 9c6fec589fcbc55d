"""Fixtures of the embedding-recall tests: a small synthetic offline store, a model trained on it once, artifacts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore.data.synthetic import SyntheticSpec, generate
from featurestore.offline import OfflineStore
from featurestore.repository import FeatureRepo, get_repo
from recall.embedding.query import QueryEncoder
from recall.embedding.spec import DATASETS

SPEC = SyntheticSpec(n_users=400, n_items=300, n_events=20_000, n_categories=6, days=30, seed=7, chunk_events=20_000,
                     affinity_scale=6.0, taste_share=0.5)  # tastes matter more than the default: a clear signal to learn
TRAIN = dict(epochs=5, batch_size=512, negatives=256, lr=5e-3, eval_k=20, max_eval_events=600, max_eval_users=300)


@pytest.fixture(scope="session")
def recall_repo() -> FeatureRepo:
    return get_repo()


@pytest.fixture(scope="session")
def syn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An offline-store root holding a small synthetic dataset (active as ``<root>/synthetic``)."""
    root = tmp_path_factory.mktemp("recall_offline")
    generate(SPEC, root=root, progress=False)
    return root


@pytest.fixture(scope="session")
def syn_store(syn_root: Path) -> Iterator[OfflineStore]:
    with OfflineStore(syn_root, threads=2, memory_limit="1GB") as store:
        yield store


@pytest.fixture(scope="session")
def train_kwargs() -> dict[str, Any]:
    """Training parameters sized for tests (a few seconds on 2 busy cores)."""
    return dict(TRAIN)


@pytest.fixture(scope="session")
def trained(syn_store: OfflineStore, recall_repo: FeatureRepo, config: Any) -> Any:
    from recall.embedding.train import train_embeddings

    return train_embeddings("synthetic", config=config, store=syn_store, repo=recall_repo, progress=False, threads=1, **TRAIN)


@pytest.fixture(scope="session")
def syn_items(syn_root: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(syn_root / "synthetic" / "items.parquet", columns=["item_id", "category", "popularity"])
    return {name: t[name].to_numpy() for name in t.column_names}


def random_encoder(dim: int = 16, n_items: int = 50, seed: int = 0, history_len: int = 5) -> QueryEncoder:
    """A query encoder with random weights (for index/artifact tests that need no training)."""
    rng = np.random.default_rng(seed)
    spec = DATASETS["synthetic"]
    buckets = 31
    return QueryEncoder(
        spec, buckets=buckets, history_len=history_len, normalize=False,
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        item_table=rng.standard_normal((n_items + 1, 8)).astype(np.float32),
        position_logits=np.zeros(history_len, np.float32),
        user_table=rng.standard_normal((len(spec.user_features) * buckets, 4)).astype(np.float32),
        layers=[(rng.standard_normal((8 + 4 * len(spec.user_features), 12)).astype(np.float32), np.zeros(12, np.float32)),
                (rng.standard_normal((12, dim)).astype(np.float32), np.zeros(dim, np.float32))],
    )


def clustered(n: int, dim: int, clusters: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries): a Gaussian mixture with varying norms, and queries near the cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    x *= rng.uniform(0.7, 1.3, (n, 1)).astype(np.float32)
    q = centres[rng.integers(0, clusters, 64)] + 0.4 * rng.standard_normal((64, dim)).astype(np.float32)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(q, np.float32)


@pytest.fixture()
def make_encoder() -> Any:
    return random_encoder


@pytest.fixture()
def make_clustered() -> Any:
    return clustered
