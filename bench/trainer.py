"""FTRL trainer throughput on one core: the learner alone, and consuming from Kafka end to end.

`run(quick, config)` (torch on 1 thread; the learner's numpy ops are single-threaded) measures:

* ``learn_many_b<B>_samples_per_s``: :meth:`streaming.ftrl.FTRLProximal.learn_many` on
  pre-built hashed samples at the production size (``2**streaming.hash_bits`` rows
  plus the dense block and bias): 30 active coordinates per sample (ids drawn
  Zipf-like, as popular users/items repeat), 8 of them dense values, plus the bias;
  minibatches of B rows. Goal: >= 100k samples/s.
* ``learn_one_samples_per_s``: the river-style single-sample API on the same samples,
  and ``river_learn_one_samples_per_s``: river's ``LogisticRegression(FTRLProximal)``
  on the same dicts (the same-run baseline; ``learn_many_vs_river`` is the ratio).
* ``e2e_*``: the real trainer (:class:`streaming.trainer.Trainer`) on an embedded Kafka:
  labeled samples of the synthetic world (``deepfm_synthetic`` feature set, 5 items per
  request) and their served-feature records are produced first; after a warm-up
  (encoder fit on the first samples), the rate of consuming the backlog: Kafka fetch
  and protobuf decode, dedup, served-vector lookup, encoding with ranking's encoder,
  sparse coordinates (crosses included), ``learn_many`` and progressive validation.
  ``e2e_share_*`` is where that time went.
* ``stacked_e2e_*``: the same, in the same run on the same broker, with the trainer stacked on a
  DeepFM (``streaming.trainer_base_model``; :mod:`streaming.trainer_stacking`): a production-size
  DeepFM (``ranking.embedding_dim``, ``ranking.mlp_hidden``, ``ranking.hash_buckets``; untrained
  weights -- the cost does not depend on them) over the same feature set, published to a registry;
  every batch also computes its logits on ONNX Runtime fp32 with one thread
  (``stacked_e2e_share_base``). No goal: reported next to the plain figure
  (``stacked_vs_plain_e2e`` is the ratio of the two samples/s).
* ``publish_s``: one publish of the full-size model (write, sha256, register).
* ``checkpoint_s``: one trainer checkpoint (temp file, fsync, rename) holding 1M learned
  coordinates and a full de-duplication ring (``streaming.dedup_capacity`` ids).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import rate
from cascade.config import Config


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _samples(n: int, dim: int, k: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = dim - 1 - 8  # hashed rows, then 8 dense coordinates... and the bias last
    ids = (rng.zipf(1.2, size=(n, k - 8 - 1)).astype(np.int64) * 2_654_435_761) % (table - 1) + 1
    dense_idx = np.broadcast_to(np.arange(table, table + 8, dtype=np.int64), (n, 8))
    idx = np.concatenate([ids, dense_idx, np.full((n, 1), dim - 1, dtype=np.int64)], axis=1)
    val = np.concatenate([np.ones(ids.shape), rng.normal(size=(n, 8)), np.ones((n, 1))], axis=1)
    logit = -2.0 + 0.5 * val[:, k - 9] + 0.3 * (ids[:, 0] % 7 == 0)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    return idx, val, y


def _learner_rates(n: int, dim: int, s: Any) -> dict[str, Any]:
    from streaming.ftrl import FTRLProximal

    out: dict[str, Any] = {"learner_dim": dim, "active_per_sample": 30}
    idx, val, y = _samples(n, dim)
    for b in (256, 1024, 4096):
        m = FTRLProximal(dim, s.ftrl_alpha, s.ftrl_beta, s.ftrl_l1, s.ftrl_l2)
        m.learn_many(idx[:b], val[:b], y[:b])  # first touch of the arrays
        t0 = time.perf_counter()
        for i in range(0, n, b):
            m.learn_many(idx[i : i + b], val[i : i + b], y[i : i + b])
        out[f"learn_many_b{b}_samples_per_s"] = rate(n, time.perf_counter() - t0)
        _step(f"learn_many batch {b}: {out[f'learn_many_b{b}_samples_per_s']:,.0f} samples/s")
    k = min(n, 20_000)
    dicts = [dict(zip(idx[i].tolist(), val[i].tolist())) for i in range(k)]
    m = FTRLProximal(dim, s.ftrl_alpha, s.ftrl_beta, s.ftrl_l1, s.ftrl_l2)
    t0 = time.perf_counter()
    for i in range(k):
        m.learn_one(dicts[i], y[i])
    out["learn_one_samples_per_s"] = rate(k, time.perf_counter() - t0)
    from river import linear_model, optim

    river = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(s.ftrl_alpha, s.ftrl_beta, s.ftrl_l1, s.ftrl_l2))
    r = min(k, 5_000)
    t0 = time.perf_counter()
    for i in range(r):
        river.learn_one(dicts[i], bool(y[i]))
    out["river_learn_one_samples_per_s"] = rate(r, time.perf_counter() - t0)
    out["learn_many_vs_river"] = out["learn_many_b1024_samples_per_s"] / out["river_learn_one_samples_per_s"]
    _step(f"learn_one {out['learn_one_samples_per_s']:,.0f}/s, river {out['river_learn_one_samples_per_s']:,.0f}/s")
    return out


E2E_FEATURE_SET = "deepfm_synthetic"
BASE_NAME = "deepfm_bench"


def _e2e_both(config: Config, n: int, warm: int) -> dict[str, Any]:
    """The plain trainer, then the trainer stacked on a DeepFM, each on its own topics of one broker."""
    from stack import Stack

    out: dict[str, Any] = {}
    with Stack(config, redis=False) as stack:
        out.update(_e2e(config, stack, n, warm, stacked=False))
        out.update(_e2e(config, stack, n, warm, stacked=True))
    out["stacked_vs_plain_e2e"] = out["stacked_e2e_samples_per_s"] / out["e2e_samples_per_s"]
    return out


def _publish_base(config: Config, registry: Any, repo: Any, tmp: Path) -> dict[str, Any]:
    """A production-size DeepFM (untrained) over the e2e feature set, encoder fitted on the world's rows, made live."""
    import torch

    from ranking.artifact import save_artifact
    from ranking.encoding import FeatureEncoder
    from ranking.models import build_from_settings
    from streaming.trainer_features import ServedRows, fit_table
    from streaming.trainer_synthetic import SyntheticWorld

    resolved = repo.resolve(E2E_FEATURE_SET)
    world = SyntheticWorld(repo, E2E_FEATURE_SET, n_users=5_000, n_items=20_000, seed=2)
    rows = ServedRows([(rec, i) for rec, smp in world.requests(400, start_ms=0) for i in range(len(smp))],
                      ["user_id", "item_id"])
    enc = FeatureEncoder.from_config(resolved, config.ranking)
    enc.fit(fit_table(enc, rows))
    torch.manual_seed(0)
    model = build_from_settings("deepfm", enc.layout(), config.ranking)
    m = save_artifact(model, enc, tmp / "base", kind="deepfm", feature_set_name=resolved.name,
                      feature_set_fingerprint=resolved.fingerprint, metrics={}, name=BASE_NAME, version="b1", onnx=True)
    registry.publish(tmp / "base", auto_promote=True)
    return {"stacked_base_macs_per_sample": m.model.get("macs_per_sample"), "stacked_base_hash_buckets": enc.hash_buckets}


