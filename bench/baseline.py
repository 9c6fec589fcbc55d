"""The machine's ceilings: every later benchmark is read as a ratio of these.

One run measures, on this machine and against the very servers the pipeline
uses (the embedded valkey-server and Tansu broker, or REDIS_URL /
KAFKA_BOOTSTRAP_SERVERS when set):

- fp32 GEMM through torch (the ranking models' compute ceiling);
- Redis round trips, pipelined GETs, MGET of 1,000 ~80-byte values (the feature
  store's read ceiling) and bulk writes of ~200-byte rows (materialization);
- Kafka produce and consume of 1 KB messages with kafka-python;
- an empty gRPC unary call over loopback with grpc.aio (the serving ceiling).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

from bench.harness import step
from bench.machine import usable_cpus
from bench.stats import percentiles, rate
from cascade.config import REPO_ROOT, Config
from stack import Stack
from stack.clients import kafka_consumer, kafka_producer, redis_client

# Sizes shared by quick and full runs (only repetition counts and durations differ).
GEMM_N = 2048
MGET_BATCH = 1000
MGET_VALUE_BYTES = 80
MGET_KEYSPACE = 10_000
ROW_VALUE_BYTES = 200
WRITE_BATCH = 1000
PIPELINE_BATCH = 1000
KAFKA_VALUE_BYTES = 1024
KAFKA_PARTITIONS = 4
KAFKA_BATCHED = {"batch_size": 256 * 1024, "linger_ms": 20}
GRPC_CONCURRENCY = 64
GRPC_METHOD = "/cascade.bench.Empty/Call"


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(gemm_warmup=2, gemm_reps=8, pings=5_000, pipeline_batches=20, mgets=200,
                    write_rows=50_000, kafka_msgs=10_000, grpc_duration_s=3.0, grpc_latency_s=1.5,
                    grpc_warmup_s=0.5)
    return dict(gemm_warmup=3, gemm_reps=30, pings=20_000, pipeline_batches=100, mgets=1_000,
                write_rows=200_000, kafka_msgs=50_000, grpc_duration_s=10.0, grpc_latency_s=3.0,
                grpc_warmup_s=1.0)


# ---------------------------------------------------------------- GEMM


def _gemm_times(torch: Any, threads: int, warmup: int, reps: int) -> list[float]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(GEMM_N, GEMM_N, generator=gen)
    b = torch.randn(GEMM_N, GEMM_N, generator=gen)
    c = torch.empty(GEMM_N, GEMM_N)
    for _ in range(warmup):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t)
    return times


def bench_gemm(plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    import torch

    threads = usable_cpus()
    previous = torch.get_num_threads()
    flops = 2.0 * GEMM_N**3
    try:
        step(f"gemm: {GEMM_N}x{GEMM_N} fp32 matmul, {threads} threads, {plan['gemm_reps']} reps")
        times = _gemm_times(torch, threads, plan["gemm_warmup"], plan["gemm_reps"])
        step(f"gemm: {GEMM_N}x{GEMM_N} fp32 matmul, 1 thread, {plan['gemm_reps']} reps")
        times1 = _gemm_times(torch, 1, plan["gemm_warmup"], plan["gemm_reps"])
    finally:
        torch.set_num_threads(previous)
    figures = {
        "gemm_gflops": flops / float(np.median(times)) / 1e9,
        "gemm_best_gflops": flops / min(times) / 1e9,
        "gemm_1thread_gflops": flops / float(np.median(times1)) / 1e9,
    }
    method = {
        "gemm_gflops": (f"torch.mm of two {GEMM_N}x{GEMM_N} fp32 matrices into a preallocated output with "
                        f"torch.set_num_threads({threads}) (all usable cores; BLAS {'MKL' if torch.backends.mkl.is_available() else 'non-MKL'}, "
                        f"{torch.backends.cpu.get_cpu_capability()} kernels), "
                        f"{plan['gemm_warmup']} warm-up then {plan['gemm_reps']} timed calls; 2·n³ FLOP over the "
                        "median call time."),
        "gemm_best_gflops": "Same calls, over the fastest one.",
        "gemm_1thread_gflops": "Same measurement with torch.set_num_threads(1): one core's ceiling.",
    }
    step(f"gemm: {figures['gemm_gflops']:.1f} GFLOP/s median ({figures['gemm_best_gflops']:.1f} best), "
         f"{figures['gemm_1thread_gflops']:.1f} on one thread")
    return figures, method


# ---------------------------------------------------------------- Redis


def bench_redis(url: str, config: Config, plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    client = redis_client(url, config.redis)
    # One hash tag: every key in one slot, so MGET/MSET also work against a Redis Cluster.
    prefix = f"bench:{{baseline-{uuid.uuid4().hex[:8]}}}:"
    rng = np.random.default_rng(0)
    figures: dict[str, float] = {}
    written: list[bytes] = []
    try:
        client.ping()
        # Keyspace for reads: MGET_KEYSPACE keys of ~80-byte values (loaded untimed).
        step(f"redis: loading {MGET_KEYSPACE:,} keys of {MGET_VALUE_BYTES} B")
        keys = [f"{prefix}f:{i}".encode() for i in range(MGET_KEYSPACE)]
        value80 = os.urandom(MGET_VALUE_BYTES)
        for i in range(0, MGET_KEYSPACE, WRITE_BATCH):
            client.mset({k: value80 for k in keys[i:i + WRITE_BATCH]})
        written += keys

        n = plan["pings"]
        step(f"redis: {n:,} sequential PINGs")
        for _ in range(200):
            client.ping()
        lat = np.empty(n)
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            client.ping()
            lat[i] = time.perf_counter() - t
        total = time.perf_counter() - t0
        figures["redis_roundtrips_per_s"] = rate(n, total)
        figures["redis_roundtrip_p50_ms"] = percentiles(lat)["p50_ms"]

        batches = plan["pipeline_batches"]
        step(f"redis: {batches} pipelines of {PIPELINE_BATCH} GETs")
        picks = [[keys[j] for j in rng.integers(0, MGET_KEYSPACE, PIPELINE_BATCH)] for _ in range(batches)]
        pipe = client.pipeline(transaction=False)
        t0 = time.perf_counter()
        for batch in picks:
            for k in batch:
                pipe.get(k)
            got = pipe.execute()
        total = time.perf_counter() - t0
        assert len(got) == PIPELINE_BATCH and got[0] == value80
        figures["redis_pipelined_ops_per_s"] = rate(batches * PIPELINE_BATCH, total)

        m = plan["mgets"]
        step(f"redis: {m} MGETs of {MGET_BATCH} random keys")
        picks = [[keys[j] for j in rng.choice(MGET_KEYSPACE, MGET_BATCH, replace=False)] for _ in range(m)]
        for batch in picks[:10]:
            client.mget(batch)
        lat = np.empty(m)
        t0 = time.perf_counter()
        for i, batch in enumerate(picks):
            t = time.perf_counter()
            got = client.mget(batch)
            lat[i] = time.perf_counter() - t
        total = time.perf_counter() - t0
        assert len(got) == MGET_BATCH and all(v == value80 for v in got)
        figures["redis_mget_values_per_s"] = rate(m * MGET_BATCH, total)
        pct = percentiles(lat)
        figures["redis_mget_1000_p50_ms"] = pct["p50_ms"]
        figures["redis_mget_1000_p99_ms"] = pct["p99_ms"]

        rows = plan["write_rows"]
        value200 = os.urandom(ROW_VALUE_BYTES)
        step(f"redis: MSET of {rows:,} rows of {ROW_VALUE_BYTES} B, {WRITE_BATCH} per command")
        row_keys = [f"{prefix}r:{i}".encode() for i in range(rows)]
        chunks = [{k: value200 for k in row_keys[i:i + WRITE_BATCH]} for i in range(0, rows, WRITE_BATCH)]
        written += row_keys
        t0 = time.perf_counter()
        for chunk in chunks:
            client.mset(chunk)
        figures["redis_mset_rows_per_s"] = rate(rows, time.perf_counter() - t0)

        step(f"redis: pipelined SET of {rows:,} rows of {ROW_VALUE_BYTES} B, {WRITE_BATCH} per round trip")
        t0 = time.perf_counter()
        for i in range(0, rows, WRITE_BATCH):
            for k in row_keys[i:i + WRITE_BATCH]:
                pipe.set(k, value200)
            pipe.execute()
        figures["redis_pipelined_set_rows_per_s"] = rate(rows, time.perf_counter() - t0)
        assert client.get(row_keys[-1]) == value200
    finally:
        for i in range(0, len(written), 10_000):
            client.unlink(*written[i:i + 10_000])
        client.close()

    method = {
        "redis_roundtrips_per_s": (f"{plan['pings']:,} sequential PINGs on one redis-py connection (hiredis parser), "
                                   "after 200 warm-up PINGs; count over wall time."),
        "redis_roundtrip_p50_ms": "Median of the same PINGs, each timed on its own.",
        "redis_pipelined_ops_per_s": (f"{plan['pipeline_batches']} non-transactional pipelines of {PIPELINE_BATCH} "
                                      f"GETs of random existing {MGET_VALUE_BYTES}-byte keys; GETs over wall time."),
        "redis_mget_values_per_s": (f"{plan['mgets']} MGETs, each of {MGET_BATCH} distinct random keys out of "
                                    f"{MGET_KEYSPACE:,} holding {MGET_VALUE_BYTES}-byte values, one after another on "
                                    "one connection; values returned over wall time (the feature store's read ceiling)."),
        "redis_mget_1000_p50_ms": "Median latency of one such 1,000-key MGET.",
        "redis_mget_1000_p99_ms": "99th percentile latency of one such 1,000-key MGET.",
        "redis_mset_rows_per_s": (f"{plan['write_rows']:,} new keys with {ROW_VALUE_BYTES}-byte values written by MSET "
                                  f"commands of {WRITE_BATCH} pairs each, sequentially; rows over wall time "
                                  "(the materialization ceiling)."),
        "redis_pipelined_set_rows_per_s": (f"The same rows rewritten as individual SETs in non-transactional pipelines "
                                           f"of {WRITE_BATCH} (the shape used when each key needs its own options, "
                                           "e.g. a TTL)."),
    }
    step(f"redis: {figures['redis_roundtrips_per_s']:,.0f} round trips/s, "
         f"{figures['redis_mget_values_per_s']:,.0f} MGET values/s, {figures['redis_mset_rows_per_s']:,.0f} MSET rows/s")
    return figures, method


# ---------------------------------------------------------------- Kafka


def _create_topic(bootstrap: str, config: Config, topic: str, timeout_s: float) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{config.kafka.client_id}-bench-admin",
                             request_timeout_ms=config.kafka.request_timeout_ms)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=KAFKA_PARTITIONS, replication_factor=1)],
                            timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while topic not in set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} not visible after {timeout_s}s")
            time.sleep(0.1)
    finally:
        admin.close()


def _delete_topic(bootstrap: str, config: Config, topic: str) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{config.kafka.client_id}-bench-admin",
                                 request_timeout_ms=config.kafka.request_timeout_ms)
        try:
            admin.delete_topics([topic], timeout_ms=5000)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - cleanup only
        step(f"kafka: could not delete topic {topic}: {exc}")


def _crc32c_impl() -> str:
    """Which CRC32C kafka-python uses for v2 record batches: the `crc32c` C extension or its pure-Python fallback."""
    try:
        from kafka.record import util

        return "C (crc32c package)" if getattr(util, "crc32c_c", None) is not None else "pure Python"
    except ImportError:
        return "unknown"


def _produce(bootstrap: str, config: Config, topic: str, n: int, timeout_s: float,
             **overrides: Any) -> tuple[float, str]:
    """Send n values asynchronously then flush; returns (messages per second, the producer settings that matter).

    Raises if any send failed.
    """
    producer = kafka_producer(bootstrap, config.kafka, **overrides)
    settings = ", ".join(f"{k}={producer.config.get(k)}" for k in ("acks", "linger_ms", "batch_size", "compression_type"))
    try:
        deadline = time.monotonic() + timeout_s
        while not producer.partitions_for(topic):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata for {topic}")
            time.sleep(0.1)
        value = os.urandom(KAFKA_VALUE_BYTES)
        t0 = time.perf_counter()
        futures = [producer.send(topic, value) for _ in range(n)]
        producer.flush(timeout=120)
        total = time.perf_counter() - t0
    finally:
        producer.close()
    failed = [f for f in futures if not f.is_done or f.failed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} sends to {topic} failed: {failed[0].exception!r}")
    return rate(n, total), settings


def bench_kafka(bootstrap: str, config: Config, plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    from kafka import TopicPartition

    n = plan["kafka_msgs"]
    run_id = uuid.uuid4().hex[:8]
    topic, topic_batched = f"bench-baseline-{run_id}", f"bench-baseline-{run_id}-batched"
    timeout_s = config.kafka.startup_timeout_s
    crc = _crc32c_impl()
    figures: dict[str, float] = {}
    created: list[str] = []
    try:
        for t in (topic, topic_batched):
            _create_topic(bootstrap, config, t, timeout_s)
            created.append(t)
        step(f"kafka: producing {n:,} x {KAFKA_VALUE_BYTES} B to {topic} ({KAFKA_PARTITIONS} partitions), "
             f"default producer settings; CRC32C {crc}")
        figures["kafka_produce_msgs_per_s"], settings = _produce(bootstrap, config, topic, n, timeout_s)
        step(f"kafka: produced {figures['kafka_produce_msgs_per_s']:,.0f} msgs/s; "
             f"again with batch_size={KAFKA_BATCHED['batch_size']}, linger_ms={KAFKA_BATCHED['linger_ms']}")
        figures["kafka_produce_batched_msgs_per_s"], settings_batched = _produce(
            bootstrap, config, topic_batched, n, timeout_s, **KAFKA_BATCHED)
        step(f"kafka: produced {figures['kafka_produce_batched_msgs_per_s']:,.0f} msgs/s batched; consuming {topic}")

        consumer = kafka_consumer(bootstrap, config.kafka, None)
        try:
            parts = [TopicPartition(topic, p) for p in range(KAFKA_PARTITIONS)]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            got = 0
            size_ok = True
            deadline = time.monotonic() + 120
            t0 = time.perf_counter()
            while got < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"consumed {got} of {n} messages in 120 s")
                for records in consumer.poll(timeout_ms=500).values():
                    got += len(records)
                    size_ok = size_ok and len(records[-1].value) == KAFKA_VALUE_BYTES
            total = time.perf_counter() - t0
            if got != n or not size_ok:
                raise RuntimeError(f"consumed {got} messages (expected {n}), sizes ok: {size_ok}")
            figures["kafka_consume_msgs_per_s"] = rate(n, total)
        finally:
            consumer.close()
        step(f"kafka: consumed {figures['kafka_consume_msgs_per_s']:,.0f} msgs/s")
    finally:
        for t in created:
            _delete_topic(bootstrap, config, t)

    method = {
        "kafka_produce_msgs_per_s": (f"kafka-python KafkaProducer from stack.clients as configured ({settings}, "
                                     f"no key) sending {n:,} "
                                     f"{KAFKA_VALUE_BYTES}-byte values asynchronously to a fresh "
                                     f"{KAFKA_PARTITIONS}-partition topic, then flush(); messages over the wall time "
                                     f"of sends plus flush. Record-batch CRC32C: {crc}."),
        "kafka_produce_batched_msgs_per_s": (f"Same, to a second fresh topic, with {settings_batched}: the "
                                             "producer's headroom when tuned for throughput."),
        "kafka_consume_msgs_per_s": ("kafka-python KafkaConsumer from stack.clients with no group: assign() of all "
                                     "partitions and seek_to_beginning() (so no group join or rebalance is timed), "
                                     f"poll() until all {n:,} messages of the first topic are back (default fetch "
                                     f"sizes, CRC checks on, CRC32C {crc}); messages over wall time from the first poll."),
    }
    return figures, method


# ---------------------------------------------------------------- gRPC


class _GrpcServer:
    """The empty-method server in its own interpreter (so it has a core and a GIL to itself)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""

    def __enter__(self) -> "_GrpcServer":
        g = self.config.grpc
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._grpc_empty_server", "--host", g.host,
             "--max-message-bytes", str(g.max_message_bytes), "--max-concurrent-rpcs", str(g.max_concurrent_rpcs)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
        )
        watchdog = threading.Timer(30.0, self.proc.kill)
        watchdog.start()
        try:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
        finally:
            watchdog.cancel()
        if not line.startswith("PORT "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"gRPC bench server did not start (said {line!r})")
        host = g.host if ":" not in g.host else f"[{g.host}]"
        self.target = f"{host}:{int(line.split()[1])}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()


