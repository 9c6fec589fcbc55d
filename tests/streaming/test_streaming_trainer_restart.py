"""Crash safety: the trainer as a subprocess, SIGKILLed at random points under load, restarted; no sample lost or doubled."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from ftrl_trainer_helpers import DEFS, FS, env_of, make_topics, produce, trainer_config  # noqa: E402

from featurestore.repository import load_repo  # noqa: E402
from streaming.trainer_state import LearnedSet, load_checkpoint  # noqa: E402
from streaming.trainer_synthetic import SyntheticWorld  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KILLS = 3


def test_sigkilled_trainer_resumes_with_no_loss_and_no_duplicates(stack: Any, config: Any, unique_prefix: str,
                                                                   tmp_path: Path) -> None:
    from stack.clients import kafka_producer

    repo = load_repo(DEFS)
    cfg = trainer_config(config, tmp_path, checkpoint_every_s=0.3, publish_every_s=1.0, trainer_batch_size=200,
                         encoder_fit_rows=100)
    samples_topic, features_topic = f"{unique_prefix}-samples", f"{unique_prefix}-features"
    make_topics(stack.kafka_bootstrap, {samples_topic: 3, features_topic: 2})
    world = SyntheticWorld(repo, FS, n_users=40, n_items=120, seed=3)
    producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka)
    produced: list[Any] = []
    replayed = 0
    done = threading.Event()

    def load() -> None:  # keeps producing for the whole test: kills land while samples arrive
        nonlocal replayed
        rng = random.Random(0)
        for _ in range(60):  # ~20 s: longer than the three kill cycles
            batch = produce(producer, world, 10, samples_topic=samples_topic, features_topic=features_topic,
                            start_ms=int(time.time() * 1000), items_per_request=5)
            produced.extend(batch)
            for s in rng.sample(batch, 4):  # the joiner re-emits a few samples (a replay)
                producer.send(samples_topic, key=s.user_id.encode(), value=s.SerializeToString())
                replayed += 1
            producer.flush()
            time.sleep(0.3)
        done.set()

    env = {**os.environ, **env_of(cfg), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "learned.txt"
    cmd = [sys.executable, "-m", "cascade.cli", "streaming", "train", "--kafka", stack.kafka_bootstrap,
           "--topic", samples_topic, "--features-topic", features_topic, "--learned-log", str(log), "--metrics-port", "0"]
    out = open(tmp_path / "trainer.log", "ab")
    producer_thread = threading.Thread(target=load, daemon=True)
    producer_thread.start()
    rng = random.Random(int(time.time()))
    kills = 0
    try:
        while kills < KILLS:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
            deadline = time.monotonic() + 60
            while (tmp_path / "trainer.log").read_text().count("training ftrl from") <= kills:  # started consuming
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()[-3000:]
                time.sleep(0.05)
            time.sleep(rng.uniform(0.5, 2.5))  # then it dies at some random point of its work
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        assert done.wait(60), "the producer did not finish"
        producer_thread.join(10)
        final = subprocess.run([*cmd, "--idle-exit-s", "4", "--max-seconds", "90"], cwd=ROOT, env=env, stdout=out,
                               stderr=out, timeout=120)
        assert final.returncode == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    finally:
        producer.close()
        out.close()

    ckpt = load_checkpoint(tmp_path / "var" / cfg.streaming.checkpoint_subdir / f"trainer-{cfg.streaming.model_name}")
    assert ckpt is not None
    meta = ckpt["meta"]
    want = {s.sample_id for s in produced}
    learned = log.read_text().split()
    assert len(learned) == len(set(learned)), "a sample was learned twice"
    assert set(learned) == want, f"lost {len(want - set(learned))}, extra {len(set(learned) - want)}"
    assert LearnedSet.from_json(meta["learned_set"]) == LearnedSet.of(want)
    c = meta["counts"]
    assert c["learned"] == len(want) and c["duplicate"] == replayed and c["no_features"] == 0
    assert sum(meta["offsets"].values()) == len(produced) + replayed  # every record consumed exactly once
    text = (tmp_path / "trainer.log").read_text()
    assert text.count("restored checkpoint") >= KILLS - 1  # the restarts did resume from checkpoints
