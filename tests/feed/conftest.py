"""Fixtures of the feed gateway tests: one small but complete synthetic pipeline per session, and servers on loopback.

The pipeline (:func:`feed.synthetic.prepare_synthetic`) is real end to end: a
synthetic catalogue whose log ends today, materialized online features in a
namespace of the session's Redis, co-visitation / trending / fresh tables, a
trained two-tower embedding index, and a DeepFM trained on deepfm_synthetic
published live in a model registry. Budgets are generous (the machine is small
and shared): the tests check behaviour, never timings.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest

from featurestore.data.synthetic import SyntheticSpec

SPEC = dict(n_users=400, n_items=300, n_events=20_000, n_categories=6, days=30, seed=7, chunk_events=20_000,
            affinity_scale=6.0, taste_share=0.5)
SMALL_DEEPFM = {"hash_buckets": 1009, "embedding_dim": 4, "mlp_hidden": (16,), "backend": "eager", "learning_rate": 1e-2,
                "batch_size": 256, "threads": 1, "preferred_batch_sizes": (64, 256, 1024), "deadline_ms": 3000.0,
                "max_queue_delay_us": 500, "registry_poll_ms": 60_000}


def _patient(cfg: Any) -> Any:
    """Budgets for a busy 2-core machine: nothing degrades for being slow (the degradation tests make it fail)."""
    return cfg.model_copy(update={
        "recall": cfg.recall.model_copy(update={"channel_timeouts_ms": {c: 3000.0 for c in cfg.recall.channel_timeouts_ms},
                                                "index_watch_s": 0.0}),
        "rerank": cfg.rerank.model_copy(update={"fetch_timeout_ms": 3000.0}),
        "feed": cfg.feed.model_copy(update={"deadline_ms": 15_000.0, "fallback_timeout_ms": 3000.0}),
    })


@pytest.fixture(scope="session")
def feed_env(stack: Any, config: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from feed.synthetic import prepare_synthetic, recent_spec_start

    namespace = f"feedt{uuid.uuid4().hex[:8]}"
    spec = SyntheticSpec(**SPEC, start=recent_spec_start(SPEC["days"]))
    work = tmp_path_factory.mktemp("feed_pipeline")
    setup = prepare_synthetic(config, stack.redis_url, spec, work_dir=work, namespace=namespace, embedding="trained",
                              train_rows=6000, epochs=3, ranking=SMALL_DEEPFM, embedding_epochs=2)
    items = pq.read_table(setup.paths.items, columns=["item_id", "category", "author", "group_id"]).to_pydict()
    attrs = {str(i): (str(c), str(a), str(g)) for i, c, a, g in zip(items["item_id"], items["category"], items["author"],
                                                                     items["group_id"])}
    return SimpleNamespace(setup=setup, config=_patient(setup.config), redis_url=stack.redis_url,
                           kafka=stack.kafka_bootstrap, users=setup.users, end_ms=setup.end_ms, attrs=attrs,
                           namespace=namespace, work=Path(work))


def with_feed(cfg: Any, **feed: Any) -> Any:
    return cfg.model_copy(update={"feed": cfg.feed.model_copy(update=feed)})


@contextlib.asynccontextmanager
async def stage_servers(env: SimpleNamespace, cfg: Any | None = None) -> AsyncIterator[dict[str, Any]]:
    """Recall, ranking and rerank servers built as the feed builds them, started and listening on loopback."""
    from feed.service import build_inprocess_stages

    servers, closers = build_inprocess_stages(cfg or env.config, env.redis_url, env.kafka, check_registry=False)
    started = []
    try:
        for s in servers.values():
            await s.start()
            started.append(s)
        yield servers
    finally:
        for s in started:
            await s.stop(0)
        for close in closers:
            await close()


@contextlib.asynccontextmanager
async def feed_server(env: SimpleNamespace, cfg: Any | None = None, **kw: Any) -> AsyncIterator[Any]:
    """A started FeedService on loopback (its own in-process stages unless `servers` / `addresses` are given)."""
    from feed.service import build_feed_server

    server = build_feed_server(cfg or env.config, env.redis_url, env.kafka, check_registry=False, port=0, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(1.0)


@pytest.fixture(scope="session")
def feed_helpers() -> SimpleNamespace:
    """The helpers above (test modules are imported by path, not as a package)."""
    return SimpleNamespace(with_feed=with_feed, stage_servers=stage_servers, feed_server=feed_server)