def _process_cpu_s(pid: int) -> float:
    """User+system CPU seconds of another process so far (Linux /proc), or NaN when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def _grpc_client(target: str, server_pid: int, plan: dict[str, Any]) -> dict[str, float]:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=10)
        call = channel.unary_unary(GRPC_METHOD)  # no serializers: bytes in, bytes out

        async def loop_until(stop_at: float) -> int:
            count = 0
            while time.perf_counter() < stop_at:
                await call(b"")
                count += 1
            return count

        async def concurrent(duration_s: float) -> tuple[int, float]:
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(loop_until(t0 + duration_s) for _ in range(GRPC_CONCURRENCY)))
            return sum(counts), time.perf_counter() - t0

        await concurrent(plan["grpc_warmup_s"])
        step(f"grpc: {GRPC_CONCURRENCY} concurrent callers for {plan['grpc_duration_s']:.0f}s")
        server_cpu0, client_cpu0 = _process_cpu_s(server_pid), time.process_time()
        calls, elapsed = await concurrent(plan["grpc_duration_s"])
        server_cpu, client_cpu = _process_cpu_s(server_pid) - server_cpu0, time.process_time() - client_cpu0
        qps = rate(calls, elapsed)

        step(f"grpc: one caller for {plan['grpc_latency_s']:.1f}s")
        lat: list[float] = []
        stop_at = time.perf_counter() + plan["grpc_latency_s"]
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            await call(b"")
            lat.append(time.perf_counter() - t)
        pct = percentiles(lat)
        return {"grpc_unary_qps": qps, "grpc_unary_p50_ms": pct["p50_ms"], "grpc_unary_p99_ms": pct["p99_ms"],
                "grpc_unary_serial_qps": rate(len(lat), sum(lat)),
                "grpc_server_cpu_pct": 100.0 * server_cpu / elapsed, "grpc_client_cpu_pct": 100.0 * client_cpu / elapsed}


def bench_grpc(config: Config, plan: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    step("grpc: starting the empty-method grpc.aio server in a subprocess")
    with _GrpcServer(config) as server:
        assert server.proc is not None
        figures = asyncio.run(_grpc_client(server.target, server.proc.pid, plan))
    method = {
        "grpc_unary_qps": (f"Empty unary call ({GRPC_METHOD}, generic handler, raw bytes, no protobuf) to a grpc.aio "
                           f"server in its own process on loopback, driven by {GRPC_CONCURRENCY} concurrent "
                           f"coroutines on one grpc.aio channel in the benchmark process for "
                           f"{plan['grpc_duration_s']:.0f} s after a {plan['grpc_warmup_s']:.1f} s warm-up; calls "
                           "over wall time (client and server share the machine's cores)."),
        "grpc_unary_p50_ms": f"Median latency of one call at concurrency 1, sequential calls for {plan['grpc_latency_s']:.1f} s.",
        "grpc_unary_p99_ms": "99th percentile latency of the same concurrency-1 calls.",
        "grpc_unary_serial_qps": "Calls per second of that concurrency-1 loop (1 / mean latency).",
        "grpc_server_cpu_pct": ("CPU time (user+system, all threads, from /proc) of the server process during the "
                                "concurrent phase over its wall time; 100 = one core busy."),
        "grpc_client_cpu_pct": "The same for the benchmark (client) process, from time.process_time().",
    }
    step(f"grpc: {figures['grpc_unary_qps']:,.0f} qps at {GRPC_CONCURRENCY} in flight, "
         f"p50 {figures['grpc_unary_p50_ms']:.3f} ms at 1")
    return figures, method


# ---------------------------------------------------------------- entry


def run(quick: bool, config: Config) -> dict[str, Any]:
    plan = _plan(quick)
    figures: dict[str, Any] = {}
    method: dict[str, str] = {}

    def add(part: tuple[dict[str, float], dict[str, str]]) -> None:
        figures.update(part[0])
        method.update(part[1])

    add(bench_gemm(plan))
    step("stack: starting Redis and Kafka (embedded unless REDIS_URL / KAFKA_BOOTSTRAP_SERVERS are set)")
    with Stack(config) as stack:
        assert stack.redis_url is not None and stack.kafka_bootstrap is not None
        add(bench_redis(stack.redis_url, config, plan))
        add(bench_kafka(stack.kafka_bootstrap, config, plan))
    add(bench_grpc(config, plan))
    return {**figures, "method": method}
