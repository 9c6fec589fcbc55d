"""`cascade events serve` as a process: serves LogEvents into Kafka, exports metrics, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import grpc

from cascade.cli import main as cascade_main
from cascade.config import REPO_ROOT
from events.cli import main as events_main
from events_helpers import consume, ev
from proto.cascade.v1 import events_pb2, events_pb2_grpc


def test_events_command_is_discovered(capsys) -> None:
    assert cascade_main(["--help"]) == 0
    assert "events" in capsys.readouterr().out
    assert events_main(["--help"]) == 0
    assert "cascade events" in capsys.readouterr().out


def test_serve_without_kafka_is_a_configuration_error(monkeypatch, capsys) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    from cascade.config import get_config

    if get_config().kafka.bootstrap_servers:  # an external cluster configured for the whole run
        return
    assert events_main(["serve"]) == 1
    assert "no Kafka configured" in capsys.readouterr().err


def test_serve_publishes_and_stops_on_sigterm(config, stack, new_topic, unique_prefix) -> None:
    topic = new_topic()
    env = {**os.environ, "CASCADE__EVENTS__KEY_PREFIX": unique_prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cascade.cli", "events", "serve", "--port", "0", "--metrics-port", "0",
         "--redis-url", stack.redis_url, "--bootstrap", stack.kafka_bootstrap, "--topic", topic],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = proc.stdout.readline()  # "EventService on host:port (...); metrics on :port/metrics. Ctrl-C to stop."
        match = re.search(r"EventService on ([\d.]+):(\d+).*metrics on :(\d+)", line)
        assert match, line
        host, port, metrics_port = match.groups()
        now = time.time_ns() // 1_000_000
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            stub = events_pb2_grpc.EventServiceStub(channel)
            resp = stub.LogEvents(events_pb2.LogEventsRequest(events=[ev(0, now), ev(1, now)]), timeout=20)
        assert (resp.accepted_count, resp.duplicate_count) == (2, 0)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'cascade_events_accepted_total{type="click"} 2.0' in metrics
        assert "cascade_events_publish_seconds_count 1.0" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(events_pb2.Event.FromString(v).event_id for _, v in consume(stack.kafka_bootstrap, config, topic, 2)) \
        == ["e-0", "e-1"]
