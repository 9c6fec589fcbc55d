"""RankingService end to end: a 1,000-candidate Rank over gRPC, and throughput with the dynamic batcher on vs off.

Set-up (real everything): the MovieLens offline store (loaded if absent) is
materialized into a fresh namespace of the embedded Redis; the model is the
newest artifact of ``ranking.model`` on ``ranking.feature_set`` with the
configured backend found under the artifacts dir (or, failing that, one trained
for one epoch on 20k ratings with :func:`ranking.train.train` and cached under
``<artifacts_dir>/bench/rank_service/``: training quality does not change the
cost of scoring); it is published into a temporary model registry. The server
runs in its own process (``bench/_rank_service_server.py``) so the load
generator does not share its GIL.

Measured:

* ``rank_p50_ms`` / ``rank_p99_ms`` -- one client, sequential calls, each a
  random user and 1,000 random distinct MovieLens items: validation, the
  batched feature read, encoding, the batcher, the model, the response, the
  gRPC round trip, with the default configuration (``ranking.deadline_ms``:
  a late model is answered with the fallback, counted in
  ``rank_fallback_share``); ``rank_model_p50_ms`` / ``rank_model_p99_ms``: the
  same calls with a 1 s model deadline (every answer is the model's);
* ``thr_on_rps`` / ``thr_off_rps`` -- 16 concurrent clients (closed loop)
  against a server with batching on and one with it off (each request scored
  alone), both with a 1 s model deadline, both running all along and loaded
  in alternating slices (ABBA), so the machine's drifting other load biases
  neither; ``batching_gain`` = on / off;
  latency percentiles under that load; the same with 100-candidate requests
  (``thr_100_*``, ``batching_gain_100``), where per-call overhead weighs more;
* ``server_*_mean_ms`` -- where the server spent a sequential call (its own
  Prometheus histograms, over the measured calls): ``server`` (the whole
  handler), ``features`` (the batched read), ``encode``, ``queue`` (waiting in
  the batcher), ``inference`` (the model call);
* the parts of one request measured in-process, for reading the totals:
  ``read_1000_p50_ms`` (the feature read), ``encode_1000_p50_ms``,
  ``score_1000_p50_ms`` (the scorer on 1,000 rows), and
  ``read_1000_live_windows_p50_ms``: the read when every user and item has
  every ring slot live (the worst case), all without the shared-entity cache;
* ``cache_*`` -- the shared-entity cache (``featurestore.shared_cache``, on by
  default for ranking) on vs off, every request sent to both servers in turn.

The rows served are MovieLens shifted so that its last rating was a minute
before the run (the 1997-98 timestamps as they are would leave every window
view empty, and an empty window costs a fraction of a live one to read).

Goal: ``rank_p99_ms`` <= 15 on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import step
from bench.stats import percentiles, rate
from cascade.config import REPO_ROOT, Config

CANDIDATES = 1000
CLIENTS = 16
SMALL = 100  # candidates of the small-request throughput run, where per-call overhead weighs more
GOAL_P99_MS = 15.0


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(warmup=40, latency_requests=300, slice_s=1.0, rounds=4, parts=40)
    return dict(warmup=100, latency_requests=2000, slice_s=2.0, rounds=10, parts=200)


# ---------------------------------------------------------------- set-up


def _offline_ready(config: Config) -> None:
    ratings = config.offline_root / "movielens" / "ratings.parquet"
    if not ratings.exists():
        from featurestore.data.movielens import load_movielens

        step("loading MovieLens-100K into the offline store")
        load_movielens(config.offline_root)


def _live_data(config: Config, root: Path) -> Config:
    """A config whose offline store (under `root`) holds MovieLens shifted so its last rating is a minute ago.

    The served rows must carry live window state (user_activity, item_popularity): a read of
    empty windows costs a fraction of a live one, so the 1997-98 timestamps would flatter the service.
    """
    from datetime import timedelta

    from featurestore.data.movielens import load_movielens

    live = config.model_copy(update={"paths": config.paths.model_copy(update={"data_dir": root})})
    end_at = datetime.now(timezone.utc) - timedelta(minutes=1)
    step(f"loading MovieLens-100K shifted so its last rating is at {end_at:%Y-%m-%d %H:%M} UTC (live windows)")
    load_movielens(live.offline_root, end_at=end_at)
    return live


def _materialize(config: Config, client: Any, project: str, feature_set: str) -> Any:
    from featurestore.materialize import materialize
    from featurestore.offline import OfflineStore
    from featurestore.online import OnlineStore
    from featurestore.repository import get_repo

    repo = get_repo(config.features.definitions)
    resolved = repo.resolve(feature_set)
    store = OnlineStore(client, project, config.features.online_batch_keys)
    with OfflineStore.from_config(config) as off:
        report = materialize(off, store, [v for v in resolved.views if getattr(v, "online", False)], None,
                             datetime.now(timezone.utc), progress=False)
    step(f"materialized {report.rows_written:,} rows of {feature_set} into project {project!r}")
    return store


def _find_artifact(config: Config, fingerprint: str) -> Path | None:
    from ranking.artifact import ArtifactError, verify_artifact

    r = config.ranking
    roots = [config.paths.artifacts_dir / r.artifacts_subdir / r.model, config.paths.artifacts_dir / "bench" / "rank_service"]
    best: tuple[str, Path] | None = None
    for root in roots:
        if not root.is_dir():
            continue
        for d in root.iterdir():
            if not (d / "manifest.json").is_file():
                continue
            try:
                m = verify_artifact(d)
            except ArtifactError:
                continue
            if m.kind == r.model and m.feature_set_name == r.feature_set and m.feature_set_fingerprint == fingerprint \
                    and r.backend in m.backends and (best is None or m.created_at > best[0]):
                best = (m.created_at, d)
    return best[1] if best else None


def _artifact(config: Config) -> Path:
    from featurestore.repository import get_repo

    fingerprint = get_repo(config.features.definitions).resolve(config.ranking.feature_set).fingerprint
    found = _find_artifact(config, fingerprint)
    if found is not None:
        step(f"model artifact: {found}")
        return found
    from ranking.train import train

    out = config.paths.artifacts_dir / "bench" / "rank_service" / f"{config.ranking.model}-{fingerprint[:12]}"
    step(f"no {config.ranking.model} artifact on {config.ranking.feature_set} with {config.ranking.backend}: "
         f"training one (1 epoch, 20k ratings) into {out}")
    if out.exists():
        shutil.rmtree(out)
    train(config.ranking.model, epochs=1, max_rows=20_000, out_dir=out, progress=False, config=config,
          export={"onnx": True, "int8": config.ranking.int8})
    return out


class _Server:
    """The ranking server subprocess."""

    def __init__(self, redis_url: str, project: str, registry: Path, batching: bool, deadline_ms: float | None,
                 env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "bench._rank_service_server", "--redis-url", redis_url, "--project", project,
               "--registry", str(registry), "--batching", "on" if batching else "off"]
        if deadline_ms is not None:
            cmd += ["--deadline-ms", str(deadline_ms)]
        env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, cwd=REPO_ROOT, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"ranking server did not start (exit {self.proc.poll()})")
        self.address = f"127.0.0.1:{line[1]}"
        self.version = line[3]
        self.backend = line[5]
        self.metrics_port = int(line[7])

    def stage_totals(self) -> dict[str, tuple[float, float]]:
        """``{stage: (seconds summed, count)}`` from the server's Prometheus endpoint."""
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        text = urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        wanted = {"cascade_ranking_stage_seconds": "stage", "cascade_ranking_queue_delay_seconds": "queue",
                  "cascade_ranking_inference_seconds": "inference", "cascade_grpc_request_seconds": "server"}
        out: dict[str, list[float]] = {}
        for fam in text_string_to_metric_families(text):
            kind = wanted.get(fam.name)
            if kind is None:
                continue
            for smp in fam.samples:
                if kind == "server" and smp.labels.get("method") != "Rank":
                    continue
                name = smp.labels.get("stage") if kind == "stage" else kind
                if smp.name.endswith("_sum"):
                    out.setdefault(name, [0.0, 0.0])[0] += smp.value
                elif smp.name.endswith("_count"):
                    out.setdefault(name, [0.0, 0.0])[1] += smp.value
        return {k: (v[0], v[1]) for k, v in out.items()}

    def counter(self, name: str, **labels: str) -> float:
        """A Prometheus counter's value (summed over samples matching `labels`) from the server's endpoint."""
        from urllib.request import urlopen

        from prometheus_client.parser import text_string_to_metric_families

        text = urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                    total += smp.value
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- load


