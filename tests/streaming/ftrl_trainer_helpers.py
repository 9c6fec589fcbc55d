"""Helpers of the FTRL trainer tests: private topics, a trainer configuration in tmp_path, producing a synthetic world."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from featurestore.served_log import encode_record

DEFS = Path(__file__).resolve().with_name("ftrl_trainer_defs.py")
FS = "st_ftrl"
CROSSES = ("user_id*item_id", "user_id*st_item:category", "st_user:segment*st_item:tags")


def make_topics(bootstrap: str, partitions: dict[str, int], timeout_s: float = 20.0) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ftrl-tests")
    try:
        admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1) for name, n in partitions.items()])
        deadline = time.monotonic() + timeout_s
        while not set(partitions) <= set(admin.list_topics()):
            assert time.monotonic() < deadline, f"topics {list(partitions)} never appeared"
            time.sleep(0.1)
    finally:
        admin.close()


def trainer_config(config: Any, tmp_path: Path, **streaming: Any) -> Any:
    """`config` with var/artifact dirs in tmp_path, the tests' definitions, a small FTRL model and `streaming` overrides."""
    s = {"feature_set": FS, "hash_bits": 12, "ftrl_crosses": CROSSES, "encoder_fit_rows": 40, "encoder_fit_wait_s": 2.0,
         "publish_every_s": 3600.0, "publish_every_samples": 10**9, "checkpoint_every_s": 3600.0, "served_wait_s": 3.0,
         "trainer_poll_ms": 100, "ftrl_alpha": 0.3, "ftrl_l1": 0.1, "ftrl_l2": 0.1, **streaming}
    return config.model_copy(update={
        "paths": config.paths.model_copy(update={"var_dir": tmp_path / "var", "artifacts_dir": tmp_path / "artifacts"}),
        "features": config.features.model_copy(update={"definitions": DEFS}),
        "streaming": config.streaming.model_copy(update=s),
    })


def env_of(cfg: Any) -> dict[str, str]:
    """CASCADE__* environment variables reproducing `trainer_config`'s overrides in a subprocess."""
    import json

    s = cfg.streaming
    out = {"CASCADE__PATHS__VAR_DIR": str(cfg.paths.var_dir), "CASCADE__PATHS__ARTIFACTS_DIR": str(cfg.paths.artifacts_dir),
           "CASCADE__FEATURES__DEFINITIONS": str(cfg.features.definitions)}
    for key in ("feature_set", "hash_bits", "ftrl_crosses", "encoder_fit_rows", "encoder_fit_wait_s", "publish_every_s",
                "publish_every_samples", "checkpoint_every_s", "served_wait_s", "trainer_poll_ms", "ftrl_alpha",
                "ftrl_l1", "ftrl_l2", "trainer_batch_size"):
        v = getattr(s, key)
        out[f"CASCADE__STREAMING__{key.upper()}"] = v if isinstance(v, str) else json.dumps(list(v) if isinstance(v, tuple) else v)
    return out


def produce(producer: Any, world: Any, n_requests: int, *, samples_topic: str, features_topic: str, start_ms: int,
            items_per_request: int = 4, flush: bool = True) -> list[Any]:
    """Served records, then the labeled samples of `n_requests` requests; returns the samples."""
    out: list[Any] = []
    for record, samples in world.requests(n_requests, items_per_request=items_per_request, start_ms=start_ms):
        producer.send(features_topic, key=record["served_feature_id"].encode(), value=encode_record(record))
        for s in samples:
            producer.send(samples_topic, key=s.user_id.encode(), value=s.SerializeToString())
        out += samples
    if flush:
        producer.flush()
    return out


def train_base(world: Any, encoder: Any, out_dir: Path, *, n_requests: int = 1500, epochs: int = 3, seed: int = 0,
               name: str = "deepfm", version: str = "d1", start_ms: int = 1_767_225_600_000) -> Any:
    """A tiny DeepFM trained on `world`'s clicks (Adam + SparseAdam, fixed seeds), saved as an artifact with ONNX."""
    import numpy as np
    import torch

    from ranking.artifact import save_artifact
    from ranking.models import build_model
    from ranking.train import _optimizer
    from streaming.trainer_features import ServedRows

    pairs, labels = [], []
    for record, samples in world.requests(n_requests, items_per_request=4, start_ms=start_ms):
        pairs += [(record, i) for i in range(len(samples))]
        labels += [s.label for s in samples]
    arrays = encoder.encode_online(ServedRows(pairs, ["user_id", "item_id"], encoder.feature_set))
    torch.manual_seed(seed)
    model = build_model("deepfm", encoder.layout(), embedding_dim=4, mlp_hidden=(16,), dropout=0.0)
    opt = _optimizer(model, 0.02)
    x = {k: torch.from_numpy(v) for k, v in arrays.items()}
    y = torch.tensor(labels, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(y.shape[0], generator=gen)
        for i in range(0, y.shape[0], 256):
            idx = perm[i : i + 256]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model({k: v[idx] for k, v in x.items()}), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    assert np.isfinite(float(loss.detach()))
    return save_artifact(model, encoder, out_dir, kind="deepfm", feature_set_name=encoder.feature_set,
                         feature_set_fingerprint=encoder.fingerprint, metrics={}, name=name, version=version, onnx=True)
