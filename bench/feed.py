"""FeedService.GetFeed end to end on the 1M-item synthetic catalogue: latency per stage and the highest rate within p99 <= 50 ms.

Set-up (real everything, :func:`feed.synthetic.prepare_synthetic`; ``--quick``
uses a 20k-user, 20k-item, 200k-event catalogue):

1. the synthetic catalogue (1M users, 1M items, 10M clicks over 30 days;
   reused when already generated, not activated);
2. an embedded valkey + Tansu (``Stack``); in one namespace: item profiles
   and click counts materialized for every item, the online features of 2,000
   sampled active users (all users in --quick), co-visitation, trending and
   fresh sets per category;
3. recall's embedding index over every item (``recall.index_kind``) with the
   generator's latent vectors as item vectors (training towers on 10M events is
   out of this benchmark's budget; serving cost is that of a trained model of
   the same size);
4. a DeepFM of the configured size on ``deepfm_synthetic`` (trained one epoch
   on sampled clicks vs. unclicked items, exported for ``ranking.backend``)
   published live in a temporary registry;
5. the FeedService (``build_feed_server``, in-process stages: recall with
   embedding, item2item, popular, fresh; ranking; rerank with
   config/rerank.toml) in a **separate process**, logging impressions and
   served features to Kafka like production.

Every GetFeed asks for 10 items; recall returns ``feed.candidates`` = 1,000
candidates, all scored by the DeepFM, then reranked. Requests carry the end
of the log as their time and a deadline of ``feed.deadline_ms`` (the gateway
slices it over the stages and degrades rather than fails).

Measured:

* ``feed_p50_ms`` / ``feed_p99_ms``: sequential calls over gRPC (client
  side), after a warm-up; ``degraded_share`` of those responses;
* ``stage_<name>_p50_ms`` / ``_p99_ms``: the gateway's own ``StageTimings``
  of the same calls (recall, features, ranking, rerank, total: server side);
* ``max_rate_rps``: the highest open-loop rate (``loadtest.find_max_rate``,
  uniform arrivals, latency from each request's due time) at which p99 <=
  50 ms with no errors; ``at_goal_rate_*``: the step at 50 req/s;
* ``grpc_feed_p50_ms`` / ``grpc_feed_p99_ms`` / ``grpc_stage_*``: the
  sequential calls again with ``feed.stage_transport = 'grpc'``, recall,
  ranking and rerank each in its own process (no shared GIL, a gRPC hop each);
* ``deadline_rate_rps``: the same search for p99 within the deadline itself
  (``feed.deadline_ms``; client timeout twice that, at most 1 % errors): the
  rate the gateway sustains while answering in time, degraded or not.

Goal: p99 <= 50 ms at >= 50 requests/s on this machine.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cascade.config import Config

COUNT = 10
CANDIDATES = 1000
GOAL_P99_MS = 50.0
GOAL_RATE = 50.0


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(spec=dict(n_users=20_000, n_items=20_000, n_events=200_000), sample_users=None, train_rows=10_000,
                    warmup=30, sequential=200, start_rate=12.5, max_rate=200.0, refine=1, step_s=3.0, step_warmup_s=1.0)
    return dict(spec=dict(n_users=1_000_000, n_items=1_000_000, n_events=10_000_000), sample_users=2000,
                train_rows=60_000, warmup=100, sequential=1000, start_rate=12.5, max_rate=400.0, refine=2, step_s=8.0,
                step_warmup_s=2.0)


@dataclass(frozen=True)
class BenchRequests:
    """The load generator's request factory (picklable by reference): uniform users, the log's end as request time."""

    user_ids: tuple[str, ...]
    timestamp_ms: int
    count: int = COUNT
    surface: str = "home_feed"

    def __call__(self, rng: np.random.Generator) -> Any:
        from proto.cascade.v1 import common_pb2, feed_pb2

        return feed_pb2.GetFeedRequest(
            user_id=self.user_ids[int(rng.integers(0, len(self.user_ids)))], count=self.count,
            context=common_pb2.RequestContext(timestamp_ms=self.timestamp_ms, surface=self.surface,
                                              platform=common_pb2.PLATFORM_IOS))


# ----------------------------------------------------------------------------- the server process


def _stage_main(stage: str, config_json: str, redis_url: str, kafka: str, conn: Any) -> None:
    """Child process: one stage's gRPC server (as the feed builds it in process) on a free port until "stop"."""
    from cascade.config import Config
    from feed.service import build_inprocess_stages

    config = Config.model_validate(json.loads(config_json))

    async def main() -> None:
        servers, closers = build_inprocess_stages(config, redis_url, kafka, check_registry=False, only=(stage,))
        server = servers[stage]
        conn.send(await server.start())
        while await asyncio.to_thread(conn.recv) == "timings":
            conn.send(([], [], {}, {}))
        await server.stop(2.0)
        for close in closers:
            await close()
        conn.send("stopped")

    asyncio.run(main())


