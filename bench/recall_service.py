"""RecallService latency: the full multi-channel call for 1,000 candidates on the 1M-item synthetic catalogue, over gRPC.

Set-up (full run; ``--quick`` uses a 100k-item, 1M-event catalogue):

1. ``featurestore.data.synthetic.generate`` -- 1M users, 1M items, 10M click
   events over 30 days (reused when already generated; not activated);
2. an embedded valkey (``Stack(kafka=False)``) holding, under one namespace:
   co-visitation built with DuckDB from the whole log and published
   (``recall.covisit``), trending sets bootstrapped from the log, the fresh
   index from the catalogue (both per category), and for a sample of users
   their online features, written through the feature store's own
   ``OnlineStore``: ``syn_user_activity`` tiles from their clicks of the last
   30 days (last-50 item list) and ``syn_user_profile:home_category``;
3. an embedding artifact for the catalogue (:func:`_embedding_artifact`: the
   real serving stack, vectors from the generator's latent space);
4. the RecallService (``build_recall_server``: embedding, item2item, popular,
   fresh) in a **separate process**, configured with the synthetic features
   (``recent_items_feature = syn_user_activity:item_id_last50_30d``,
   ``category_features = (syn_user_profile:home_category,)``);
5. this process calls ``Recall(count=1000)`` for sampled users, one call at a
   time, request time = the end of the log, after a warm-up, and records the
   client-side latency; then a second phase with 4 calls in flight for throughput.

Reported: p50/p90/p99/p99.9 ms, calls/s, the share of degraded responses and
of each channel's TIMEOUT, candidates per response, the channels' own p50/p99
(``ChannelStats.latency_ms``), and the build times. Goal: p99 <= 10 ms.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import percentiles, rate
from cascade.config import Config

NAMESPACE = "benchrecallsvc"
SAMPLE_USERS = 2000
_DAY_MS = 86_400_000


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _recall_overrides() -> dict[str, Any]:
    return {
        "recent_items_feature": "syn_user_activity:item_id_last50_30d",
        "category_features": ("syn_user_profile:home_category",),
    }


def _service_config(config: Config) -> Config:
    return config.model_copy(update={"recall": config.recall.model_copy(update=_recall_overrides())})


# ----------------------------------------------------------------------------- server process


def _server_main(redis_url: str, items_path: str, conn: Any, embedding_root: str | None = None) -> None:
    """Child process: the RecallService on a free port until SIGTERM."""
    from cascade.config import get_config
    from recall.categories import ItemCategories
    from recall.service import build_recall_server, default_channels

    config = _service_config(get_config())
    categories = ItemCategories.from_parquet(items_path, "category")

    embedding = None
    if embedding_root:
        from recall.artifacts import LiveIndex
        from recall.channels.embedding import EmbeddingChannel

        live = LiveIndex(embedding_root)
        live.load()
        embedding = EmbeddingChannel(live, faiss_threads=1)

    async def main() -> None:
        channels, closers = default_channels(config, redis_url, namespace=NAMESPACE, categories=categories,
                                             embedding=embedding)
        from featurestore.client import FeatureClient
        from featurestore.online import OnlineStore
        from featurestore.repository import get_repo
        from stack.clients import redis_client

        fc = FeatureClient(OnlineStore(redis_client(redis_url, config.redis), NAMESPACE), get_repo())
        server = build_recall_server(config, redis_url, channels, feature_client=fc, port=0)
        server._async_closers.extend(closers)
        port = await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(port)
        await stop.wait()
        await server.stop(0)
        fc.close()

    asyncio.run(main())


# ----------------------------------------------------------------------------- set-up


def _sample_features(paths: Any, store: Any, repo: Any, end_ms: int, n_users: int, seed: int = 0) -> tuple[list[int], float]:
    """Write the online features of `n_users` active users (feed.synthetic's sampler); returns them and seconds."""
    from feed.synthetic import sample_user_features

    t0 = time.perf_counter()
    users = sample_user_features(repo, store, paths, end_ms, n_users, seed)
    return users, time.perf_counter() - t0


def _build(config: Config, redis: Any, paths: Any, end_ms: int, quick: bool) -> dict[str, float]:
    from recall.categories import ItemCategories
    from recall.covisit import CovisitSpec, build_and_publish
    from recall.fresh import FreshIndex
    from recall.trending import TrendingStore
    import pyarrow.parquet as pq

    times: dict[str, float] = {}
    categories = ItemCategories.from_parquet(paths.items, "category")
    t = time.perf_counter()
    stats, pub = build_and_publish(redis, NAMESPACE, paths.events, CovisitSpec.from_config(config.recall), as_of=end_ms)
    times["covisit_build_s"] = round(time.perf_counter() - t - pub.write_seconds, 1)  # DuckDB: history, pairs, top-K
    times["covisit_publish_s"] = pub.write_seconds  # packing + writing the rows to Redis
    times["covisit_items"] = pub.items
    times["covisit_pairs"] = stats.pairs
    _step(f"co-visitation: {stats.events:,} user-items, {stats.pairs:,} pairs, {pub.items:,} items published "
          f"({times['covisit_build_s']} s DuckDB, {pub.write_seconds} s writing to Redis)")
    t = time.perf_counter()
    boot = TrendingStore.from_config(redis, config, NAMESPACE, categories).bootstrap(paths.events, as_of=end_ms)
    times["trending_bootstrap_s"] = round(time.perf_counter() - t, 1)
    _step(f"trending: {boot.items:,} items, {boot.categories} categories from {boot.events:,} events")
    t = time.perf_counter()
    n_fresh = FreshIndex.from_config(redis, config, NAMESPACE, categories).bootstrap(
        pq.read_table(paths.items, columns=["item_id", "published_ts"]), end_ms)
    times["fresh_bootstrap_s"] = round(time.perf_counter() - t, 1)
    times["fresh_items"] = n_fresh
    _step(f"fresh: {n_fresh:,} items published in the last {config.recall.fresh_max_age_hours:g} h")
    return times


def _embedding_artifact(config: Config, paths: Any, quick: bool) -> tuple[str, dict[str, Any]]:
    """An embedding artifact for this catalogue, served by the real stack (ItemIndex, QueryEncoder, LiveIndex).

    A trained tower for the whole catalogue is out of reach of this benchmark's
    budget, so the vectors come from the generator's own latent space: item
    vectors are the items' latent vectors lifted to ``recall.embedding_dim``
    by a fixed random orthonormal map, and the query tower is the mean of the
    recent items' vectors (one identity layer). Serving cost -- encoding,
    an index of ``recall.index_kind`` over every item at that dimension,
    k = the channel's ask -- is that of a trained model of the same size.
    """
    import tempfile

    import pyarrow.parquet as pq

    from recall.artifacts import write_artifact
    from recall.embedding.query import QueryEncoder
    from recall.embedding.spec import tower_spec
    from recall.index import IndexParams, ItemIndex

    t0 = time.perf_counter()
    items = pq.read_table(paths.items, columns=["item_id", "latent"])
    ids = items["item_id"].to_numpy().astype(np.int64)
    lat = np.asarray(items["latent"].combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(ids.size, -1)
    dim = int(config.recall.embedding_dim)
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, lat.shape[1])))  # (dim, latent) orthonormal columns
    vectors = np.ascontiguousarray(lat @ basis.T.astype(np.float32))
    order = np.argsort(ids)
    ids, vectors = ids[order], vectors[order]
    params = IndexParams.from_config(config.recall)
    index = ItemIndex.build(vectors, ids, params)
    spec = tower_spec("synthetic")
    feat_dim = 4
    table = np.vstack([np.zeros((1, dim), np.float32), vectors])
    w = np.zeros((dim + feat_dim * len(spec.user_features), dim), np.float32)
    w[:dim, :dim] = np.eye(dim, dtype=np.float32)
    encoder = QueryEncoder(spec, buckets=64, history_len=int(config.recall.recent_items), normalize=False, item_ids=ids,
                           item_table=table, position_logits=np.zeros(int(config.recall.recent_items), np.float32),
                           user_table=np.zeros((64 * len(spec.user_features), feat_dim), np.float32),
                           layers=[(w, np.zeros(dim, np.float32))])
    root = Path(tempfile.mkdtemp(prefix="bench-recall-svc-emb-"))
    write_artifact(root, index, encoder, build={"source": "synthetic generator latents (latency benchmark)"})
    info = {"embedding_index": f"{index.kind} {len(index):,} x {dim}", "embedding_index_build_s": round(time.perf_counter() - t0, 1)}
    _step(f"embedding artifact: {info['embedding_index']} ({info['embedding_index_build_s']} s)")
    return str(root), info