def _requests(n: int, seed: int, candidates: int = CANDIDATES, users: int = 943, items: int = 1682) -> list[Any]:
    from proto.cascade.v1 import common_pb2, ranking_pb2

    rng = random.Random(seed)
    return [ranking_pb2.RankRequest(user_id=str(rng.randint(1, users)),
                                    item_ids=[str(i) for i in rng.sample(range(1, items + 1), candidates)],
                                    context=common_pb2.RequestContext(platform=common_pb2.PLATFORM_IOS))
            for _ in range(n)]


async def _sequential(address: str, reqs: list[Any], warmup: int) -> tuple[list[float], int, set[str]]:
    """Latencies of sequential calls after `warmup` ones, how many were answered by a fallback, the versions seen."""
    import grpc.aio

    from proto.cascade.v1 import common_pb2, ranking_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        for r in reqs[:warmup]:
            await stub.Rank(r, timeout=10)
        lat: list[float] = []
        fallback = 0
        versions: set[str] = set()
        for r in reqs[warmup:]:
            t = time.perf_counter()
            resp = await stub.Rank(r, timeout=10)
            lat.append(time.perf_counter() - t)
            fallback += resp.model_version.kind == common_pb2.MODEL_KIND_HEURISTIC
            versions.add(resp.model_version.version)
            assert len(resp.scores) == len(r.item_ids)
    return lat, fallback, versions


