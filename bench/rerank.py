"""Rerank: 1,000 scored candidates to a page of 50, including the seen-filter round trip; and the two seen layouts.

`run(quick, config)` starts its own embedded Redis (`Stack(config, kafka=False)`)
and measures, sequentially on one event loop (latency, not throughput):

* ``engine_*``: ``RerankEngine.rerank`` on a ``RerankInput`` with the shipped rule
  chain (config/rerank.toml): validation, the one Redis round trip (impression
  history of 1,000 items per user, block lists, item state), the eight rules, page
  assembly. Per-step p50s come from the engine's own timings.
* ``proto_*``: the same from a ``RerankRequest`` to a ``RerankResponse`` (what the
  gRPC handler does, minus the transport): proto conversion both ways included.
* ``grpc_*``: one call over loopback gRPC (client and server on the same loop).
* ``seen_<layout>_*``: ``seen()`` for 1,000 candidates per layout (zset, bloom) on
  the same histories, Redis ``MEMORY USAGE`` per user for 1,000 impressions (recorded
  in pages of 50 as a feed does), and the Bloom filter's measured false-positive rate.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from typing import Any

from bench.stats import percentiles
from cascade.config import Config
from proto.cascade.v1 import rerank_pb2, rerank_pb2_grpc
from rerank.convert import to_proto_candidates
from rerank.engine import RerankEngine
from rerank.impressions import HOUR_MS, ImpressionHistory, now_ms
from rerank.stores import BlockLists, ItemStateStore
from rerank.types import Candidate, ItemKind, RerankInput
from stack import Stack
from stack.clients import redis_client

N_CANDIDATES = 1000
PAGE = 50
HISTORY = 1000
CATALOGUE = 50_000


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _request(rng: random.Random, user: str, now: int, histories: dict[str, list[str]]) -> RerankInput:
    seen = histories[user]
    picked = set(rng.sample(seen, 150))  # ~15 % of the candidates were already shown
    while len(picked) < N_CANDIDATES:
        picked.add(f"item{rng.randrange(CATALOGUE)}")
    cands = [
        Candidate(
            item_id=i, score=rng.random(), category=f"cat{rng.randrange(20)}", author=f"auth{rng.randrange(300)}",
            group_id=f"grp{rng.randrange(200)}" if rng.random() < 0.1 else "",
            published_at_ms=now - int(rng.expovariate(1 / 48) * HOUR_MS),
        )
        for i in picked
    ]
    ads = [Candidate(f"ad{k}", rng.random(), kind=ItemKind.AD) for k in range(5)]
    return RerankInput(user, PAGE, cands, ads, now_ms=now)


def _proto(inp: RerankInput) -> rerank_pb2.RerankRequest:
    return rerank_pb2.RerankRequest(user_id=inp.user_id, count=inp.count, candidates=to_proto_candidates(inp.candidates),
                                    injections=to_proto_candidates(inp.injections))


def _memory(client: Any, pattern: str) -> int:
    return sum(int(client.memory_usage(k) or 0) for k in client.scan_iter(match=pattern, count=1000))


def run(quick: bool, config: Config) -> dict[str, Any]:
    users = 30 if quick else 200
    requests = 200 if quick else 2000
    rng = random.Random(11)
    out: dict[str, Any] = {"candidates": N_CANDIDATES, "page": PAGE, "history_per_user": HISTORY}
    with Stack(config, kafka=False) as stack:
        client = redis_client(stack.redis_url, config.redis)
        prefix = f"benchrr{rng.randrange(1 << 30):x}"
        now = now_ms()
        _step(f"seeding {users} users x {HISTORY} impressions (zset and bloom), block lists, item state")
        histories: dict[str, list[str]] = {}
        layouts = {
            name: ImpressionHistory.from_config(
                client, config.rerank.model_copy(update={"impressions_backend": name}), f"{prefix}{name}")
            for name in ("zset", "bloom")
        }
        for u in range(users):
            user = f"user{u}"
            items = [f"item{rng.randrange(CATALOGUE)}" for _ in range(HISTORY)]
            histories[user] = items
            for page in range(0, HISTORY, PAGE):  # as a feed records them, one page at a time, spread over ~2 days
                t = now - int((HISTORY - page) / HISTORY * 40 * HOUR_MS)
                for h in layouts.values():
                    h.record(user, items[page:page + PAGE], t)
            BlockLists(client, f"{prefix}zset").block_authors(user, [f"auth{rng.randrange(300)}" for _ in range(5)])
        ItemStateStore(client, f"{prefix}zset").set_many(
            {f"item{i}": (rng.random() < 0.5, now + rng.randint(-10, 10) * HOUR_MS) for i in rng.sample(range(CATALOGUE), 2000)})

        inputs = [_request(rng, f"user{rng.randrange(users)}", now, histories) for _ in range(min(requests, 300))]
        protos = [_proto(inp) for inp in inputs]
        # The ~600k objects of the prepared requests are the bench's, not the server's: keep them out of the
        # cyclic GC's full collections, which would otherwise show up as 100+ ms p99 outliers here only.
        gc.collect()
        gc.freeze()

        # --- the seen layouts, same histories, same candidate lists
        for name, h in layouts.items():
            lat = []
            for i in range(requests):
                inp = inputs[i % len(inputs)]
                ids = [c.item_id for c in inp.candidates]
                t0 = time.perf_counter()
                h.seen(inp.user_id, ids, since_ms=now - 72 * HOUR_MS, now_ms=now)
                lat.append(time.perf_counter() - t0)
            out.update(percentiles(lat, f"seen_{name}_"))
            out[f"seen_{name}_bytes_per_user"] = round(_memory(client, f"{prefix}{name}:u:*") / users)
        fp = tested = 0
        for inp in inputs[:50]:
            shown = set(histories[inp.user_id])
            fresh = [c.item_id for c in inp.candidates if c.item_id not in shown]
            fp += sum(layouts["bloom"].seen(inp.user_id, fresh, since_ms=now - 72 * HOUR_MS, now_ms=now))
            tested += len(fresh)
        out["seen_bloom_false_positive_rate"] = fp / tested if tested else None
        _step(f"seen: zset p50 {out['seen_zset_p50_ms']:.2f} ms, {out['seen_zset_bytes_per_user']} B/user; "
              f"bloom p50 {out['seen_bloom_p50_ms']:.2f} ms, {out['seen_bloom_bytes_per_user']} B/user, "
              f"FPR {out['seen_bloom_false_positive_rate']:.4%}")

        async def engine_runs() -> None:
            engine = RerankEngine.from_config(config, stack.redis_url, prefix=f"{prefix}zset")
            out["policy_version"] = engine.policy_version
            try:
                for inp in inputs[:20]:  # warm up: connections, caches
                    await engine.rerank(inp)
                gc.collect()
                lat, steps = [], {}
                page_sizes, degraded = [], 0
                cpu0 = time.process_time()
                for i in range(requests):
                    t0 = time.perf_counter()
                    res = await engine.rerank(inputs[i % len(inputs)])
                    lat.append(time.perf_counter() - t0)
                    page_sizes.append(len(res.items))
                    degraded += res.degraded
                    for k, v in res.timings_ms.items():
                        steps.setdefault(k, []).append(v / 1e3)
                # CPU time of this process per request: what the rerank costs us, less distorted by a busy machine
                out["engine_cpu_ms_per_request"] = (time.process_time() - cpu0) / requests * 1e3
                out.update(percentiles(lat, "engine_"))
                out["engine_steps_p50_ms"] = {k: round(percentiles(v)["p50_ms"], 3) for k, v in steps.items()}
                out["engine_degraded"] = degraded
                out["engine_min_page"] = min(page_sizes)
                _step(f"engine: p50 {out['engine_p50_ms']:.2f} ms, p99 {out['engine_p99_ms']:.2f} ms, CPU {out['engine_cpu_ms_per_request']:.2f} ms; "
                      f"steps {out['engine_steps_p50_ms']}")

                lat = []
                cpu0 = time.process_time()
                for i in range(requests):
                    req = protos[i % len(protos)]
                    t0 = time.perf_counter()
                    (await engine.rerank(req)).to_proto().SerializeToString()
                    lat.append(time.perf_counter() - t0)
                out["proto_cpu_ms_per_request"] = (time.process_time() - cpu0) / requests * 1e3
                out.update(percentiles(lat, "proto_"))
                _step(f"proto in/out: p50 {out['proto_p50_ms']:.2f} ms, p99 {out['proto_p99_ms']:.2f} ms")
            finally:
                await engine.aclose()

            from rerank.service import build_rerank_server

            server = build_rerank_server(config, stack.redis_url, prefix=f"{prefix}zset", port=0)
            await server.start()
            try:
                async with __import__("grpc").aio.insecure_channel(server.address) as ch:
                    stub = rerank_pb2_grpc.RerankServiceStub(ch)
                    for req in protos[:20]:
                        await stub.Rerank(req, timeout=5)
                    lat = []
                    for i in range(min(requests, 1000)):
                        t0 = time.perf_counter()
                        await stub.Rerank(protos[i % len(protos)], timeout=5)
                        lat.append(time.perf_counter() - t0)
                    out.update(percentiles(lat, "grpc_"))
                    _step(f"gRPC loopback: p50 {out['grpc_p50_ms']:.2f} ms, p99 {out['grpc_p99_ms']:.2f} ms")
            finally:
                await server.stop(0)

        try:
            asyncio.run(engine_runs())
        finally:
            gc.unfreeze()
        client.close()
    return out
