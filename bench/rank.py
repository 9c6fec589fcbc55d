"""Ranking models on every available backend: samples/s and achieved GFLOP/s against batch size.

Set-up: the real MovieLens layout (the feature sets ``deepfm_movielens`` and
``din_movielens`` resolved, the encoder fitted on a 20k-rating training split;
MovieLens is loaded into the offline store if absent) and models with the
configured sizes (``ranking.embedding_dim``, ``mlp_hidden``, ...), randomly
initialised: throughput does not depend on what the weights learned. Each
model is saved as an artifact in a temporary directory with ONNX, INT8 ONNX
and (DeepFM always; DIN in full runs) an AOTInductor package, then loaded
through :func:`ranking.artifact.load_scorer` -- the path the service uses --
with ``ranking.threads`` intra-op threads.

Measured, per model, backend and batch size in :data:`BATCHES`:
``<model>_<backend>_b<batch>_samples_per_s`` (at ``ranking.threads``; the
PyTorch backends also at one thread, ``<model>_<backend>_t1_b<batch>_...``:
with other jobs on the machine their 2-thread OpenMP kernels stall on a
descheduled thread, ONNX Runtime's pool does not) (batch / median call time of
``Scorer.score_encoded`` over random valid inputs, after warm-up) and
``..._gflops`` (FLOPs per call / median time). FLOPs per sample are counted
by ``torch.utils.flop_counter.FlopCounterMode`` on the PyTorch model (matmuls:
the MLPs and DIN's activation unit, ~all of the arithmetic) and reported as
``<model>_mflop_per_sample``; the analytic count of :meth:`macs_per_sample`
(which adds FM, pooling, numeric fields) as ``<model>_mflop_per_sample_analytic``.
``gemm_gflops`` is the ceiling measured in the same run (a 2048x2048 fp32
``torch.mm`` at ``ranking.threads`` threads, as ``bench baseline``), and
``..._ceiling_ratio`` = achieved / ceiling (always the ``ranking.threads``
ceiling, also for the 1-thread rows; ``gemm_1thread_gflops`` is one core's). Also ``encode_1000_ms``: encoding
1,000 candidates of one user from an ``OnlineFeatures`` (what the service does
per request), and the AOTInductor compile time.

Goal: ``deepfm_*_b1024`` and larger at >= 0.5 of the GEMM ceiling on CPU.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import step
from cascade.config import Config

BATCHES = (1, 32, 256, 1024, 4096)
GEMM_N = 2048


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(models=("deepfm", "din"), aoti=("deepfm",), min_time_s=0.25, min_reps=3, gemm_reps=6, max_rows=20_000)
    return dict(models=("deepfm", "din"), aoti=("deepfm", "din"), min_time_s=1.0, min_reps=10, gemm_reps=20, max_rows=20_000)


def _gemm_gflops(threads: int, reps: int) -> float:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(GEMM_N, GEMM_N, generator=g), torch.randn(GEMM_N, GEMM_N, generator=g)
        c = torch.empty(GEMM_N, GEMM_N)
        for _ in range(2):
            torch.mm(a, b, out=c)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return 2.0 * GEMM_N**3 / float(np.median(times)) / 1e9


def _flops_per_sample(model: Any, encoder: Any, batch: int = 256) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = {k: torch.from_numpy(v) for k, v in encoder.dummy(batch).items()}
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(x)
    return counter.get_total_flops() / batch


def _time_calls(fn: Any, arrays: dict[str, np.ndarray], min_time_s: float, min_reps: int) -> float:
    fn(arrays)
    fn(arrays)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        fn(arrays)
        times.append(time.perf_counter() - t)
        if len(times) >= 10_000:
            break
    return float(np.median(times))


def _online_features(table: Any, resolved: Any) -> Any:
    """An OnlineFeatures holding a training table's rows, in the online store's column conventions."""
    from featurestore.client import online_features_from_table

    return online_features_from_table(table, resolved)


def _one_user_request(table: Any, resolved: Any, n: int = 1000) -> Any:
    """1,000 candidates of one user: the user's columns repeated (one object, as the online read gives), items varied."""
    import pyarrow as pa

    rows = table.slice(0, n)
    user_cols = {rf.column for rf in resolved.features if rf.join_keys == ("user_id",)} | {"user_id"}
    first = table.slice(0, 1)
    out = {}
    for name in rows.column_names:
        out[name] = pa.concat_arrays([first[name].combine_chunks()] * n) if name in user_cols else rows[name].combine_chunks()
    feats = _online_features(pa.table(out), resolved)
    # the online store hands the same list object to every row of one user
    for i, rf in enumerate(resolved.features):
        if rf.column in user_cols and isinstance(feats._columns[i], list):
            feats._columns[i] = [feats._columns[i][0]] * n
    return feats


