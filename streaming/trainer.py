"""The online FTRL trainer: labeled samples from Kafka -> FTRL-Proximal -> model versions ranking hot-swaps.

One process learns one model (``streaming.model_name``). A step:

1. poll up to ``trainer_batch_size`` records of the samples topic (every
   partition assigned to this process; offsets are the trainer's own, kept in
   its checkpoint, and mirrored to the ``trainer_group`` consumer group only
   for lag monitoring);
2. drop samples already learned (:class:`~streaming.trainer_state.SampleDedup`,
   by ``sample_id``) and undecodable records;
3. look up each sample's feature vector (:mod:`streaming.trainer_features`:
   the served-feature log, else the online store, else skip), encode it with
   the model's :class:`~ranking.encoding.FeatureEncoder` and read the FTRL
   coordinates off the arrays (:mod:`streaming.hashing`);
4. :meth:`~streaming.ftrl.FTRLProximal.learn_many`, whose pre-update
   predictions feed progressive validation (:mod:`streaming.trainer_metrics`).

Between steps: every ``publish_every_s`` seconds or ``publish_every_samples``
learned samples (whichever first, and only when something new was learned;
the first version as soon as anything was learned) a version is published (:mod:`streaming.publish`, on a background thread from a
snapshot of the weights); every ``checkpoint_every_s`` seconds and on shutdown
a checkpoint is written (:mod:`streaming.trainer_state`). A restart restores
the checkpoint and seeks to its offsets, so after a crash (even SIGKILL)
the samples learned since the last checkpoint are learned again exactly once
(their effect was lost with the process) and no sample is skipped.

The encoder (numeric statistics, categorical choices, bag lengths) is fixed
for the model's life and saved in the checkpoint. A fresh trainer takes the
encoder of the live version of ``ranking.model`` when it reads the same feature
set (fitted on the offline training set; re-bucketed to ``2**hash_bits`` rows),
else fits one on the first ``encoder_fit_rows`` samples' served vectors.

Starting: with a checkpoint, at its offsets (a partition it does not know, e.g.
one added since, from the beginning); hyperparameters (alpha, beta, l1, l2)
come from the configuration, the feature space (encoder, crosses, rows) from
the checkpoint. Without one, at the ``trainer_group``'s committed offsets, else
the beginning. Partitions added while running are picked up at the next start.
One trainer per model: the state is one process's memory.

Stacking (``streaming.trainer_base_model``, ``--base-model``; off by default):
the trainer corrects a batch model online instead of learning a model of its
own. It loads the base model's live version from the ranking registry (it must
read the trainer's feature set, same fingerprint, else the trainer refuses to
start), encodes with that artifact's encoder as it is (the FTRL table gets its
``hash_buckets`` rows, not ``2**hash_bits``), computes the base's logit ``b``
of every batch (its fp32 ONNX graph on ONNX Runtime) and learns
``logit = b + w_b * b + FTRL terms``: ``b`` is an offset (a fresh learner
predicts exactly what the base does) and an input with its own weight
``w_b``; gradients and progressive validation are on the full logit. Each
version published is a :class:`ranking.models.stacked.Stacked` (kind ``ftrl``:
the base's weights plus the linear correction, one graph ranking serves like
any other), its manifest naming the base (``model.streaming.base_model``:
name, version, encoder digest). The base version is fixed for the trainer's
life, and kept across restarts (the checkpoint names it); when another
version of the base goes live the trainer logs a warning and keeps stacking
on its own: to follow the new base, start a new model (another
``checkpoint_dir``, or delete the checkpoint). A checkpoint learned with
another base setting (plain vs stacked, another base name or encoder) is
refused. See :mod:`streaming.trainer_stacking`.

``learned_log`` (optional, for audits and the restart test): a file with the
id of every learned sample, one per line, fsynced with each checkpoint and
truncated back to the checkpoint's length on restart, so it lists the learned
samples of the restored model exactly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proto.cascade.v1 import records_pb2
from ranking.encoding import FeatureEncoder
from streaming import trainer_metrics as tm
from streaming.ftrl import FTRLProximal
from streaming.hashing import SparseLayout, parse_crosses
from streaming.publish import Publisher
from streaming.trainer_features import FeatureResolver, ServedFeatureCache, fit_table
from streaming.trainer_stacking import BaseModel, BaseModelError, StackedLayout, load_base
from streaming.trainer_state import (LearnedSet, SampleDedup, clean_temp_files, id_hash, load_checkpoint,
                                     save_checkpoint)

_log = logging.getLogger("cascade.streaming.trainer")

SAMPLES_TOPIC = "samples"


@dataclass
class _Polled:
    partition: int
    offset: int
    sample: Any  # LabeledSample, or None for an undecodable record


class TrainerError(RuntimeError):
    """The trainer cannot start as configured (a checkpoint of another feature space, no topic, ...)."""


class Trainer:
    """The online trainer; see the module docstring. ``start()``, then ``step()`` / ``run()``, then ``close()``."""

    def __init__(self, config: Any, bootstrap: str, *, repo: Any = None, registry: Any = None, feature_client: Any = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None, learned_log: str | os.PathLike[str] | None = None,
                 samples_topic: str = SAMPLES_TOPIC, features_topic: str | None = None, served_cache: bool = True,
                 base_model: str | None = None) -> None:
        from featurestore.repository import get_repo
        from ranking.registry import ModelRegistry

        self.config = config
        self.s = config.streaming
        self.bootstrap = bootstrap
        self.repo = repo or get_repo(config.features.definitions)
        self.feature_set = self.s.feature_set or config.ranking.feature_set
        self.resolved = self.repo.resolve(self.feature_set)
        self.registry = registry or ModelRegistry.from_config(config, repo=self.repo)
        self.client = feature_client
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else \
            config.paths.var_dir / self.s.checkpoint_subdir / f"trainer-{self.s.model_name}"
        self.learned_log_path = Path(learned_log) if learned_log else None
        self.samples_topic = samples_topic
        self.features_topic = features_topic
        self.use_served_cache = served_cache
        self.buckets = 2 ** int(self.s.hash_bits)
        self.base_name = base_model if base_model is not None else self.s.trainer_base_model
        # set by start()
        self.base: BaseModel | None = None
        self.encoder: FeatureEncoder | None = None
        self.layout: SparseLayout | StackedLayout | None = None
        self.learner: FTRLProximal | None = None
        self.resolver: FeatureResolver | None = None
        self.publisher: Publisher | None = None
        self.cache: ServedFeatureCache | None = None
        self.consumer: Any = None
        self.dedup = SampleDedup(self.s.dedup_capacity)
        self.learned = LearnedSet()
        self.pv = tm.ProgressiveValidation(self.s.metrics_window)
        self.offsets: dict[int, int] = {}
        self.counts = {"learned": 0, "positives": 0, "duplicate": 0, "no_features": 0, "bad_record": 0}
        self.newest_click_ms = 0
        self.newest_click_id = ""
        self.versions: list[str] = []
        self._pending: list[_Polled] = []
        self._pending_since = 0.0
        self._log_fh: Any = None
        self._log_bytes = 0
        self._learned_at_publish = 0
        self._last_publish = float("-inf")  # the first version goes out as soon as something was learned
        self._last_checkpoint = time.monotonic()
        self._last_export = 0.0
        self._base_live_seen = ""  # the base's live version last warned about
        self._publish_thread: threading.Thread | None = None
        self.publish_errors: list[BaseException] = []
        self.timing = {"poll_s": 0.0, "features_s": 0.0, "encode_s": 0.0, "base_s": 0.0, "learn_s": 0.0}  # step time

    # ------------------------------------------------------------------ start / restore

    def start(self) -> Trainer:
        ckpt = load_checkpoint(self.checkpoint_dir)
        clean_temp_files(self.checkpoint_dir)
        if self.use_served_cache:
            self.cache = ServedFeatureCache.from_config(self.bootstrap, self.config)
            if self.features_topic:
                self.cache.topic = self.features_topic
        if self.base_name:
            self._load_base(ckpt)
        if ckpt is not None:
            self._restore(ckpt)
        else:
            self.encoder = self.base.encoder if self.base is not None else self._registry_encoder()
            if self.encoder is not None:
                self._build()
            else:  # resolver for the fit: the unfitted encoder knows the fields already
                self.resolver = self._resolver(FeatureEncoder.from_config(self.resolved, self._ranking_sizes()))
            self._open_log(0)
        self._open_consumer()
        return self

    def _load_base(self, ckpt: dict[str, Any] | None) -> None:
        """The base model: the checkpoint's version when restoring (live or not), else the live one."""
        name = self.base_name
        if name == self.s.model_name:
            raise TrainerError(f"the trainer cannot stack model {name!r} on itself (streaming.trainer_base_model)")
        was = ckpt["meta"].get("base_model") if ckpt is not None else None
        if ckpt is not None and not was:
            raise TrainerError(f"the checkpoint in {self.checkpoint_dir} is a plain FTRL model; stacking on {name!r} "
                               "needs a new model (another checkpoint_dir, or remove the checkpoint)")
        if was and was["name"] != name:
            raise TrainerError(f"the checkpoint in {self.checkpoint_dir} was stacked on {was['name']!r}, not {name!r}: "
                               "a new base needs a new model (another checkpoint_dir)")
        try:
            self.base = load_base(self.registry, name, feature_set=self.feature_set,
                                  fingerprint=self.resolved.fingerprint, version=was["version"] if was else None)
        except BaseModelError as exc:
            raise TrainerError(str(exc)) from None
        if was and was.get("encoder_digest") != self.base.encoder.digest():
            raise TrainerError(f"base model {name}/{self.base.version}'s encoder (digest "
                               f"{self.base.encoder.digest()[:12]}...) is not the one the checkpoint learned with "
                               f"({str(was.get('encoder_digest'))[:12]}...)")
        self.buckets = self.base.encoder.hash_buckets
        self._base_live_seen = self.base.version
        _log.info("stacking on %s/%s (%s, logits on %s)", name, self.base.version, self.base.kind,
                  self.base.scorer.backend_name)

    def _check_base_live(self) -> None:
        """Warn (once per version) when another version of the base went live: this trainer keeps its own."""
        if self.base is None:
            return
        try:
            rec = self.registry.live(self.base.name)
        except Exception:  # noqa: BLE001 - a registry hiccup is not the trainer's problem
            return
        live = rec.version if rec is not None else ""
        if live != self._base_live_seen:
            self._base_live_seen = live
            if live != self.base.version:
                _log.warning("base model %s: version %s is live now; this trainer keeps stacking on %s (a new base "
                             "needs a new model: another checkpoint_dir)", self.base.name, live or "(none)",
                             self.base.version)

    def _ranking_sizes(self) -> Any:
        return self.config.ranking.model_copy(update={"hash_buckets": self.buckets})

    def _registry_encoder(self) -> FeatureEncoder | None:
        """The live main model's encoder when it reads this feature set (re-bucketed), else None."""
        from ranking.artifact import load_encoder

        try:
            rec = self.registry.live(self.config.ranking.model)
        except Exception:  # noqa: BLE001 - no registry yet: fit on samples instead
            rec = None
        if rec is None or rec.feature_set != self.feature_set or rec.feature_set_fingerprint != self.resolved.fingerprint:
            return None
        try:
            data = load_encoder(rec.path).to_json()
        except Exception as exc:  # noqa: BLE001
            _log.warning("cannot read the encoder of %s/%s: %s; fitting on samples", rec.name, rec.version, exc)
            return None
        data["hash_buckets"] = self.buckets
        enc = FeatureEncoder.from_json(data)
        _log.info("encoder taken from %s/%s (re-bucketed to %d rows)", rec.name, rec.version, self.buckets)
        return enc

    def _resolver(self, encoder: FeatureEncoder) -> FeatureResolver:
        return FeatureResolver(encoder, cache=self.cache, client=self.client, feature_set=self.resolved,
                               wait_s=self.s.served_wait_s)

    def _build(self, crosses: Sequence[tuple[str, str]] | None = None) -> None:
        assert self.encoder is not None
        if self.encoder.fingerprint != self.resolved.fingerprint:
            raise TrainerError(f"the encoder was built for feature set fingerprint {self.encoder.fingerprint[:12]}..., "
                               f"the definitions resolve {self.feature_set!r} to {self.resolved.fingerprint[:12]}...")
        if crosses is None:
            crosses = parse_crosses(self.s.ftrl_crosses, self.encoder)
        self.layout = SparseLayout(self.encoder, crosses)
        if self.base is not None:
            try:
                self.layout = StackedLayout(self.layout, self.base)
            except BaseModelError as exc:
                raise TrainerError(str(exc)) from None
        s = self.s
        self.learner = FTRLProximal(self.layout.dim, s.ftrl_alpha, s.ftrl_beta, s.ftrl_l1, s.ftrl_l2)
        self.resolver = self._resolver(self.encoder)
        self.publisher = Publisher(self.registry, self.layout, name=s.model_name, fingerprint=self.resolved.fingerprint,
                                   onnx=s.publish_onnx, keep_versions=s.keep_versions)
        self.publisher.clean_partial()
        _log.info("FTRL model: %s", self.layout.describe())

    def _restore(self, ckpt: dict[str, Any]) -> None:
        meta = ckpt["meta"]
        if meta.get("base_model") and self.base is None:
            raise TrainerError(f"the checkpoint in {self.checkpoint_dir} is stacked on {meta['base_model']['name']!r}; "
                               "set streaming.trainer_base_model to it, or use another checkpoint_dir for a plain model")
        self.encoder = FeatureEncoder.from_json(meta["encoder"])
        self._build([tuple(c) for c in meta["crosses"]])
        assert self.learner is not None and self.layout is not None
        if int(meta["dim"]) != self.layout.dim:
            raise TrainerError(f"checkpoint dim {meta['dim']} != layout dim {self.layout.dim}")
        if meta["hyperparameters"] != self.learner.hyperparameters():  # z and n stay valid: the new ones apply from now
            _log.info("FTRL hyperparameters %s (checkpoint: %s)", self.learner.hyperparameters(), meta["hyperparameters"])
        wanted = parse_crosses(self.s.ftrl_crosses, self.encoder)
        if wanted != list(self.layout.crosses) or self.encoder.hash_buckets != self.buckets:
            _log.warning("the checkpoint's feature space (crosses %s, %d rows) differs from the configured one (%s, %d "
                         "rows): keeping the checkpoint's; a new space needs a new model (another checkpoint_dir)",
                         self.layout.crosses, self.encoder.hash_buckets, wanted, self.buckets)
        self.learner.load_sparse(ckpt["idx"], ckpt["z"], ckpt["n"])
        self.dedup = SampleDedup.restore(ckpt["dedup"], meta["dedup"], self.s.dedup_capacity)
        self.learned = LearnedSet.from_json(meta["learned_set"])
        self.offsets = {int(p): int(o) for p, o in meta["offsets"].items()}
        self.counts.update({k: int(v) for k, v in meta["counts"].items()})
        self.newest_click_ms = int(meta.get("newest_click_ms", 0))
        self.newest_click_id = str(meta.get("newest_click_id", ""))
        self._learned_at_publish = self.counts["learned"]
        self._open_log(int(meta.get("learned_log_bytes", 0)))
        _log.info("restored checkpoint: %d samples learned, offsets %s", self.counts["learned"], self.offsets)

    def _open_log(self, keep_bytes: int) -> None:
        if self.learned_log_path is None:
            return
        self.learned_log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.learned_log_path, "a+b")
        size = fh.seek(0, os.SEEK_END)
        if size < keep_bytes:
            fh.close()
            raise TrainerError(f"learned log {self.learned_log_path} has {size} bytes, the checkpoint counted {keep_bytes}")
        fh.truncate(keep_bytes)
        fh.seek(keep_bytes)
        self._log_fh = fh
        self._log_bytes = keep_bytes

    def _open_consumer(self) -> None:
        from kafka import TopicPartition

        from stack.clients import kafka_consumer

        self.consumer = kafka_consumer(self.bootstrap, self.config.kafka, self.s.trainer_group,
                                       max_poll_records=self.s.trainer_batch_size)
        deadline = time.monotonic() + self.config.kafka.startup_timeout_s
        parts = self.consumer.partitions_for_topic(self.samples_topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = self.consumer.partitions_for_topic(self.samples_topic)
        if not parts:
            raise TrainerError(f"Kafka topic {self.samples_topic!r} not found at {self.bootstrap}")
        tps = [TopicPartition(self.samples_topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        for tp in tps:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])
                continue
            committed = None if self.offsets else self._committed(tp)
            if committed is not None:
                self.consumer.seek(tp, committed)
            else:
                self.consumer.seek_to_beginning(tp)

    def _committed(self, tp: Any) -> int | None:
        try:
            return self.consumer.committed(tp)
        except Exception:  # noqa: BLE001 - no group state: start from the beginning
            return None

    # ------------------------------------------------------------------ the loop

    def poll(self) -> list[_Polled]:
        t0 = time.perf_counter()
        got: list[_Polled] = []
        records = self.consumer.poll(timeout_ms=self.s.trainer_poll_ms, max_records=self.s.trainer_batch_size)
        for tp, messages in records.items():
            for m in messages:
                sample = records_pb2.LabeledSample()
                try:
                    sample.ParseFromString(m.value)
                    if not sample.sample_id:
                        raise ValueError("no sample_id")
                except Exception:  # noqa: BLE001 - counted and skipped
                    sample = None
                got.append(_Polled(tp.partition, m.offset, sample))
        if got:  # (an empty poll is waiting, not work)
            self.timing["poll_s"] += time.perf_counter() - t0
        return got

    def step(self) -> int:
        """One poll and its learning; returns the number of records consumed (0 when nothing arrived)."""
        polled = self.poll()
        if self.encoder is None:
            if polled:
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.extend(polled)
            ready = len(self._pending) >= self.s.encoder_fit_rows or (
                bool(self._pending) and time.monotonic() - self._pending_since >= self.s.encoder_fit_wait_s)
            if not ready:
                return len(polled)
            self._fit([p.sample for p in self._pending if p.sample is not None])
            polled, self._pending = self._pending, []
        if polled:
            for i in range(0, len(polled), self.s.trainer_batch_size):
                self._learn(polled[i : i + self.s.trainer_batch_size])
        self.maybe_publish()
        if time.monotonic() - self._last_checkpoint >= self.s.checkpoint_every_s:
            self.checkpoint()
        if polled and time.monotonic() - self._last_export >= 1.0:  # the gauges follow the live loss
            self._last_export = time.monotonic()
            self.pv.export()
        return len(polled)

    def _fit(self, samples: list[Any]) -> None:
        assert self.resolver is not None
        unfitted = self.resolver.encoder
        rows, _, _ = self.resolver.resolve(samples)
        if len(rows) == 0:
            _log.warning("no sample among %d had features: the encoder is fitted on none", len(samples))
        self.encoder = unfitted.fit(fit_table(unfitted, rows))
        _log.info("encoder fitted on %d samples' served vectors", len(rows))
        self._build()

    def _learn(self, batch: list[_Polled]) -> None:
        assert self.learner is not None and self.layout is not None and self.resolver is not None
        t0 = time.perf_counter()
        good = [p.sample for p in batch if p.sample is not None]
        bad = len(batch) - len(good)
        if bad:
            self.counts["bad_record"] += bad
            tm.SAMPLES.labels("bad_record").inc(bad)
        hashes = [id_hash(s.sample_id) for s in good]
        fresh = self.dedup.fresh(hashes)
        dups = int((~fresh).sum()) if len(good) else 0
        if dups:
            self.counts["duplicate"] += dups
            tm.SAMPLES.labels("duplicate").inc(dups)
        cand = [s for s, f in zip(good, fresh) if f]
        cand_h = [h for h, f in zip(hashes, fresh) if f]
        if cand:
            t1 = time.perf_counter()
            rows, ok, source = self.resolver.resolve(cand)
            self.timing["features_s"] += time.perf_counter() - t1
            missing = int((~ok).sum())
            if missing:
                self.counts["no_features"] += missing
                tm.SAMPLES.labels("no_features").inc(missing)
            learn = [s for s, o in zip(cand, ok) if o]
            learn_h = [h for h, o in zip(cand_h, ok) if o]
            if learn:
                t2 = time.perf_counter()
                arrays = self.encoder.encode_online(rows)  # type: ignore[union-attr]
                base, base_s = None, 0.0
                if self.base is not None:  # stacking: the base model's logits, offset and input of the learner
                    tb = time.perf_counter()
                    base = self.base.logits(arrays)
                    base_s = time.perf_counter() - tb
                    idx, val = self.layout.sparse(arrays, base)  # type: ignore[call-arg]
                else:
                    idx, val = self.layout.sparse(arrays)  # type: ignore[call-arg]
                t3 = time.perf_counter()
                y = np.fromiter((s.label for s in learn), dtype=np.float64, count=len(learn))
                p = self.learner.learn_many(idx, val, y, offset=base)
                self.timing["encode_s"] += t3 - t2 - base_s
                self.timing["base_s"] += base_s
                self.timing["learn_s"] += time.perf_counter() - t3
                self.pv.update(p, y)
                self.dedup.add(learn_h)
                self.learned.add(learn_h)
                self._note(learn, source[ok])
        for p in batch:
            if p.offset + 1 > self.offsets.get(p.partition, 0):
                self.offsets[p.partition] = p.offset + 1
        tm.BATCH_SECONDS.observe(time.perf_counter() - t0)

    def _note(self, learned: list[Any], source: np.ndarray) -> None:
        n = len(learned)
        self.counts["learned"] += n
        tm.SAMPLES.labels("learned").inc(n)
        served = int((source == 1).sum())
        if served:
            tm.FEATURE_SOURCE.labels("served_log").inc(served)
        if n - served:
            tm.FEATURE_SOURCE.labels("online").inc(n - served)
        for s in learned:
            if s.label >= 0.5:
                self.counts["positives"] += 1
                if s.HasField("click_timestamp_ms") and s.click_timestamp_ms >= self.newest_click_ms:
                    self.newest_click_ms = int(s.click_timestamp_ms)
                    self.newest_click_id = s.sample_id
        if self.newest_click_ms:
            tm.NEWEST_CLICK.set(self.newest_click_ms)
        if self._log_fh is not None:
            data = "".join(f"{s.sample_id}\n" for s in learned).encode()
            self._log_fh.write(data)
            self._log_bytes += len(data)

    # ------------------------------------------------------------------ publishing and checkpoints

    def maybe_publish(self, force: bool = False) -> bool:
        """Start publishing a version when due (and nothing is being published); True if one was started."""
        new = self.counts["learned"] - self._learned_at_publish
        if self.learner is None or new <= 0:
            return False
        due = force or new >= self.s.publish_every_samples or \
            time.monotonic() - self._last_publish >= self.s.publish_every_s
        if not due or (self._publish_thread is not None and self._publish_thread.is_alive()):
            return False
        self._check_base_live()
        weights = self.learner.weights()
        metrics = {"samples_learned": float(self.counts["learned"]), "positives_learned": float(self.counts["positives"]),
                   "newest_click_ms": float(self.newest_click_ms), **self.pv.export()}
        info = {"offsets": {str(p): o for p, o in sorted(self.offsets.items())}, "topic": self.samples_topic,
                "snapshot_ms": int(time.time() * 1000),
                "newest_click_ms": self.newest_click_ms, "newest_click_sample_id": self.newest_click_id,
                "samples_learned": self.counts["learned"], "learned_set": self.learned.to_json(),
                "hyperparameters": self.learner.hyperparameters()}
        if self.base is not None:
            info["base_model"] = self.base.describe()
        self._learned_at_publish = self.counts["learned"]
        self._last_publish = time.monotonic()
        self._publish_thread = threading.Thread(target=self._publish, args=(weights, metrics, info),
                                                name="ftrl-publish", daemon=True)
        self._publish_thread.start()
        return True

    def _publish(self, weights: np.ndarray, metrics: dict[str, float], info: dict[str, Any]) -> None:
        assert self.publisher is not None
        t0 = time.perf_counter()
        try:
            version = self.publisher.publish(weights, metrics, info)
        except Exception as exc:  # noqa: BLE001 - the next publish tries again; the live version keeps serving
            _log.exception("publishing failed")
            self.publish_errors.append(exc)
            tm.PUBLISHED.labels("failed").inc()
            return
        self.versions.append(version)
        tm.PUBLISHED.labels("ok").inc()
        tm.PUBLISH_SECONDS.observe(time.perf_counter() - t0)

    def wait_published(self, timeout_s: float = 60.0) -> None:
        t = self._publish_thread
        if t is not None:
            t.join(timeout_s)

    def checkpoint(self) -> Path | None:
        """Write the checkpoint now (nothing before the encoder exists)."""
        self._last_checkpoint = time.monotonic()
        if self.learner is None or self.layout is None or self.encoder is None:
            return None
        t0 = time.perf_counter()
        if self._log_fh is not None:
            self._log_fh.flush()
            os.fsync(self._log_fh.fileno())
        idx = self.learner.touched()
        meta = {"offsets": {str(p): o for p, o in self.offsets.items()}, "counts": dict(self.counts),
                "learned_set": self.learned.to_json(), "newest_click_ms": self.newest_click_ms,
                "newest_click_id": self.newest_click_id, "learned_log_bytes": self._log_bytes,
                "hyperparameters": self.learner.hyperparameters(), "dim": self.layout.dim,
                "crosses": [list(c) for c in self.layout.crosses], "encoder": self.encoder.to_json(),
                "topic": self.samples_topic, "saved_at_ms": int(time.time() * 1000),
                "base_model": self.base.describe() if self.base is not None else None}
        path = save_checkpoint(self.checkpoint_dir, idx=idx, z=self.learner.z[idx], n=self.learner.n[idx],
                               dedup=self.dedup, meta=meta)
        tm.CHECKPOINT_SECONDS.observe(time.perf_counter() - t0)
        self._commit_group()
        return path

    def _commit_group(self) -> None:
        """Mirror the checkpointed offsets to the consumer group (monitoring only; the checkpoint is the truth)."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not self.offsets:
            return
        try:
            self.consumer.commit({TopicPartition(self.samples_topic, p): OffsetAndMetadata(o, "", -1)
                                  for p, o in self.offsets.items()})
        except Exception as exc:  # noqa: BLE001
            _log.debug("offset commit to group %s failed: %s", self.s.trainer_group, exc)

    def run(self, stop: threading.Event | None = None, *, max_seconds: float | None = None,
            idle_exit_s: float | None = None) -> dict[str, Any]:
        """Step until `stop` is set (or `max_seconds`, or `idle_exit_s` without records); then checkpoint."""
        stop = stop or threading.Event()
        t_end = time.monotonic() + max_seconds if max_seconds else None
        idle_since = time.monotonic()
        while not stop.is_set():
            if self.step():
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if t_end is not None and time.monotonic() >= t_end:
                break
        self.checkpoint()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {**self.counts, "offsets": dict(self.offsets), "versions": list(self.versions),
                "base_model": f"{self.base.name}/{self.base.version}" if self.base is not None else None,
                "learned_set": self.learned.to_json(), **{k: v for k, v in self.pv.export().items()}}

    def close(self) -> None:
        self.wait_published()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self.base is not None:
            self.base.close()


# ============================================================================ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``cascade streaming train``: learn from the samples topic until SIGINT/SIGTERM (checkpoint on exit)."""
    import argparse
    import signal
    import sys

    from cascade.config import get_config

    parser = argparse.ArgumentParser(prog="cascade streaming train", description="The online FTRL trainer.")
    parser.add_argument("--kafka", default=None, help="Kafka bootstrap (default: config kafka.bootstrap_servers)")
    parser.add_argument("--redis-url", default=None, help="online store for samples without a served vector (default: config redis.url; none: skip them)")
    parser.add_argument("--topic", default=SAMPLES_TOPIC, help="labeled-samples topic")
    parser.add_argument("--features-topic", default=None, help="served-feature log topic (default: features)")
    parser.add_argument("--checkpoint-dir", default=None, help="default: paths.var_dir/streaming.checkpoint_subdir/trainer-<model>")
    parser.add_argument("--learned-log", default=None, help="also keep the id of every learned sample in this file")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    parser.add_argument("--base-model", default=None,
                        help="stack on this ranking model's live version (default: streaming.trainer_base_model; '' for none)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--idle-exit-s", type=float, default=None, help="stop after this long without a record")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bootstrap = args.kafka or config.kafka.bootstrap_servers
    if not bootstrap:
        print("error: no Kafka bootstrap (--kafka, KAFKA_BOOTSTRAP_SERVERS or kafka.bootstrap_servers)", file=sys.stderr)
        return 2
    from serving.metrics import start_metrics_server

    port = start_metrics_server(config.ports.metrics if args.metrics_port is None else args.metrics_port)
    client = None
    redis_url = args.redis_url or config.redis.url
    if redis_url:
        from featurestore.client import FeatureClient

        client = FeatureClient.from_config(config, redis_url, check_registry=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        trainer = Trainer(config, bootstrap, feature_client=client, checkpoint_dir=args.checkpoint_dir,
                          learned_log=args.learned_log, samples_topic=args.topic, features_topic=args.features_topic,
                          base_model=args.base_model)
        trainer.start()
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _log.info("training %s from %s (metrics on :%d)", config.streaming.model_name, args.topic, port)
    try:
        summary = trainer.run(stop, max_seconds=args.max_seconds, idle_exit_s=args.idle_exit_s)
    finally:
        trainer.close()
        if client is not None:
            client.close()
    _log.info("stopped: %s", summary)
    return 0


__all__ = ["SAMPLES_TOPIC", "Trainer", "TrainerError", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
