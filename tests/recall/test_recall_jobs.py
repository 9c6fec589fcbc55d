"""`cascade recall covisit | trending | fresh | serve`: the offline jobs and the server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc

import recall.jobs  # noqa: F401 - registers the sub-commands
from recall.cli import main
from recall.covisit import live_version
from recall.trending import TrendingKeys
from recall_helpers import HOUR_MS, T0_MS, events_table


def test_offline_jobs_write_the_tables(tmp_path, stack, redis, unique_prefix, capsys):
    events = tmp_path / "events.parquet"
    pq.write_table(events_table([(1, 10, 0), (1, 11, 1), (2, 10, 2), (2, 11, 3), (3, 12, 4)]), events)
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({
        "item_id": [10, 11, 12], "category": [1, 1, 2],
        "published_ts": pa.array([(T0_MS + h * HOUR_MS) * 1000 for h in (0, 3, 4)], pa.int64()).cast(pa.timestamp("us", "UTC")),
    }), items)
    common = ["--redis-url", stack.redis_url, "--namespace", unique_prefix, "--events", str(events), "--items", str(items),
              "--category-column", "category"]
    assert main(["covisit", *common, "--version", "cli1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == "cli1" and out["items"] == 2 and live_version(redis, unique_prefix) == "cli1"
    assert main(["trending", *common]) == 0
    capsys.readouterr()
    keys = TrendingKeys.of(unique_prefix)
    assert redis.zcard(keys.glob) == 3 and redis.zcard(keys.cat("1")) == 2
    assert main(["fresh", *common, "--now", "2026-01-01T05:00:00+00:00"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["fresh_items"] == 3


def test_serve_runs_until_sigterm(stack, config):
    code = "import sys; from recall.service import serve; sys.exit(serve(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0", "--redis-url", stack.redis_url, "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "RecallService on" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "server exited early"
        address = line.split(" on ", 1)[1].split(" ", 1)[0]
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="cascade.v1.RecallService"), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