# ----------------------------------------------------------------------------- load


async def _drive(address: str, users: list[int], end_ms: int, n: int, concurrency: int, seed: int) -> dict[str, Any]:
    import grpc.aio

    from proto.cascade.v1 import common_pb2, recall_pb2, recall_pb2_grpc

    rng = np.random.default_rng(seed)
    picks = rng.choice(np.asarray(users), size=n)
    lat = np.empty(n)
    degraded = 0
    statuses: Counter[tuple[str, int]] = Counter()
    chan_lat: dict[str, list[float]] = {}
    sizes = np.empty(n, dtype=np.int64)
    failed: Counter[str] = Counter()
    ctx = common_pb2.RequestContext(timestamp_ms=end_ms, surface="home_feed")
    async with grpc.aio.insecure_channel(address) as ch:
        stub = recall_pb2_grpc.RecallServiceStub(ch)
        nxt = 0

        async def worker() -> None:
            nonlocal nxt, degraded
            while nxt < n:
                i = nxt
                nxt += 1
                req = recall_pb2.RecallRequest(user_id=str(picks[i]), count=1000, context=ctx)
                t0 = time.perf_counter()
                try:
                    resp = await stub.Recall(req, timeout=2.0)
                except grpc.aio.AioRpcError as exc:
                    lat[i] = time.perf_counter() - t0
                    failed[exc.code().name] += 1
                    sizes[i] = 0
                    continue
                lat[i] = time.perf_counter() - t0
                sizes[i] = len(resp.candidates)
                degraded += resp.degraded
                for s in resp.channel_stats:
                    statuses[(s.channel, s.status)] += 1
                    if s.status in (1, 2):
                        chan_lat.setdefault(s.channel, []).append(s.latency_ms / 1000.0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    from proto.cascade.v1 import recall_pb2 as rp

    return {
        "latency": lat, "wall": wall, "degraded": degraded / n, "sizes": sizes, "failed": dict(failed),
        "timeouts": {c: round(statuses[(c, rp.CHANNEL_STATUS_TIMEOUT)] / n, 4) for c, _ in statuses},
        "skipped": {c: round(statuses[(c, rp.CHANNEL_STATUS_SKIPPED)] / n, 4) for c, _ in statuses},
        "errors": {c: round(statuses[(c, rp.CHANNEL_STATUS_ERROR)] / n, 4) for c, _ in statuses},
        "channel_ms": {c: {k: round(v, 2) for k, v in percentiles(x).items() if k in ("p50_ms", "p99_ms")}
                       for c, x in chan_lat.items()},
    }


def run(quick: bool, config: Config) -> dict[str, Any]:
    from featurestore.data.synthetic import SyntheticSpec, generate
    from featurestore.online import OnlineStore
    from featurestore.repository import get_repo
    from stack import Stack
    from stack.clients import redis_client

    spec = (SyntheticSpec(n_users=100_000, n_items=100_000, n_events=1_000_000) if quick
            else SyntheticSpec(n_users=1_000_000, n_items=1_000_000, n_events=10_000_000))
    t = time.perf_counter()
    paths = generate(spec, progress=False, activate_it=False)
    gen_s = round(time.perf_counter() - t, 1)
    end_ms = spec.end_us // 1000
    _step(f"catalogue {spec.tag}: {paths.n_items:,} items, {paths.n_events:,} events ({gen_s} s)")
    n_calls, warmup = (300, 50) if quick else (3000, 300)
    out: dict[str, Any] = {"catalogue_items": paths.n_items, "events": paths.n_events, "count": 1000}
    with Stack(config, kafka=False) as stack:
        redis = redis_client(stack.redis_url, config.redis)
        try:
            out.update(_build(config, redis, paths, end_ms, quick))
            repo = get_repo()
            users, feat_s = _sample_features(paths, OnlineStore(redis, NAMESPACE), repo, end_ms,
                                             SAMPLE_USERS if not quick else 500)
            out["sampled_users"] = len(users)
            _step(f"online features of {len(users)} users written ({feat_s:.1f} s)")
            out["redis_used_memory_mb"] = round(redis.info("memory")["used_memory"] / 2**20, 1)
        finally:
            redis.close()
        emb_root, emb_info = _embedding_artifact(config, paths, quick)
        out.update(emb_info)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_server_main, args=(stack.redis_url, str(paths.items), child, emb_root), daemon=True)
        proc.start()
        try:
            if not parent.poll(600):
                raise RuntimeError("the RecallService process did not start")
            port = parent.recv()
            address = f"{config.grpc.host}:{port}"
            _step(f"RecallService (pid {proc.pid}) on {address}; warm-up {warmup} calls")
            asyncio.run(_drive(address, users, end_ms, warmup, 1, seed=1))
            seq = asyncio.run(_drive(address, users, end_ms, n_calls, 1, seed=2))
            _step(f"sequential: {percentiles(seq['latency'])}")
            par = asyncio.run(_drive(address, users, end_ms, n_calls, 4, seed=3))
            _step(f"4 in flight: {percentiles(par['latency'])}")
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    out.update({k: round(v, 3) for k, v in percentiles(seq["latency"]).items()})
    out.update({
        "calls": n_calls,
        "calls_per_s_sequential": round(rate(n_calls, seq["wall"]), 1),
        "candidates_mean": round(float(seq["sizes"].mean()), 1),
        "degraded_share": round(seq["degraded"], 4),
        "failed_calls": seq["failed"],
        "channel_timeout_share": seq["timeouts"],
        "channel_skipped_share": seq["skipped"],
        "channel_error_share": seq["errors"],
        "channel_latency_ms": seq["channel_ms"],
        "in_flight_4": {**{k: round(v, 3) for k, v in percentiles(par["latency"]).items() if k in ("p50_ms", "p99_ms")},
                        "calls_per_s": round(rate(n_calls, par["wall"]), 1), "degraded_share": round(par["degraded"], 4)},
        "goal_p99_ms": 10.0,
        "catalogue_generate_s": gen_s,
    })
    return out