def _server_main(config_json: str, redis_url: str, kafka: str, conn: Any) -> None:
    """Child process: the FeedService on a free port; answers "timings" (StageTimings since last asked) and "stop"."""
    from cascade.config import Config
    from feed.service import build_feed_server

    config = Config.model_validate(json.loads(config_json))
    timings: list[dict[str, float]] = []
    degraded: list[bool] = []
    reasons: dict[str, int] = {}

    async def main() -> None:
        server = build_feed_server(config, redis_url, kafka, check_registry=False, port=0)
        port = await server.start()
        gateway = server.gateway
        serve = gateway.get_feed

        async def recording(request: Any) -> Any:
            result = await serve(request)
            timings.append(result.timings.as_dict())
            degraded.append(result.response.degraded)
            for r in result.response.degraded_reasons:
                key = f"{r.stage}:{r.code}:{r.component}"
                reasons[key] = reasons.get(key, 0) + 1
            return result

        gateway.get_feed = recording  # type: ignore[method-assign]
        conn.send(port)
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd == "timings":
                conn.send((list(timings), list(degraded), dict(gateway.background.stats), dict(reasons)))
                timings.clear()
                degraded.clear()
                reasons.clear()
            else:
                break
        await server.stop(2.0)
        conn.send("stopped")

    asyncio.run(main())