async def _alternating(addresses: dict[str, str], reqs: list[Any], warmup: int) -> dict[str, list[float]]:
    """Sequential calls, each request sent to every server in turn (rotating which goes first): latencies per server."""
    import grpc.aio

    from proto.cascade.v1 import ranking_pb2_grpc

    channels = {m: grpc.aio.insecure_channel(a) for m, a in addresses.items()}
    try:
        stubs = {m: ranking_pb2_grpc.RankingServiceStub(c) for m, c in channels.items()}
        names = list(stubs)
        lat: dict[str, list[float]] = {m: [] for m in names}
        for i, r in enumerate(reqs):
            for m in names[i % len(names):] + names[: i % len(names)]:
                t = time.perf_counter()
                resp = await stubs[m].Rank(r, timeout=10)
                if i >= warmup:
                    lat[m].append(time.perf_counter() - t)
                assert len(resp.scores) == len(r.item_ids)
    finally:
        for c in channels.values():
            await c.close()
    return lat


async def _closed_loop(stub: Any, reqs: list[Any], duration_s: float, clients: int, out: dict[str, Any], offset: int) -> None:
    """`clients` concurrent callers for `duration_s` (closed loop); adds calls, latencies, fallbacks, errors to `out`."""
    import grpc.aio

    from proto.cascade.v1 import common_pb2

    stop_at = time.perf_counter() + duration_s

    async def client(k: int) -> None:
        i = offset + k
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                resp = await stub.Rank(reqs[i % len(reqs)], timeout=30)
            except grpc.aio.AioRpcError:
                out["errors"] += 1
                continue
            out["lat"].append(time.perf_counter() - t)
            out["fallback"] += resp.model_version.kind == common_pb2.MODEL_KIND_HEURISTIC
            i += clients

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    out["seconds"] += time.perf_counter() - t0