def _e2e(config: Config, stack: Any, n: int, warm: int, *, stacked: bool) -> dict[str, Any]:
    import uuid

    from featurestore.repository import get_repo
    from ranking.registry import ModelRegistry
    from stack.clients import kafka_producer
    from streaming.trainer import Trainer
    from streaming.trainer_synthetic import SyntheticWorld

    fs = E2E_FEATURE_SET
    pre = "stacked_e2e" if stacked else "e2e"
    repo = get_repo(config.features.definitions)
    world = SyntheticWorld(repo, fs, n_users=5_000, n_items=20_000, seed=1)
    out: dict[str, Any] = {f"{pre}_feature_set": fs, f"{pre}_samples": n}
    with tempfile.TemporaryDirectory() as tmp:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        tag = uuid.uuid4().hex[:8]
        samples_topic, features_topic = f"bench-samples-{tag}", f"bench-features-{tag}"
        admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
        admin.create_topics([NewTopic(samples_topic, 4, 1), NewTopic(features_topic, 4, 1)])
        admin.close()
        cfg = config.model_copy(update={
            "paths": config.paths.model_copy(update={"var_dir": Path(tmp) / "var", "artifacts_dir": Path(tmp) / "art"}),
            "streaming": config.streaming.model_copy(update={
                "feature_set": fs, "publish_every_s": 1e9, "publish_every_samples": 10**12, "checkpoint_every_s": 1e9,
                "encoder_fit_rows": warm, "trainer_batch_size": 2048,
                "trainer_base_model": BASE_NAME if stacked else ""})})
        producer = kafka_producer(stack.kafka_bootstrap, cfg.kafka, linger_ms=20, batch_size=256 * 1024)
        requests = world.requests((warm + n) // 5, items_per_request=5, start_ms=int(time.time() * 1000), step_ms=1)

        def produce(count: int) -> int:
            from featurestore.served_log import encode_record

            done = 0
            for record, samples in requests:
                producer.send(features_topic, key=record["served_feature_id"].encode(), value=encode_record(record))
                for smp in samples:
                    producer.send(samples_topic, key=smp.user_id.encode(), value=smp.SerializeToString())
                done += len(samples)
                if done >= count:
                    break
            producer.flush()
            return done

        total = produce(warm)
        registry = ModelRegistry.from_config(cfg, repo=repo)
        if stacked:
            out.update(_publish_base(cfg, registry, repo, Path(tmp)))
        trainer = Trainer(cfg, stack.kafka_bootstrap, repo=repo, registry=registry, samples_topic=samples_topic,
                          features_topic=features_topic).start()
        try:
            while sum(trainer.offsets.values()) < total:
                trainer.step()
            _step(f"{pre}: warm-up done ({total:,} consumed, encoder ready); producing {n:,} samples and their "
                  "served features, then measuring the backlog")
            total += produce(n)
            producer.close()
            consumed0 = sum(trainer.offsets.values())
            timing0 = dict(trainer.timing)
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            while sum(trainer.offsets.values()) < total:
                trainer.step()
            seconds = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            consumed = sum(trainer.offsets.values()) - consumed0
            spent = {k: trainer.timing[k] - timing0[k] for k in timing0}
        finally:
            trainer.close()
        out[f"{pre}_samples_per_s"] = rate(consumed, seconds)
        out[f"{pre}_cpu_samples_per_s"] = rate(consumed, cpu)
        out[f"{pre}_learned"] = trainer.counts["learned"]
        out[f"{pre}_no_features"] = trainer.counts["no_features"]
        for k, v in spent.items():
            if stacked or k != "base_s":
                out[f"{pre}_share_{k[:-2]}"] = v / seconds
        if not stacked:  # (the stacked run's base is untrained: its loss says nothing)
            out["e2e_progressive_auc"] = trainer.pv.auc()
            out["e2e_progressive_logloss"] = trainer.pv.logloss()
        out[f"{pre}_width"] = trainer.layout.width if trainer.layout else None
        _step(f"{pre} end to end: {out[f'{pre}_samples_per_s']:,.0f} samples/s ({consumed:,} in {seconds:.1f}s; {spent})")
    return out


def _publish_cost(config: Config) -> dict[str, Any]:
    from featurestore.repository import get_repo
    from ranking.encoding import FeatureEncoder
    from ranking.registry import ModelRegistry
    from streaming.hashing import SparseLayout, parse_crosses
    from streaming.publish import Publisher
    from streaming.trainer_features import ServedRows, fit_table
    from streaming.trainer_synthetic import SyntheticWorld

    repo = get_repo(config.features.definitions)
    resolved = repo.resolve("deepfm_synthetic")
    world = SyntheticWorld(repo, "deepfm_synthetic", n_users=100, n_items=200)
    rows = ServedRows([(rec, i) for rec, smp in world.requests(50, start_ms=0) for i in range(len(smp))],
                      ["user_id", "item_id"])
    buckets = 2 ** config.streaming.hash_bits
    enc = FeatureEncoder.from_config(resolved, config.ranking.model_copy(update={"hash_buckets": buckets}))
    enc.fit(fit_table(enc, rows))
    layout = SparseLayout(enc, parse_crosses(config.streaming.ftrl_crosses, enc))
    w = np.random.default_rng(0).normal(size=layout.dim) * (np.random.default_rng(1).random(layout.dim) < 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.model_copy(update={"paths": config.paths.model_copy(update={"artifacts_dir": Path(tmp)})})
        pub = Publisher(ModelRegistry.from_config(cfg, repo=repo), layout, name="ftrl", fingerprint=resolved.fingerprint)
        times = []
        for i in range(3):
            t0 = time.perf_counter()
            pub.publish(w, {"samples_learned": float(i + 1)}, {"offsets": {}})
            times.append(time.perf_counter() - t0)
    return {"publish_s": float(np.median(times)), "publish_rows": buckets}


def _checkpoint_cost(dim: int, touched: int, dedup: int) -> dict[str, Any]:
    """One checkpoint (atomic write + fsync) with `touched` learned coordinates and `dedup` remembered ids."""
    from streaming.trainer_state import SampleDedup, save_checkpoint

    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(dim, size=touched, replace=False))
    d = SampleDedup(dedup)
    d.add(rng.integers(1, 2**63, size=dedup, dtype=np.int64).tolist())
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            path = save_checkpoint(Path(tmp), idx=idx, z=rng.normal(size=touched), n=rng.random(touched), dedup=d,
                                   meta={"offsets": {"0": 1}})
            times.append(time.perf_counter() - t0)
        size = path.stat().st_size
    return {"checkpoint_s": float(np.median(times)), "checkpoint_mb": size / 1e6, "checkpoint_touched": touched,
            "checkpoint_dedup_ids": dedup}


def run(quick: bool, config: Config) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    s = config.streaming
    dim = 2 ** s.hash_bits + 32
    out: dict[str, Any] = {"hash_bits": s.hash_bits}
    out.update(_learner_rates(100_000 if quick else 500_000, dim, s))
    out.update(_e2e_both(config, 20_000 if quick else 100_000, 2_000))
    out.update(_publish_cost(config))
    _step(f"publishing a {out['publish_rows']:,}-row model: {out['publish_s']:.3f}s")
    out.update(_checkpoint_cost(dim, 1_000_000, s.dedup_capacity))
    _step(f"a checkpoint with 1M learned coordinates and {s.dedup_capacity:,} remembered ids: "
          f"{out['checkpoint_s']:.3f}s, {out['checkpoint_mb']:.0f} MB")
    return out
