"""`cascade demo`: start the stack and the services, show that they answer.

The demo is a list of phases run in order against one running stack; each
stage adds its phases as it lands (load data, train, serve, drive traffic).
`--smoke` runs them non-interactively and prints one summary line; without it
the demo keeps serving with a live status line until Ctrl-C, then shuts down.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kafka import TopicPartition

from cascade.config import Config, get_config
from serving import GrpcServer, install_signal_handlers, make_channel, start_metrics_server
from stack import Stack
from stack.clients import kafka_consumer, kafka_producer, redis_client


@dataclass
class DemoState:
    """What the phases share: the stack, the running servers, and facts to report."""

    config: Config
    stack: Stack
    servers: list[GrpcServer] = field(default_factory=list)
    metrics_port: int = 0
    facts: dict[str, str] = field(default_factory=dict)


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


async def phase_services(state: DemoState) -> None:
    server = GrpcServer("cascade-demo", state.config.grpc, state.config.ports.feed)
    port = await server.start()
    state.servers.append(server)
    state.metrics_port = start_metrics_server(state.config.ports.metrics, state.config.grpc.host)
    async with make_channel(f"{state.config.grpc.host}:{port}", state.config.grpc) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise RuntimeError(f"gRPC health check answered {reply.status}")
    with urllib.request.urlopen(f"http://{state.config.grpc.host}:{state.metrics_port}/metrics", timeout=5) as resp:
        metrics_ok = resp.status == 200
    state.facts["grpc"] = f"health SERVING on :{port}"
    state.facts["metrics"] = f":{state.metrics_port}/metrics" if metrics_ok else "unavailable"
    _step(f"gRPC server on {state.config.grpc.host}:{port} answers health checks; metrics on :{state.metrics_port}")


PHASES: list[tuple[str, Phase]] = [
    ("redis", phase_redis),
    ("kafka", phase_kafka),
    ("services", phase_services),
]


async def _run(smoke: bool, config: Config) -> int:
    t0 = time.monotonic()
    _step("starting the embedded stack (Redis protocol: valkey-server; Kafka protocol: Tansu)")
    with Stack(config) as stack:
        state = DemoState(config=config, stack=stack)
        try:
            for name, phase in PHASES:
                _step(f"phase: {name}")
                await phase(state)
            summary = " | ".join(f"{k}: {v}" for k, v in state.facts.items())
            if smoke:
                print(f"demo ok in {time.monotonic() - t0:.1f}s | {summary}", flush=True)
                return 0
            _step("serving; press Ctrl-C to stop")
            for server in state.servers:
                install_signal_handlers(server)
            await asyncio.gather(*(s.wait() for s in state.servers))
            return 0
        finally:
            for server in state.servers:
                await server.stop()
            _step("stopped cleanly")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cascade demo", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="run non-interactively and exit with a one-line summary")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args.smoke, get_config()))
    except KeyboardInterrupt:
        return 130
    except grpc.RpcError as exc:
        print(f"demo failed: gRPC {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
