"""A whole feed pipeline on a synthetic catalogue, ready to serve: for tests, benchmarks and demos.

    setup = prepare_synthetic(config, redis_url, SyntheticSpec(...), work_dir=tmp, namespace="t1")
    server = build_feed_server(setup.config, redis_url, kafka, check_registry=False)

Built with each stage's own tools, nothing faked:

1. the catalogue (:func:`featurestore.data.synthetic.generate`; an existing
   dataset of the same spec is reused), made the ``synthetic`` dataset of a
   private offline root under `work_dir` (a symlink: the shared root's active
   dataset is left alone);
2. online features under `namespace` (``OnlineStore``): item profiles and
   popularity counts by materialization as of the end of the log; user
   profiles and click windows by materialization, or, with `sample_users`,
   for that many active users only (their last 30 days of clicks through
   ``OnlineStore.add_events``, as ``bench recall_service`` does);
3. recall's tables: co-visitation (``recall.covisit``), trending and fresh
   sets per category, and an embedding index -- trained towers
   (``recall.artifacts.build_artifact``) or, for catalogues too big to train on
   here, the generator's latent vectors behind the same serving stack;
4. a DeepFM on ``deepfm_synthetic`` trained (``ranking.train.train``) on
   clicks against uniformly sampled unclicked items, point-in-time features,
   published live into a model registry under `work_dir`.

:attr:`SyntheticPipeline.config` points every stage at all of it
(``features.project``, offline root, artifacts, recall's synthetic features,
ranking's model and feature set, rerank's and the feed's key prefixes).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAY_MS = 86_400_000
EMBEDDING_NAME = "synthetic"
USER_VIEWS = ("syn_user_profile", "syn_user_activity")
ITEM_VIEWS = ("syn_item_profile", "syn_item_popularity")


@dataclass
class SyntheticPipeline:
    """What :func:`prepare_synthetic` built."""

    config: Any
    paths: Any  # featurestore.data.synthetic.SyntheticPaths
    namespace: str
    end_ms: int  # end of the event log: a natural request time
    users: list[int]  # users with online features
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _step(progress: Any, message: str) -> None:
    if progress:
        (progress if callable(progress) else print)(message)


def pipeline_config(config: Any, *, namespace: str, work_dir: Path, items_path: Path, embedding: bool,
                    ranking: dict[str, Any] | None = None) -> Any:
    """`config` pointed at a synthetic pipeline under `work_dir` in `namespace`."""
    r = {"model": "deepfm", "feature_set": "deepfm_synthetic", "fallback_features": ("syn_item_popularity:click_count_7d",),
         "fallback_model": "", **(ranking or {})}
    return config.model_copy(update={
        "paths": config.paths.model_copy(update={"data_dir": work_dir, "artifacts_dir": work_dir / "artifacts"}),
        "features": config.features.model_copy(update={"project": namespace}),
        "recall": config.recall.model_copy(update={
            "recent_items_feature": "syn_user_activity:item_id_last50_30d",
            "category_features": ("syn_user_profile:home_category",),
            "embedding_artifacts": EMBEDDING_NAME}),
        "ranking": config.ranking.model_copy(update=r),
        "rerank": config.rerank.model_copy(update={"key_prefix": f"{namespace}:rerank"}),
        "feed": config.feed.model_copy(update={"recall_items": str(items_path), "key_prefix": f"{namespace}:feed",
                                               "recall_embedding": EMBEDDING_NAME if embedding else ""}),
    })


def _link_dataset(root: Path, dataset: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    link = root / "synthetic"
    if link.is_symlink() or link.exists():
        if link.resolve() == dataset.resolve():
            return
        link.unlink()
    os.symlink(dataset.resolve(), link)


def _online_features(config: Any, redis: Any, paths: Any, end_ms: int, sample_users: int | None, progress: Any) -> list[int]:
    from featurestore.materialize import materialize
    from featurestore.offline import OfflineStore
    from featurestore.online import OnlineStore
    from featurestore.repository import get_repo

    repo = get_repo(config.features.definitions)
    store = OnlineStore(redis, config.features.project, config.features.online_batch_keys)
    end = datetime.fromtimestamp(end_ms / 1000, tz=UTC)
    views = [repo.view(v) for v in ITEM_VIEWS] + ([repo.view(v) for v in USER_VIEWS] if sample_users is None else [])
    with OfflineStore(config.offline_root, threads=2, memory_limit="2GB") as off:
        report = materialize(off, store, views, None, end, progress=False)
    _step(progress, f"materialized {report.rows_written:,} rows of {', '.join(v.name for v in views)}")
    if sample_users is None:
        return [int(u) for u in pq.read_table(paths.users, columns=["user_id"])["user_id"].to_numpy()]
    return sample_user_features(repo, store, paths, end_ms, sample_users)


def sample_user_features(repo: Any, store: Any, paths: Any, end_ms: int, n_users: int, seed: int = 0) -> list[int]:
    """Online features of `n_users` users active in the last 30 days (their clicks, their profile); returns them.

    Materializing every user of a 1M-user catalogue is out of a benchmark's budget: a sample is what
    requests are drawn from (this pipeline, ``bench recall_service``).
    """
    import duckdb

    lo = end_ms - 30 * DAY_MS
    con = duckdb.connect()
    try:
        users = con.sql(f"""
            SELECT user_id FROM read_parquet('{paths.events}') WHERE epoch_ms(event_ts) >= {lo}
            GROUP BY user_id HAVING count(*) >= 3 ORDER BY hash(user_id + {int(seed)}) LIMIT {int(n_users)}
        """).fetchnumpy()["user_id"]
        con.register("sample", pa.table({"user_id": users}))
        ev = con.sql(f"""
            SELECT e.user_id, e.item_id, epoch_ms(e.event_ts) AS ts FROM read_parquet('{paths.events}') e
            JOIN sample s USING (user_id) WHERE epoch_ms(e.event_ts) >= {lo} AND epoch_ms(e.event_ts) < {end_ms}
        """).fetchnumpy()
        prof = con.sql(f"""
            SELECT u.user_id, CAST(u.home_category AS VARCHAR) AS home_category, u.event_ts
            FROM read_parquet('{paths.users}') u JOIN sample s USING (user_id)
        """).to_arrow_table()
    finally:
        con.close()
    view = repo.view("syn_user_activity")
    events = [(int(u), int(t) * 1000, {"item_id": int(i), "value": 1.0})
              for u, i, t in zip(ev["user_id"], ev["item_id"], ev["ts"])]
    for a in range(0, len(events), 20_000):
        store.add_events(view, events[a:a + 20_000])
    store.write_rows(repo.view("syn_user_profile"), prof)
    return [int(u) for u in users]


def _recall_tables(config: Any, redis: Any, paths: Any, end_ms: int, progress: Any) -> dict[str, float]:
    from recall.categories import ItemCategories
    from recall.covisit import CovisitSpec, build_and_publish
    from recall.fresh import FreshIndex
    from recall.trending import TrendingStore

    ns = config.features.project
    out: dict[str, float] = {}
    categories = ItemCategories.from_parquet(paths.items, "category")
    t = time.perf_counter()
    stats, pub = build_and_publish(redis, ns, paths.events, CovisitSpec.from_config(config.recall), as_of=end_ms)
    out["covisit_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    boot = TrendingStore.from_config(redis, config, ns, categories).bootstrap(paths.events, as_of=end_ms)
    out["trending_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    fresh = FreshIndex.from_config(redis, config, ns, categories).bootstrap(
        pq.read_table(paths.items, columns=["item_id", "published_ts"]), end_ms)
    out["fresh_s"] = round(time.perf_counter() - t, 2)
    _step(progress, f"recall tables: co-visitation of {pub.items:,} items, trending {boot.items:,} items, fresh {fresh:,} items")
    return out


def latent_embedding_artifact(config: Any, paths: Any) -> Path:
    """An embedding artifact from the generator's latent item vectors (same serving stack as a trained one).

    The query tower is the mean of the recent items' vectors (one identity
    layer): what the towers learn on this data, without the training a
    million-item catalogue would take here.
    """
    from recall.artifacts import artifacts_root, write_artifact
    from recall.embedding.query import QueryEncoder
    from recall.embedding.spec import tower_spec
    from recall.index import IndexParams, ItemIndex

    items = pq.read_table(paths.items, columns=["item_id", "latent"])
    ids = items["item_id"].to_numpy().astype(np.int64)
    lat = np.asarray(items["latent"].combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(ids.size, -1)
    dim = int(config.recall.embedding_dim)
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, lat.shape[1])))
    vectors = np.ascontiguousarray(lat @ basis.T.astype(np.float32))
    order = np.argsort(ids)
    ids, vectors = ids[order], vectors[order]
    index = ItemIndex.build(vectors, ids, IndexParams.from_config(config.recall))
    spec = tower_spec("synthetic")
    history = int(config.recall.recent_items)
    feat_dim = 4
    w = np.zeros((dim + feat_dim * len(spec.user_features), dim), np.float32)
    w[:dim, :dim] = np.eye(dim, dtype=np.float32)
    encoder = QueryEncoder(spec, buckets=64, history_len=history, normalize=False, item_ids=ids,
                           item_table=np.vstack([np.zeros((1, dim), np.float32), vectors]),
                           position_logits=np.zeros(history, np.float32),
                           user_table=np.zeros((64 * len(spec.user_features), feat_dim), np.float32),
                           layers=[(w, np.zeros(dim, np.float32))])
    return write_artifact(artifacts_root(config, EMBEDDING_NAME), index, encoder,
                          build={"source": "synthetic generator latents"})


def _labels(paths: Any, rows: int, seed: int) -> pa.Table:
    """Clicks (label 1) and as many uniformly drawn items the user did not click then (label 0), feature time 1 us before."""
    events = pq.read_table(paths.events, columns=["user_id", "item_id", "event_ts"])
    n_pos = min(events.num_rows, max(1, rows // 2))
    idx = np.linspace(0, events.num_rows - 1, n_pos).astype(np.int64)  # evenly over time
    pos = events.take(pa.array(idx))
    items = pq.read_table(paths.items, columns=["item_id", "published_ts"])
    item_ids = items["item_id"].to_numpy()
    published = items["published_ts"].cast(pa.int64()).to_numpy()
    rng = np.random.default_rng(seed)
    ts = pos["event_ts"].cast(pa.int64()).to_numpy()
    neg = rng.integers(0, item_ids.size, n_pos)
    for _ in range(8):  # redraw items not yet published at the click's time
        bad = published[neg] > ts
        if not bad.any():
            break
        neg[bad] = rng.integers(0, item_ids.size, int(bad.sum()))
    ts_all = np.concatenate([ts, ts])
    table = pa.table({
        "user_id": pa.array(np.concatenate([pos["user_id"].to_numpy(), pos["user_id"].to_numpy()]), pa.int64()),
        "item_id": pa.array(np.concatenate([pos["item_id"].to_numpy(), item_ids[neg]]), pa.int64()),
        "event_ts": pa.array(ts_all, pa.int64()).cast(pa.timestamp("us", "UTC")),
        "feature_ts": pa.array(ts_all - 1, pa.int64()).cast(pa.timestamp("us", "UTC")),
        "label": pa.array(np.concatenate([np.ones(n_pos, bool), np.zeros(n_pos, bool)])),
    })
    return table.sort_by([("event_ts", "ascending")])


def train_deepfm(config: Any, paths: Any, out_dir: Path, *, rows: int, epochs: int, progress: Any = None,
                 seed: int = 0) -> Any:
    """A DeepFM on ``ranking.feature_set`` (deepfm_synthetic) trained on `rows` labels; its artifact in `out_dir`."""
    from featurestore.data.movielens import temporal_split
    from featurestore.offline import OfflineStore
    from featurestore.repository import get_repo
    from ranking.data import Splits
    from ranking.train import train

    repo = get_repo(config.features.definitions)
    fs = config.ranking.feature_set
    labels = _labels(paths, rows, seed)
    with OfflineStore(config.offline_root, threads=2, memory_limit="2GB") as store:
        table = store.get_training_set(labels, repo.feature_set(fs), repo.views, timestamp_field="feature_ts")
    tr, va, te = temporal_split(table, (0.8, 0.1, 0.1), timestamp_field="event_ts")
    splits = Splits(tr, va, te, fs, repo.resolve(fs).fingerprint)
    onnx = config.ranking.backend == "onnxruntime"
    result = train(config.ranking.model, splits=splits, config=config, out_dir=out_dir, progress=bool(progress),
                   epochs=epochs, patience=1, export={"onnx": onnx, "int8": onnx and config.ranking.int8})
    _step(progress, f"trained {result.summary()}")
    return result


def prepare_synthetic(config: Any, redis_url: str, spec: Any, *, work_dir: Path, namespace: str,
                      dataset_root: Path | None = None, sample_users: int | None = None, embedding: str | None = "trained",
                      train_rows: int = 20_000, epochs: int = 2, ranking: dict[str, Any] | None = None,
                      embedding_epochs: int = 3, progress: Any = None) -> SyntheticPipeline:
    """Build everything (see the module docstring); blocking. `embedding`: "trained", "latent" or None."""
    from featurestore.data.synthetic import generate
    from featurestore.repository import get_repo
    from ranking.registry import ModelRegistry
    from stack.clients import redis_client

    work_dir = Path(work_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    paths = generate(spec, root=dataset_root or work_dir / "datasets", progress=False, activate_it=False)
    timings["generate_s"] = round(time.perf_counter() - t, 2)
    _link_dataset(work_dir / config.features.offline_subdir, paths.root)
    cfg = pipeline_config(config, namespace=namespace, work_dir=work_dir, items_path=paths.items,
                          embedding=embedding is not None, ranking=ranking)
    end_ms = spec.end_us // 1000
    redis = redis_client(redis_url, config.redis)
    try:
        t = time.perf_counter()
        users = _online_features(cfg, redis, paths, end_ms, sample_users, progress)
        timings["features_s"] = round(time.perf_counter() - t, 2)
        timings.update(_recall_tables(cfg, redis, paths, end_ms, progress))
    finally:
        redis.close()
    t = time.perf_counter()
    if embedding == "trained":
        from recall.artifacts import build_artifact

        build_artifact("synthetic", config=cfg, name=EMBEDDING_NAME, progress=False, evaluate=False, keep=None,
                       epochs=embedding_epochs, threads=1)
    elif embedding == "latent":
        latent_embedding_artifact(cfg, paths)
    timings["embedding_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    result = train_deepfm(cfg, paths, work_dir / "train" / f"deepfm-{namespace}", rows=train_rows, epochs=epochs,
                          progress=progress)
    registry = ModelRegistry.from_config(cfg, repo=get_repo(cfg.features.definitions))
    version = registry.publish(work_dir / "train" / f"deepfm-{namespace}", auto_promote=True)
    timings["ranking_model_s"] = round(time.perf_counter() - t, 2)
    _step(progress, f"published {cfg.ranking.model}/{version}")
    return SyntheticPipeline(cfg, paths, namespace, end_ms, users, version, timings,
                             {k: float(v) for k, v in result.metrics.items() if k in ("auc", "logloss", "train_rows")})


def recent_spec_start(days: int, now: datetime | None = None) -> str:
    """ISO date `days` before `now`: a synthetic log ending about now (windows of 30 days read as of now see it)."""
    at = (now or datetime.now(UTC)).date()
    return (at.fromordinal(at.toordinal() - days)).isoformat()


__all__ = ["EMBEDDING_NAME", "SyntheticPipeline", "latent_embedding_artifact", "pipeline_config", "prepare_synthetic",
           "recent_spec_start", "train_deepfm"]
