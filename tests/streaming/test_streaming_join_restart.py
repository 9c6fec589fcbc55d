"""kill -9 the joiner (a real `cascade streaming join` process) under load, three times; restart; drain.

Then the whole samples topic holds exactly one record per distinct impression --
no loss, no duplicate record, not merely no duplicate id -- with the label the
ground truth says (clicked or not).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cascade.config import Config, TopicConfig
from proto.cascade.v1.events_pb2 import Event
from proto.cascade.v1.records_pb2 import Impression, LabeledSample
from stack.clients import ensure_topics, kafka_producer
from streaming.sample_writer import OutputTail

REPO = Path(__file__).resolve().parents[2]
N_IMPRESSIONS = 4000
KILLS = 3


class Load(threading.Thread):
    """Impressions at wall-clock times, ~25 % clicked a few records later (some clicks twice), 2 % sent twice."""

    def __init__(self, bootstrap: str, config: Config, imp_topic: str, ev_topic: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.config, self.imp_topic, self.ev_topic = bootstrap, config, imp_topic, ev_topic
        self.rng = random.Random(seed)
        self.clicked: set[str] = set()
        self.ids: set[str] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        rng = self.rng
        producer = kafka_producer(self.bootstrap, self.config.kafka, linger_ms=2)
        waiting: list[tuple[int, Event]] = []
        try:
            for i in range(N_IMPRESSIONS):
                now = int(time.time() * 1000)
                user = f"user{rng.randrange(300)}"
                imp = Impression(request_id=f"req{i // 8}", user_id=user, item_id=f"item{i}", position=i % 8,
                                 timestamp_ms=now, served_feature_id=f"sf{i // 8}")
                value = imp.SerializeToString()
                producer.send(self.imp_topic, key=user.encode(), value=value)
                if rng.random() < 0.02:
                    producer.send(self.imp_topic, key=user.encode(), value=value)
                self.ids.add(f"{imp.request_id}:{imp.item_id}")
                if rng.random() < 0.25:
                    e = Event(event_id=f"ev{i}", type=1, user_id=user, item_id=imp.item_id, request_id=imp.request_id,
                              timestamp_ms=now, received_at_ms=now)
                    waiting.append((i + rng.randrange(1, 30), e))
                    self.clicked.add(f"{imp.request_id}:{imp.item_id}")
                for _, e in [w for w in waiting if w[0] <= i]:
                    e.received_at_ms = int(time.time() * 1000)
                    producer.send(self.ev_topic, key=e.user_id.encode(), value=e.SerializeToString())
                    if rng.random() < 0.1:  # a retried LogEvents: the same event again
                        producer.send(self.ev_topic, key=e.user_id.encode(), value=e.SerializeToString())
                waiting = [w for w in waiting if w[0] > i]
                if i % 40 == 39:
                    time.sleep(0.08)  # ~8 s of load: the kills land while it runs
            for _, e in waiting:
                producer.send(self.ev_topic, key=e.user_id.encode(), value=e.SerializeToString())
            producer.flush()
        finally:
            producer.close()


def test_kill_9_three_times_under_load(stack, config: Config, unique_prefix: str, tmp_path: Path) -> None:  # noqa: ANN001
    bs = stack.kafka_bootstrap
    imp_topic, ev_topic, out_topic = (f"{unique_prefix}-{n}" for n in ("imp", "ev", "samples"))
    ensure_topics(bs, config.kafka.model_copy(update={"topics": {
        t: TopicConfig(partitions=2) for t in (imp_topic, ev_topic, out_topic)}}))
    env = dict(os.environ, REDIS_URL=stack.redis_url, KAFKA_BOOTSTRAP_SERVERS=bs, PYTHONPATH=str(REPO),
               CASCADE__STREAMING__ATTRIBUTION_WINDOW_S="30", CASCADE__STREAMING__JOINER_CHECKPOINT_INTERVAL_S="1.0",
               CASCADE__STREAMING__JOINER_ALLOWED_LATENESS_S="2")
    cmd = [sys.executable, "-m", "cascade.cli", "streaming", "join", "--impressions-topic", imp_topic,
           "--events-topic", ev_topic, "--samples-topic", out_topic, "--group", f"{unique_prefix}-g",
           "--log-interval", "1"]
    seed = int(time.time())
    rng = random.Random(seed)
    load = Load(bs, config, imp_topic, ev_topic, seed)
    logs: list[Path] = []

    def start() -> subprocess.Popen:
        writer = ("batch", "producer")[len(logs) % 2]  # both sample writers get killed
        logs.append(tmp_path / f"joiner-{len(logs)}.log")
        with logs[-1].open("w") as out:
            return subprocess.Popen(cmd + ["--writer", writer], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    proc = start()
    load.start()
    for _ in range(KILLS):
        deadline = time.monotonic() + 60
        while "recovered (" not in logs[-1].read_text():  # started and recovered: now it is joining
            assert proc.poll() is None and time.monotonic() < deadline, logs[-1].read_text()[-3000:]
            time.sleep(0.05)
        if len(logs) == 1:  # the service exports its metrics while it runs
            url = re.search(r"metrics at (http://\S+/metrics)", logs[-1].read_text()).group(1)
            assert "cascade_joiner_records_in_total" in urllib.request.urlopen(url, timeout=10).read().decode()
        time.sleep(rng.uniform(0.1, 1.5))  # somewhere in joining, writing, checkpointing
        assert proc.poll() is None, logs[-1].read_text()[-3000:]
        proc.kill()  # SIGKILL: no flush, no checkpoint
        proc.wait(timeout=10)
        proc = start()
    load.join(timeout=60)
    assert load.error is None and not load.is_alive()
    deadline = time.monotonic() + 60
    while "recovered (" not in logs[-1].read_text():
        assert proc.poll() is None and time.monotonic() < deadline, logs[-1].read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # graceful: flush, checkpoint, exit 0
    assert proc.wait(timeout=30) == 0, logs[-1].read_text()[-3000:]
    final = subprocess.run(cmd + ["--drain", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    stats = json.loads(final.stdout.strip().splitlines()[-1])
    assert stats["recovered_samples"] == 0  # the SIGTERM'd run left nothing after its last checkpoint

    tail = OutputTail(bs, config.kafka, out_topic)
    try:
        records = [LabeledSample.FromString(v) for v in tail.read({})]
    finally:
        tail.close()
    ids = [s.sample_id for s in records]
    got = {s.sample_id: int(s.label) for s in records}
    recoveries = [line.split("recovered ", 1)[1] for log in logs for line in log.read_text().splitlines()
                  if "recovered (" in line]
    context = f"seed {seed}; recoveries: {recoveries}; final run {stats}"
    assert len(set(ids)) == len(load.ids), context  # every impression has its sample: no loss
    assert len(ids) == len(set(ids)), context  # and the topic holds each once: no duplicate record
    assert set(got) == load.ids
    wrong = {sid: lab for sid, lab in got.items() if lab != int(sid in load.clicked)}
    assert not wrong, f"{len(wrong)} labels differ from the ground truth, e.g. {list(wrong.items())[:5]}; {context}"
    print(context)