class _Server:
    def __init__(self, config: Config, redis_url: str, kafka: str, stage: str | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (config.model_dump_json(), redis_url, kafka, child)
        self.proc = ctx.Process(target=_server_main if stage is None else _stage_main,
                                args=args if stage is None else (stage, *args), daemon=True)
        self.proc.start()
        if not self.conn.poll(600):
            self.stop()
            raise RuntimeError("feed server did not start within 600 s")
        self.address = f"{config.grpc.host}:{self.conn.recv()}"

    def timings(self) -> tuple[list[dict[str, float]], list[bool], dict[str, int], dict[str, int]]:
        self.conn.send("timings")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send("stop")
                if self.conn.poll(30):
                    self.conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(10)


# ----------------------------------------------------------------------------- load


async def _sequential(address: str, factory: BenchRequests, n: int, warmup: int, timeout_s: float) -> dict[str, Any]:
    import grpc.aio

    from proto.cascade.v1 import feed_pb2_grpc

    rng = np.random.default_rng(1)
    lat: list[float] = []
    errors: dict[str, int] = {}
    items = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = feed_pb2_grpc.FeedServiceStub(channel)
        for i in range(warmup + n):
            req = factory(rng)
            t = time.perf_counter()
            try:
                resp = await stub.GetFeed(req, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                continue
            if i >= warmup:
                lat.append(time.perf_counter() - t)
                items += len(resp.items)
    return {"lat": lat, "errors": errors, "items": items}


def _reason_names(counts: dict[str, int]) -> dict[str, int]:
    """``"stage:code:component"`` (enum numbers) -> readable names, e.g. ``"recall timeout popular"``."""
    from proto.cascade.v1 import common_pb2

    out: dict[str, int] = {}
    for key, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        stage, code, component = key.split(":", 2)
        name = " ".join(x for x in (common_pb2.Stage.Name(int(stage)).removeprefix("STAGE_").lower(),
                                    common_pb2.DegradationCode.Name(int(code)).removeprefix("DEGRADATION_CODE_").lower(),
                                    component) if x)
        out[name] = out.get(name, 0) + n
    return out


def _stage_percentiles(timings: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage in ("recall", "features", "ranking", "rerank", "fallback", "total"):
        vals = np.array([t[f"{stage}_ms"] for t in timings], dtype=np.float64)
        if vals.size and vals.max() > 0:
            out[f"stage_{stage}_p50_ms"] = round(float(np.percentile(vals, 50)), 3)
            out[f"stage_{stage}_p99_ms"] = round(float(np.percentile(vals, 99)), 3)
    return out


def _grpc_transport(cfg: Config, stack: Any, factory: BenchRequests, plan: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """The same sequential calls with ``stage_transport = 'grpc'``: each stage in its own process."""
    from bench.stats import percentiles

    stages: dict[str, _Server] = {}
    out: dict[str, Any] = {}
    try:
        for name in ("recall", "ranking", "rerank"):
            stages[name] = _Server(cfg, stack.redis_url, stack.kafka_bootstrap, stage=name)
        remote = cfg.model_copy(update={"feed": cfg.feed.model_copy(update={
            "stage_transport": "grpc", **{f"{n}_address": s.address for n, s in stages.items()}})})
        _step(f"gRPC transport: the same {plan['sequential']} sequential calls, recall, ranking and rerank each in its own process")
        server = _Server(remote, stack.redis_url, stack.kafka_bootstrap)
        try:
            server.timings()
            seq = asyncio.run(_sequential(server.address, factory, plan["sequential"], plan["warmup"], deadline_s))
            timings, degraded, _, _ = server.timings()
        finally:
            server.stop()
    finally:
        for s in stages.values():
            s.stop()
    timings, degraded = timings[plan["warmup"]:], degraded[plan["warmup"]:]
    if seq["lat"]:
        out.update({f"grpc_{k}": round(v, 3) for k, v in percentiles(seq["lat"], "feed_").items()})
    out["grpc_sequential_errors"] = seq["errors"]
    out["grpc_degraded_share"] = round(sum(degraded) / max(1, len(degraded)), 4)
    out.update({f"grpc_{k}": v for k, v in _stage_percentiles(timings).items() if k.endswith("p50_ms")})
    if seq["lat"]:
        _step(f"gRPC transport: p50 {out['grpc_feed_p50_ms']:.2f} ms, p99 {out['grpc_feed_p99_ms']:.2f} ms, "
              f"degraded {100 * out['grpc_degraded_share']:.1f}%")
    return out


# ----------------------------------------------------------------------------- the benchmark


def run(quick: bool, config: Config) -> dict[str, Any]:
    from bench.harness import baseline_figures, ratio
    from bench.stats import percentiles
    from featurestore.data.synthetic import SyntheticSpec
    from feed.synthetic import prepare_synthetic
    from loadtest import find_max_rate
    from stack import Stack

    plan = _plan(quick)
    spec = SyntheticSpec(**plan["spec"])
    work = Path(tempfile.mkdtemp(prefix="bench-feed-", dir=config.paths.var_dir))
    namespace = f"benchfeed{random.randrange(1 << 30):x}"
    out: dict[str, Any] = {"count": COUNT, "candidates": CANDIDATES}
    try:
        with Stack(config) as stack:
            t = time.perf_counter()
            setup = prepare_synthetic(config, stack.redis_url, spec, work_dir=work, namespace=namespace,
                                      dataset_root=config.offline_root, sample_users=plan["sample_users"],
                                      embedding="latent", train_rows=plan["train_rows"], epochs=1, progress=_step)
            out["setup_s"] = round(time.perf_counter() - t, 1)
            out.update({f"setup_{k}": v for k, v in setup.timings.items()})
            out["catalogue_items"] = setup.paths.n_items
            out["events"] = setup.paths.n_events
            out["model_auc"] = round(setup.metrics.get("auc", float("nan")), 4)
            cfg = setup.config.model_copy(update={"feed": setup.config.feed.model_copy(update={"candidates": CANDIDATES})})
            deadline_s = cfg.feed.deadline_ms / 1000.0
            users = setup.users if len(setup.users) <= 50_000 else random.Random(0).sample(setup.users, 50_000)
            factory = BenchRequests(tuple(str(u) for u in users), setup.end_ms)
            out.update(backend=cfg.ranking.backend, index_kind=cfg.recall.index_kind, deadline_ms=cfg.feed.deadline_ms,
                       users=len(users))
            _step(f"starting the FeedService process ({cfg.ranking.model} {setup.model_version} on {cfg.ranking.backend}, "
                  f"recall index {cfg.recall.index_kind})")
            server = _Server(cfg, stack.redis_url, stack.kafka_bootstrap)
            try:
                _step(f"latency: {plan['sequential']} sequential GetFeed calls (count {COUNT}, {CANDIDATES} candidates, "
                      f"deadline {cfg.feed.deadline_ms:g} ms) after {plan['warmup']} warm-up calls")
                server.timings()  # forget the warm-up pass
                seq = asyncio.run(_sequential(server.address, factory, plan["sequential"], plan["warmup"], deadline_s))
                timings, degraded, _, reasons = server.timings()
                timings, degraded = timings[plan["warmup"]:], degraded[plan["warmup"]:]
                out["degraded_reasons"] = _reason_names(reasons)
                if not seq["lat"]:
                    raise RuntimeError(f"no successful GetFeed call: {seq['errors']}")
                lat = percentiles(seq["lat"], "feed_")
                out.update({k: round(v, 3) for k, v in lat.items()})
                out["sequential_errors"] = seq["errors"]
                out["items_mean"] = round(seq["items"] / len(seq["lat"]), 2)
                out["degraded_share"] = round(sum(degraded) / max(1, len(degraded)), 4)
                out.update(_stage_percentiles(timings))
                _step(f"sequential: p50 {lat['feed_p50_ms']:.2f} ms, p99 {lat['feed_p99_ms']:.2f} ms, degraded "
                      f"{100 * out['degraded_share']:.1f}%; stages p50: "
                      + ", ".join(f"{s} {out.get(f'stage_{s}_p50_ms', 0):.2f}" for s in ("recall", "features", "ranking", "rerank", "total")))

                _step(f"open loop: highest rate with p99 <= {GOAL_P99_MS:g} ms (steps of {plan['step_s']:g} s from "
                      f"{plan['start_rate']:g} req/s, doubling, {plan['refine']} refinements)")
                result = find_max_rate(server.address, GOAL_P99_MS, start_rate=plan["start_rate"], growth=2.0,
                                       max_rate=plan["max_rate"], refine=plan["refine"], step_duration_s=plan["step_s"],
                                       warmup_s=plan["step_warmup_s"], factory=factory, timeout_s=deadline_s,
                                       config=cfg, progress=_step)
                _, _, bg, load_reasons = server.timings()
                out["load_degraded_reasons"] = _reason_names(load_reasons)
                _step(f"open loop: highest rate with p99 within the {cfg.feed.deadline_ms:g} ms deadline (capacity)")
                capacity = find_max_rate(server.address, cfg.feed.deadline_ms, start_rate=plan["start_rate"], growth=2.0,
                                         max_rate=plan["max_rate"], refine=1, step_duration_s=plan["step_s"],
                                         warmup_s=plan["step_warmup_s"], factory=factory, timeout_s=2 * deadline_s,
                                         max_error_rate=0.01, config=cfg, progress=_step)
                server.timings()
            finally:
                server.stop()
            grpc_transport = _grpc_transport(cfg, stack, factory, plan, deadline_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["max_rate_rps"] = result.best_rate
    out["max_rate_stopped"] = result.stopped
    best = result.best
    if best is not None:
        out.update(max_rate_p50_ms=best.latency.p50_ms, max_rate_p99_ms=best.latency.p99_ms,
                   max_rate_ok_qps=round(best.ok_qps, 2), max_rate_degraded_rate=best.degraded_rate)
    at_goal = next((s for s in result.steps if abs(s.rate - GOAL_RATE) < 1e-6), None)
    if at_goal is not None:
        out.update(at_goal_rate_p50_ms=at_goal.report.latency.p50_ms, at_goal_rate_p99_ms=at_goal.p99_ms,
                   at_goal_rate_passed=at_goal.passed, at_goal_rate_degraded_rate=at_goal.report.degraded_rate,
                   at_goal_rate_errors=at_goal.error_rate)
    out["steps"] = [{"rate": s.rate, "p99_ms": None if s.p99_ms is None else round(s.p99_ms, 2), "passed": s.passed,
                     "reason": s.reason} for s in result.steps]
    out.update(grpc_transport)
    out["deadline_rate_rps"] = capacity.best_rate
    cap = capacity.best
    if cap is not None:
        out.update(deadline_rate_p50_ms=cap.latency.p50_ms, deadline_rate_p99_ms=cap.latency.p99_ms,
                   deadline_rate_degraded_rate=cap.degraded_rate)
    out["deadline_rate_steps"] = [{"rate": s.rate, "p99_ms": None if s.p99_ms is None else round(s.p99_ms, 2),
                                   "passed": s.passed} for s in capacity.steps]
    out["background"] = bg
    out["goal"] = f"p99 <= {GOAL_P99_MS:g} ms at >= {GOAL_RATE:g} req/s"
    out["goal_met"] = bool(result.best_rate is not None and result.best_rate >= GOAL_RATE)
    base = baseline_figures(config)
    if base:
        out["feed_p50_vs_grpc_empty_p50"] = ratio(out.get("feed_p50_ms"), base.get("grpc_unary_p50_ms") or base.get("grpc_p50_ms"))
    return out
