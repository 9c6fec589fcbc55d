"""`cascade demo`: the whole system on MovieLens-100K, with simulated users, learning online.

Phases, in order, against one embedded stack (Redis protocol: valkey; Kafka: Tansu):

1. ``redis``, ``kafka``: the servers answer (a PING, a produced and consumed record);
2. ``build`` (:mod:`cascade.demo_world`): MovieLens shifted to "now", feature
   definitions applied and materialized, a DeepFM trained and published, the
   two-tower FAISS index, co-visitation and trending tables;
3. ``services``: FeedService (recall, ranking, rerank in process), EventService,
   and the learning loop as processes -- the joiner, the streaming feature
   updater and two FTRL trainers (``ftrl_on``, ``ftrl_off``);
4. ``traffic`` (:mod:`simulation`): hidden users with drifting genre tastes ask
   for feeds and click (and rate what they click) with their true probabilities.
   Each hidden user exists twice, once per experiment bucket: ``treatment``
   is ranked by ``ftrl_on``, ``control`` by ``ftrl_off``. Both learn during the
   warm-up; then the ``ftrl_off`` trainer is stopped, so its last version keeps
   serving, frozen. The live view shows QPS, p50/p99 per stage, the degraded
   rate, the model versions and the CTR of both arms; ``var/demo/ctr.png``
   plots CTR over time when the demo ends.

`--smoke` runs a short version non-interactively and prints one summary line;
without it the traffic runs until Ctrl-C, then everything shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import TopicPartition

from cascade.config import Config, get_config
from cascade.demo_view import FeedObserver
from proto.cascade.v1 import events_pb2_grpc, feed_pb2_grpc
from serving import GrpcServer, make_channel, start_metrics_server
from stack import Stack
from stack.clients import kafka_consumer, kafka_producer, redis_client


SIM_USERS = 30  # hidden users; each is cloned into both arms (few enough that each clicks often enough to learn from)
RATE, SMOKE_RATE = 5.0, 5.0  # steps/s (each step: one GetFeed per arm)
WARMUP_S, SMOKE_WARMUP_S = 90.0, 10.0  # both arms learn; then 'learning off' freezes
SMOKE_SECONDS = 25.0


@dataclass
class DemoState:
    """What the phases share: the stack, the running servers and processes, and facts to report."""

    config: Config
    stack: Stack
    smoke: bool = False
    env: dict[str, str] = field(default_factory=dict)
    servers: list[GrpcServer] = field(default_factory=list)
    children: dict[str, subprocess.Popen] = field(default_factory=dict)
    metrics_port: int = 0
    facts: dict[str, str] = field(default_factory=dict)
    world: Any = None
    feed_target: str = ""
    events_target: str = ""
    loop: Any = None
    observer: FeedObserver = field(default_factory=FeedObserver)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


Phase = Callable[[DemoState], Awaitable[None]]


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


async def phase_redis(state: DemoState) -> None:
    client = redis_client(state.stack.redis_url or "", state.config.redis)
    t0 = time.perf_counter()
    client.ping()
    state.facts["redis"] = f"PING {1000 * (time.perf_counter() - t0):.2f}ms"
    client.close()
    _step(f"Redis at {state.stack.redis_url} answers ({state.facts['redis']})")


async def phase_kafka(state: DemoState) -> None:
    bootstrap = state.stack.kafka_bootstrap or ""
    topic = "events"
    marker = f"demo-{uuid.uuid4().hex}".encode()
    producer = kafka_producer(bootstrap, state.config.kafka)
    meta = producer.send(topic, key=b"demo", value=marker).get(timeout=10)
    producer.close()
    consumer = kafka_consumer(bootstrap, state.config.kafka, None)
    tp = TopicPartition(topic, meta.partition)
    consumer.assign([tp])
    consumer.seek(tp, meta.offset)
    deadline = time.monotonic() + 10
    seen = False
    while not seen and time.monotonic() < deadline:
        seen = any(r.value == marker for rs in consumer.poll(timeout_ms=200).values() for r in rs)
    consumer.close()
    if not seen:
        raise RuntimeError("Kafka round trip failed: the produced record was not consumed back")
    state.facts["kafka"] = f"round trip on '{topic}'"
    _step(f"Kafka at {bootstrap}: produced and consumed a record on '{topic}'")


async def phase_build(state: DemoState) -> None:
    from cascade.demo_world import build_world

    state.world = await asyncio.to_thread(build_world, state.config, state.stack.redis_url or "", smoke=state.smoke,
                                          say=_step)
    state.facts["data"] = f"MovieLens {len(state.world.item_categories)} movies, DeepFM {state.world.deepfm_version}"


def _spawn(state: DemoState, name: str, argv: list[str], **env: str) -> None:
    from cascade.demo_world import child_environment

    log = state.config.paths.var_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "cascade.cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                            env=child_environment(state.env, state.stack.redis_url or "", state.stack.kafka_bootstrap or "", **env),
                            start_new_session=True)
    out.close()
    state.children[name] = proc
    _step(f"started {name} (pid {proc.pid}, log {log})")


async def phase_services(state: DemoState) -> None:
    from cascade.demo_world import ONLINE_MODELS, reset_online_learning
    from events.service import build_events_server
    from feed.service import build_feed_server
    from ranking.service import build_ranking_server

    config = state.config
    redis_url, kafka = state.stack.redis_url or "", state.stack.kafka_bootstrap or ""
    reset_online_learning(config)
    # The learning loop: joiner (impressions x clicks -> samples), streaming features, one FTRL trainer per arm.
    _spawn(state, "joiner", ["streaming", "join"])
    _spawn(state, "features-stream", ["streaming", "features"])
    for name in ONLINE_MODELS:
        _spawn(state, f"trainer-{name}", ["streaming", "train"], CASCADE__STREAMING__MODEL_NAME=name,
               CASCADE__STREAMING__TRAINER_GROUP=f"trainer-{name}")
    ranking = build_ranking_server(config, redis_url, kafka_bootstrap=kafka, models=["deepfm", *ONLINE_MODELS], port=0)
    feed = build_feed_server(config, redis_url, kafka, servers={"ranking": ranking})
    events = build_events_server(config, redis_url, kafka, port=0)
    await ranking.start()
    state.servers.append(ranking)
    feed_port = await feed.start()
    state.servers.append(feed)
    events_port = await events.start()
    state.servers.append(events)
    feed.gateway.observers.append(state.observer)
    state.metrics_port = start_metrics_server(config.ports.metrics, config.grpc.host)
    state.feed_target = f"{config.grpc.host}:{feed_port}"
    state.events_target = f"{config.grpc.host}:{events_port}"
    async with make_channel(state.feed_target, config.grpc) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"gRPC health check answered {reply.status}")
    with urllib.request.urlopen(f"http://{config.grpc.host}:{state.metrics_port}/metrics", timeout=5) as resp:
        metrics_ok = resp.status == 200
    state.facts["grpc"] = f"health SERVING on :{feed_port}"
    state.facts["metrics"] = f":{state.metrics_port}/metrics" if metrics_ok else "unavailable"
    _step(f"FeedService on {state.feed_target} (recall, ranking, rerank in process), EventService on "
          f"{state.events_target}; metrics on :{state.metrics_port}")
    _step(f"try: cascade feed show --address {state.feed_target} --user 196")


def _arms(state: DemoState) -> list[Any]:
    """Pairs of MovieLens users, one per bucket, who share one hidden taste (their features are real)."""
    from feed.experiments import Experiments
    from simulation.loop import Arm

    experiments = Experiments.from_config(state.config.feed)
    by_bucket: dict[str, list[str]] = {"treatment": [], "control": []}
    for uid in range(1, state.world.n_users + 1):
        by_bucket.setdefault(experiments.assign(str(uid)).bucket, []).append(str(uid))
    n = min(SIM_USERS, len(by_bucket["treatment"]), len(by_bucket["control"]))
    return [Arm(label, tuple(by_bucket[bucket][:n])) for label, bucket in (("learning on", "treatment"),
                                                                          ("learning off", "control"))]


async def phase_traffic(state: DemoState) -> None:
    """Simulated users through GetFeed and LogEvents; the 'learning off' trainer stops after the warm-up."""
    from cascade.demo_view import render
    from simulation.ctr import CtrTracker
    from simulation.loop import ClosedLoop, percentile
    from simulation.users import SimulatedUsers, UserModelSpec

    world = state.world
    smoke = state.smoke
    arms = _arms(state)
    users = SimulatedUsers(UserModelSpec(n_users=len(arms[0].user_ids), n_categories=len(world.genres),
                                         affinity=2.0, drift_period_s=60.0 if smoke else 600.0, seed=7))
    tracker = CtrTracker(bucket_s=5.0 if smoke else 15.0)
    warmup_s = SMOKE_WARMUP_S if smoke else WARMUP_S
    async with make_channel(state.feed_target, state.config.grpc) as feed_ch, \
            make_channel(state.events_target, state.config.grpc) as events_ch:
        loop = ClosedLoop(feed_pb2_grpc.FeedServiceStub(feed_ch), events_pb2_grpc.EventServiceStub(events_ch), users,
                          world.item_categories, arms, tracker=tracker, count=10,
                          rate=SMOKE_RATE if smoke else RATE, seed=11, rate_clicks=True)
        state.loop = loop
        if not smoke:
            _step("serving; press Ctrl-C to stop")
        stop = state.stop
        runner = asyncio.create_task(loop.run(SMOKE_SECONDS if smoke else 10**9, stop))
        frozen = False
        while not runner.done():
            await asyncio.wait({runner}, timeout=2.0 if smoke else 5.0)
            elapsed = loop.now_s()
            if not frozen and elapsed >= warmup_s:
                frozen = True
                proc = state.children.get("trainer-ftrl_off")
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                _step(f"warm-up over after {elapsed:.0f}s: the 'learning off' model is frozen (its trainer stopped)")
            if not smoke:
                print(render(state.observer.snapshot(), loop.stats.versions, tracker.line(), elapsed,
                             note="" if frozen else f"warm-up: both arms learn until {warmup_s:.0f}s"),
                      file=sys.stderr, flush=True)
        stats = runner.result()
    plot = tracker.plot(state.config.paths.var_dir / "ctr.png",
                        title="CTR of the same simulated users: FTRL learning online vs. frozen after warm-up")
    on, off = tracker.total("learning on", since_s=warmup_s), tracker.total("learning off", since_s=warmup_s)
    state.facts["feeds"] = (f"{stats.requests} GetFeed ({stats.failed} failed, {stats.degraded} degraded: "
                            + ", ".join(f"{a} {n}" for a, n in sorted(stats.degraded_by_arm.items())) + "), "
                            f"p50 {percentile(stats.latencies_ms, 50):.1f} ms p99 {percentile(stats.latencies_ms, 99):.1f} ms")
    snap = state.observer.snapshot()
    state.facts["stages p50/p99 ms (last 10 s)"] = ", ".join(
        f"{s} {snap[f'{s}_p50']:.1f}/{snap[f'{s}_p99']:.1f}" for s in ("features", "recall", "ranking", "rerank", "total"))
    state.facts["ctr after warm-up"] = (f"on {100 * on.expected_ctr:.2f}% / off {100 * off.expected_ctr:.2f}% "
                                        f"(observed {100 * on.ctr:.2f}% / {100 * off.ctr:.2f}%)")
    if stats.degraded_reasons:
        top = sorted(stats.degraded_reasons.items(), key=lambda kv: -kv[1])[:4]
        state.facts["degraded reasons"] = ", ".join(f"{k} x{v}" for k, v in top)
    state.facts["plot"] = str(plot)
    _step(f"{stats.clicks} clicks on {stats.impressions} impressions; models {loop.stats.versions}; CTR plot: {plot}")


PHASES: list[tuple[str, Phase]] = [
    ("redis", phase_redis),
    ("kafka", phase_kafka),
    ("build", phase_build),
    ("services", phase_services),
    ("traffic", phase_traffic),
]


def _stop_children(state: DemoState) -> None:
    for name, proc in state.children.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for name, proc in state.children.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _run(smoke: bool, config: Config, env: dict[str, str]) -> int:
    t0 = time.monotonic()
    _step("starting the embedded stack (Redis protocol: valkey-server; Kafka protocol: Tansu)")
    with Stack(config) as stack:
        state = DemoState(config=config, stack=stack, smoke=smoke, env=env)
        if not smoke:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, state.stop.set)
        try:
            for name, phase in PHASES:
                if state.stop.is_set():
                    break
                _step(f"phase: {name}")
                await phase(state)
            summary = " | ".join(f"{k}: {v}" for k, v in state.facts.items())
            print(f"demo ok in {time.monotonic() - t0:.1f}s | {summary}", flush=True)
            return 0
        finally:
            for server in reversed(state.servers):
                await server.stop()
            _stop_children(state)
            _step("stopped cleanly")
            _exit_if_stuck(1 if sys.exc_info()[0] is not None else 0)


EXIT_GRACE_S = 15.0


def _exit_if_stuck(code: int) -> None:
    """Leave the process at most EXIT_GRACE_S after the demo ended, printing any thread still running.

    After "stopped cleanly", asyncio.run joins its worker threads with no limit (Python 3.11); in two
    full test runs a finished demo never exited. Until the blocked thread is found, a daemon
    watchdog prints every thread's stack and ends the process rather than leave it hanging.
    """
    import threading

    def watch() -> None:
        time.sleep(EXIT_GRACE_S)
        import faulthandler

        print(f"demo: still not exited {EXIT_GRACE_S:g} s after stopping; every thread's stack:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        os._exit(code)

    threading.Thread(target=watch, name="demo-exit-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade demo", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run non-interactively and exit with a one-line summary")
    args = parser.parse_args(argv)
    from cascade.demo_world import demo_environment

    env = {k: v for k, v in demo_environment().items() if k not in os.environ}  # the user's settings win
    os.environ.update(env)
    get_config.cache_clear()
    try:
        return asyncio.run(_run(args.smoke, get_config(), env))
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as exc:
        print(f"demo failed: gRPC {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