def run(quick: bool, config: Config) -> dict[str, Any]:
    import torch

    from featurestore.repository import get_repo
    from ranking.artifact import add_files, load_scorer, save_artifact
    from ranking.backends import available_backends
    from ranking.data import build_splits
    from ranking.encoding import FeatureEncoder
    from ranking.export import export_aot_inductor
    from ranking.models import build_from_settings

    plan = _plan(quick)
    ranking = config.ranking
    threads = int(ranking.threads)
    figures: dict[str, Any] = {"threads": threads}
    method: dict[str, str] = {}
    step(f"gemm ceiling: {GEMM_N}x{GEMM_N} fp32 torch.mm at {threads} threads")
    figures["gemm_gflops"] = _gemm_gflops(threads, plan["gemm_reps"])
    figures["gemm_1thread_gflops"] = _gemm_gflops(1, plan["gemm_reps"]) if threads != 1 else figures["gemm_gflops"]
    step(f"gemm: {figures['gemm_gflops']:.1f} GFLOP/s ({figures['gemm_1thread_gflops']:.1f} on 1 thread)")
    repo = get_repo(config.features.definitions)
    tmp = Path(tempfile.mkdtemp(prefix="cascade-bench-rank-"))
    try:
        torch.manual_seed(int(ranking.seed))
        for kind in plan["models"]:
            fs = "deepfm_movielens" if kind == "deepfm" else "din_movielens"
            step(f"{kind}: fitting the encoder on {fs} ({plan['max_rows']:,} ratings)")
            splits = build_splits(fs, config=config, max_rows=plan["max_rows"])
            resolved = repo.resolve(fs)
            encoder = FeatureEncoder.from_config(resolved, ranking).fit(splits.train)
            model = build_from_settings(kind, encoder.layout(), ranking).eval()
            flops = _flops_per_sample(model, encoder)
            figures[f"{kind}_mflop_per_sample"] = flops / 1e6
            figures[f"{kind}_mflop_per_sample_analytic"] = 2 * model.macs_per_sample() / 1e6
            d = tmp / kind
            step(f"{kind}: saving the artifact (ONNX, INT8 ONNX)")
            manifest = save_artifact(model, encoder, d, kind=kind, feature_set_name=fs,
                                     feature_set_fingerprint=resolved.fingerprint, metrics={}, int8=True)
            if kind in plan["aoti"]:
                step(f"{kind}: compiling the AOTInductor package")
                t = time.perf_counter()
                export_aot_inductor(model, encoder, tmp / f"{kind}.pt2")
                figures[f"{kind}_aoti_compile_s"] = time.perf_counter() - t
                manifest = add_files(d, {"model.pt2": tmp / f"{kind}.pt2"}, ["aotinductor"])
            # encoding 1,000 candidates of one user, as a Rank request does
            feats = _one_user_request(splits.test if splits.test.num_rows >= 1000 else splits.train, resolved)
            enc_times = []
            encoder.encode_online(feats)
            for _ in range(20 if quick else 100):
                t = time.perf_counter()
                encoder.encode_online(feats)
                enc_times.append(time.perf_counter() - t)
            figures[f"{kind}_encode_1000_ms"] = float(np.median(enc_times)) * 1e3
            for backend in available_backends(manifest):
                # torch backends also at 1 thread: with other jobs on the machine, torch's 2-thread
                # OpenMP kernels stall on a descheduled thread (measured 6-13k vs ~110k samples/s at b1024)
                thread_counts = [threads] + ([1] if threads != 1 and backend in ("eager", "aotinductor") else [])
                for n_threads in thread_counts:
                    step(f"{kind} on {backend} ({n_threads} threads): batches {', '.join(map(str, BATCHES))}")
                    try:
                        scorer = load_scorer(d, backend, n_threads)
                    except Exception as exc:  # noqa: BLE001 - a backend that cannot start is reported, not fatal
                        figures[f"{kind}_{backend}_error"] = f"{type(exc).__name__}: {exc}"
                        continue
                    tag = f"{kind}_{backend}" + ("" if n_threads == threads else f"_t{n_threads}")
                    for b in BATCHES:
                        arrays = encoder.dummy(b, seed=b)
                        sec = _time_calls(scorer.score_encoded, arrays, plan["min_time_s"], plan["min_reps"])
                        key = f"{tag}_b{b}"
                        figures[f"{key}_samples_per_s"] = b / sec
                        figures[f"{key}_gflops"] = flops * b / sec / 1e9
                        if "int8" not in backend:  # INT8 GEMMs have their own, higher ceiling
                            figures[f"{key}_ceiling_ratio"] = figures[f"{key}_gflops"] / figures["gemm_gflops"]
                    scorer.close()
                    step(f"{tag}: b1024 {figures[f'{tag}_b1024_samples_per_s']:,.0f} samples/s "
                         f"({figures[f'{tag}_b1024_gflops']:.0f} GFLOP/s), b4096 {figures[f'{tag}_b4096_samples_per_s']:,.0f} samples/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for kind in plan["models"]:
        ratios = {k: v for k, v in figures.items() if k.startswith(f"{kind}_") and k.endswith("_ceiling_ratio")
                  and ("_b1024_" in k or "_b4096_" in k) and "int8" not in k}
        if ratios:
            best = max(ratios, key=ratios.get)
            figures[f"{kind}_best_ceiling_ratio_b1024plus"] = ratios[best]
            figures[f"{kind}_best_b1024plus"] = best.removesuffix("_ceiling_ratio")
    method.update({
        "gemm_gflops": f"torch.mm of two {GEMM_N}x{GEMM_N} fp32 matrices, {threads} threads, median of {plan['gemm_reps']} calls.",
        "samples_per_s": "Scorer.score_encoded (the service's path: input checks, backend call, sigmoid) on random valid "
                         f"encoded inputs; batch / median call time over >= {plan['min_time_s']} s after two warm-up calls.",
        "gflops": "FlopCounterMode FLOPs per sample (matmuls) x batch / median call time; INT8 rows count the same "
                  "(fp32-equivalent) FLOPs and get no ceiling ratio (the fp32 GEMM is not their ceiling).",
        "encode_1000_ms": "FeatureEncoder.encode_online of 1,000 candidates of one user (user columns shared, as the online read gives).",
    })
    return {**figures, "method": method}