async def _interleaved(addresses: dict[str, str], loads: dict[int, list[Any]], slice_s: float, rounds: int,
                       clients: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Throughput of each server and request size, measured in alternating slices (ABBA order).

    Both servers run all along, only one gets traffic at a time: slow drifts of
    the machine's other load hit both alike instead of biasing whichever ran later.
    """
    import grpc.aio

    from proto.cascade.v1 import ranking_pb2_grpc

    channels = {m: grpc.aio.insecure_channel(a) for m, a in addresses.items()}
    try:
        stubs = {m: ranking_pb2_grpc.RankingServiceStub(c) for m, c in channels.items()}
        for m, stub in stubs.items():  # warm every connection path and the batcher
            for load in loads.values():
                await asyncio.gather(*(stub.Rank(r, timeout=30) for r in load[:clients]))
        res = {(m, size): {"lat": [], "fallback": 0, "errors": 0, "seconds": 0.0} for m in stubs for size in loads}
        modes = list(stubs)
        for r in range(rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            for size, load in loads.items():
                for m in order:
                    await _closed_loop(stubs[m], load, slice_s, clients, res[(m, size)], offset=r * clients)
    finally:
        for c in channels.values():
            await c.close()
    for v in res.values():
        v["rps"] = rate(len(v["lat"]), v["seconds"])
    return res


CACHE_TTL_MS = 1000.0  # the longest features.online_cache_ttl_ms allows


def _cache_phase(redis_url: str, project: str, registry: Path, reqs: list[Any], warmup: int) -> dict[str, Any]:
    """The shared-entity cache (featurestore.shared_cache) on vs off: two servers, every request to both in turn.

    The cache server sees every request of the sequential stream (candidates drawn as everywhere in this
    bench: 1,000 of MovieLens' 1,682 items, uniformly), so its hit rate is the one this traffic gives.
    """
    servers = {"off": _Server(redis_url, project, registry, batching=True, deadline_ms=1000.0,
                              env={"CASCADE__FEATURES__ONLINE_CACHE_TTL_MS": "0"}),
               "on": _Server(redis_url, project, registry, batching=True, deadline_ms=1000.0,
                             env={"CASCADE__FEATURES__ONLINE_CACHE_TTL_MS": str(CACHE_TTL_MS)})}
    try:
        step(f"shared-entity cache ({CACHE_TTL_MS:g} ms) on vs off: {len(reqs) - warmup} requests to both servers in turn")
        before = {m: srv.stage_totals() for m, srv in servers.items()}
        lat = asyncio.run(_alternating({m: srv.address for m, srv in servers.items()}, reqs, warmup))
        after = {m: srv.stage_totals() for m, srv in servers.items()}
        hits = servers["on"].counter("cascade_feature_shared_cache_lookups_total", result="hit")
        misses = servers["on"].counter("cascade_feature_shared_cache_lookups_total", result="miss")
    finally:
        for srv in servers.values():
            srv.stop()
    out: dict[str, Any] = {"cache_ttl_ms": CACHE_TTL_MS, "cache_hit_rate": hits / (hits + misses) if hits + misses else None}
    for m in servers:
        p = percentiles(lat[m])
        s1, c1 = after[m].get("features", (0.0, 0.0))
        s0, c0 = before[m].get("features", (0.0, 0.0))
        out.update({f"cache_{m}_p50_ms": p["p50_ms"], f"cache_{m}_p99_ms": p["p99_ms"], f"cache_{m}_mean_ms": p["mean_ms"],
                    f"cache_{m}_features_mean_ms": (s1 - s0) / (c1 - c0) * 1e3 if c1 > c0 else None})
    step(f"cache on: p50 {out['cache_on_p50_ms']:.2f} / p99 {out['cache_on_p99_ms']:.2f} ms (features "
         f"{out['cache_on_features_mean_ms']:.2f} ms, hit rate {out['cache_hit_rate']:.3f}); off: p50 "
         f"{out['cache_off_p50_ms']:.2f} / p99 {out['cache_off_p99_ms']:.2f} ms (features {out['cache_off_features_mean_ms']:.2f} ms)")
    return out


def _parts(config: Config, store: Any, artifact: Path, n: int) -> dict[str, float]:
    """The feature read, encoding and scoring of 1,000 candidates, in this process."""
    from featurestore.client import FeatureClient
    from featurestore.repository import get_repo
    from ranking.live import default_loader
    from ranking.registry import VersionRecord

    repo = get_repo(config.features.definitions)
    client = FeatureClient(store, repo, feature_set_versions={})
    scorer = default_loader(config)(artifact, VersionRecord(config.ranking.model, "bench", config.ranking.model, "registered"))
    scorer.warmup((CANDIDATES,))
    rng = random.Random(7)
    t_read, t_enc, t_score = [], [], []
    for _ in range(n):
        user = str(rng.randint(1, 943))
        items = [str(i) for i in rng.sample(range(1, 1683), CANDIDATES)]
        t = time.perf_counter()
        feats = client.get_online_features(None, {"user_id": [user] * CANDIDATES, "item_id": items},
                                           config.ranking.feature_set, {})
        t1 = time.perf_counter()
        enc = scorer.encode(feats)
        t2 = time.perf_counter()
        scorer.score_encoded(enc)
        t3 = time.perf_counter()
        t_read.append(t1 - t)
        t_enc.append(t2 - t1)
        t_score.append(t3 - t2)
    return {"read_1000_p50_ms": float(np.median(t_read) * 1e3), "encode_1000_p50_ms": float(np.median(t_enc) * 1e3),
            "score_1000_p50_ms": float(np.median(t_score) * 1e3)}


def _live_windows_read(config: Config, client: Any, n: int) -> dict[str, float]:
    """The feature read of `_parts` when every user and item has full window state.

    MovieLens' ratings are from 1997-98, so as of now the window views (user_activity,
    item_popularity) hold no state and the service's window reads return nothing. Here a separate
    project gets the same rows plus every ring slot of every user and item live (2,720 bytes of
    rings per entity: what a live catalogue costs), and the read is timed alone.
    """
    from featurestore.client import FeatureClient
    from featurestore.repository import get_repo

    from bench.online_features import full_rings_table

    project = f"benchrankw{random.randrange(1 << 30):x}"
    store = _materialize(config, client, project, config.ranking.feature_set)
    repo = get_repo(config.features.definitions)
    now = datetime.now(timezone.utc)
    for view_name, key, count in (("item_popularity", "item_id", 1682), ("user_activity", "user_id", 943)):
        view = repo.view(view_name)
        store.write_tiles(view, full_rings_table(view, np.arange(1, count + 1), now, key=key))
    fc = FeatureClient(store, repo, feature_set_versions={})
    rng = random.Random(8)
    lat = []
    for i in range(n + 10):
        user = str(rng.randint(1, 943))
        items = [str(x) for x in rng.sample(range(1, 1683), CANDIDATES)]
        t = time.perf_counter()
        feats = fc.get_online_features(None, {"user_id": [user] * CANDIDATES, "item_id": items}, config.ranking.feature_set, {})
        if i >= 10:
            lat.append(time.perf_counter() - t)
    assert (feats.status[:, [j for j, r in enumerate(feats.refs) if r.startswith("item_popularity:")]] != 3).all()
    return {"read_1000_live_windows_p50_ms": float(np.median(lat) * 1e3)}


# ---------------------------------------------------------------- the benchmark


def run(quick: bool, config: Config) -> dict[str, Any]:
    from ranking.registry import ModelRegistry
    from stack import Stack
    from stack.clients import redis_client

    plan = _plan(quick)
    _offline_ready(config)
    artifact = _artifact(config)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rank-", dir=config.paths.var_dir))
    try:
        with Stack(config, kafka=False) as stack:
            client = redis_client(stack.redis_url, config.redis)
            project = f"benchrank{random.randrange(1 << 30):x}"
            store = _materialize(_live_data(config, tmp / "data"), client, project, config.ranking.feature_set)
            from featurestore.repository import get_repo

            registry = ModelRegistry(tmp / "models", repo=get_repo(config.features.definitions), default_model=config.ranking.model)
            version = registry.publish(artifact, auto_promote=True)
            step(f"published {config.ranking.model}/{version} into {registry.root}")
            parts = _parts(config, store, artifact, plan["parts"])
            parts.update(_live_windows_read(config, client, plan["parts"]))
            step("in-process parts of one request: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))

            reqs = _requests(plan["warmup"] + plan["latency_requests"], seed=1)
            server = _Server(stack.redis_url, project, registry.root, batching=True, deadline_ms=None)
            served_backend = server.backend
            try:
                step(f"latency: {plan['latency_requests']} sequential Rank calls of {CANDIDATES} candidates "
                     f"({server.version} on {server.backend}, default config: deadline {config.ranking.deadline_ms:g} ms)")
                before = server.stage_totals()
                lat, fallback, versions = asyncio.run(_sequential(server.address, reqs, plan["warmup"]))
                after = server.stage_totals()
            finally:
                server.stop()
            # server-side mean per call of each stage over the measured calls (warm-up excluded by the difference)
            stages = {}
            for name in ("server", "features", "encode", "queue", "inference"):
                s1, c1 = after.get(name, (0.0, 0.0))
                s0, c0 = before.get(name, (0.0, 0.0))
                if c1 > c0:
                    stages[f"server_{name}_mean_ms"] = (s1 - s0) / (c1 - c0) * 1e3
            step("server-side means per call: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
            latency = percentiles(lat, "rank_")
            step(f"latency p50 {latency['rank_p50_ms']:.2f} ms, p99 {latency['rank_p99_ms']:.2f} ms, "
                 f"{fallback} of {len(lat)} answered by the fallback")

            cache = _cache_phase(stack.redis_url, project, registry.root, reqs, plan["warmup"])

            loads = {CANDIDATES: _requests(400, seed=2), SMALL: _requests(400, seed=3, candidates=SMALL)}
            servers = {"on": _Server(stack.redis_url, project, registry.root, batching=True, deadline_ms=1000.0),
                       "off": _Server(stack.redis_url, project, registry.root, batching=False, deadline_ms=1000.0)}
            try:
                step(f"latency with a 1 s model deadline (every answer the model's): {plan['latency_requests']} sequential calls")
                mlat, mfb, _ = asyncio.run(_sequential(servers["on"].address, reqs, plan["warmup"]))
                model_latency = percentiles(mlat, "rank_model_")
                model_latency["rank_model_fallback"] = mfb
                step(f"model latency p50 {model_latency['rank_model_p50_ms']:.2f} ms, p99 {model_latency['rank_model_p99_ms']:.2f} ms")
                step(f"throughput: {CLIENTS} concurrent clients, batching on vs off in alternating "
                     f"{plan['slice_s']:g} s slices, {plan['rounds']} rounds, {CANDIDATES} and {SMALL} candidates")
                thr = asyncio.run(_interleaved({m: srv.address for m, srv in servers.items()}, loads, plan["slice_s"],
                                               plan["rounds"], CLIENTS))
            finally:
                for srv in servers.values():
                    srv.stop()
            for (mode, size), t in thr.items():
                pc = percentiles(t["lat"])
                step(f"batching {mode}, {size} candidates: {t['rps']:.1f} req/s ({t['rps'] * size:,.0f} candidates/s), "
                     f"p50 {pc['p50_ms']:.1f} ms, p99 {pc['p99_ms']:.1f} ms, {t['fallback']} fallback, {t['errors']} errors")
            client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out_thr: dict[str, Any] = {}
    for size, tag in ((CANDIDATES, ""), (SMALL, f"_{SMALL}")):
        on, off = thr[("on", size)], thr[("off", size)]
        pon, poff = percentiles(on["lat"]), percentiles(off["lat"])
        out_thr.update({
            f"thr{tag}_on_rps": on["rps"], f"thr{tag}_off_rps": off["rps"],
            f"batching_gain{tag}": on["rps"] / off["rps"] if off["rps"] else None,
            f"thr{tag}_on_candidates_per_s": on["rps"] * size, f"thr{tag}_off_candidates_per_s": off["rps"] * size,
            f"thr{tag}_on_p50_ms": pon["p50_ms"], f"thr{tag}_on_p99_ms": pon["p99_ms"],
            f"thr{tag}_off_p50_ms": poff["p50_ms"], f"thr{tag}_off_p99_ms": poff["p99_ms"],
            f"thr{tag}_fallback": on["fallback"] + off["fallback"], f"thr{tag}_errors": on["errors"] + off["errors"],
        })
    manifest = json.loads((artifact / "manifest.json").read_text())
    return {
        "candidates": CANDIDATES,
        **{k: latency[k] for k in ("rank_p50_ms", "rank_p90_ms", "rank_p99_ms", "rank_mean_ms")},
        "rank_requests": len(lat),
        "rank_fallback_share": fallback / max(1, len(lat)),
        **stages,
        "goal_p99_ms": GOAL_P99_MS,
        "meets_goal": latency["rank_p99_ms"] <= GOAL_P99_MS,
        **{k: model_latency[k] for k in ("rank_model_p50_ms", "rank_model_p99_ms", "rank_model_fallback")},
        **cache,
        "clients": CLIENTS,
        **out_thr,
        **parts,
        "model": f"{manifest['name']}/{manifest['version']}",
        "model_kind": manifest["kind"],
        "feature_set": manifest["feature_set"]["name"],
        "backend": served_backend,  # what the server loaded (ranking.backends.serving_backend), not just the configured name
        "threads": config.ranking.threads,
        "versions_served": sorted(versions),
        "method": (f"One client: sequential Rank calls over gRPC (loopback, server in its own process) of {CANDIDATES} "
                   "random MovieLens items for a random user, after warm-up; default ranking config (rank_*), then "
                   "with a 1 s model deadline (rank_model_*). Throughput: "
                   f"{CLIENTS} concurrent grpc.aio clients for a fixed duration with {CANDIDATES} and {SMALL} candidates, "
                   "model deadline 1 s, one server with batching on and one with it off, loaded in alternating slices. Parts: the same steps in-process "
                   "(medians)."),
    }
