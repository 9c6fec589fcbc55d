"""``cascade rank``: train, export and evaluate ranking models.

    cascade rank train --model deepfm|din [--feature-set NAME] [--epochs N] [--out DIR] [--set key=value ...]
                       [--aot] [--[no-]int8] [--publish | --promote]
    cascade rank export ARTIFACT [--aot] [--int8]        add model.pt2 (AOTInductor) / model.int8.onnx
    cascade rank evaluate ARTIFACT [--backend NAME ...]  test-split AUC/logloss through the serving scorer

``train`` writes the artifact to ``--out`` or to
``<paths.artifacts_dir>/<ranking.artifacts_subdir>/<name>/<version>/`` (name:
``--name``, default the model kind) and prints the metrics as one JSON line
last on stdout. ``--set`` overrides ``RankingConfig`` fields for the run, e.g.
``--set dropout=0.3 --set mlp_hidden=[200,200]`` (values are JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COMMANDS = {"rank": ("main", "ranking: train, export, evaluate")}


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def models_root(config: Any) -> Path:
    return config.paths.artifacts_dir / config.ranking.artifacts_subdir


def _print_json(data: dict[str, Any]) -> None:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    print(json.dumps(clean(data), sort_keys=True))


def cmd_train(args: argparse.Namespace, config: Any) -> int:
    from ranking.artifact import read_manifest
    from ranking.train import train

    overrides = _overrides(args.set or [])
    name = args.name or args.model
    staging = None
    if args.out:
        out = Path(args.out)
    else:
        root = models_root(config) / name
        staging = root / f".staging-{secrets.token_hex(4)}"
        out = staging
    result = train(args.model, feature_set=args.feature_set, epochs=args.epochs, config=config, out_dir=out,
                   progress=not args.quiet, max_rows=args.max_rows, name=name,
                   export={"onnx": not args.no_onnx, "aot_inductor": args.aot,
                           "int8": (config.ranking.int8 if args.int8 is None else args.int8) and not args.no_onnx}, **overrides)
    manifest = result.manifest
    if staging is not None and manifest is not None:
        final = staging.parent / manifest.version
        os.replace(staging, final)
        manifest = read_manifest(final)
    print(result.summary(), file=sys.stderr)
    print(f"artifact: {manifest.path if manifest else out}", file=sys.stderr)
    published = None
    if (args.publish or args.promote) and manifest is not None:
        from ranking.registry import ModelRegistry

        published = ModelRegistry.from_config(config).publish(manifest.path, auto_promote=args.promote,
                                                               reason="cascade rank train")
        print(f"published {name}/{published}{' (live)' if args.promote else ''}", file=sys.stderr)
    _print_json({"artifact": str(manifest.path) if manifest else None, "version": manifest.version if manifest else None,
                 "backends": manifest.backends if manifest else [], "published": published, **result.metrics})
    return 0


def cmd_export(args: argparse.Namespace, config: Any) -> int:
    from ranking.artifact import AOTI_FILE, ONNX_FILE, ONNX_INT8_FILE, add_files, load_encoder, load_model, verify_artifact
    from ranking.export import check_onnx, export_aot_inductor, export_onnx, quantize_int8

    d = Path(args.artifact)
    manifest = verify_artifact(d)
    model, encoder = load_model(d), load_encoder(d)
    todo: dict[str, Path] = {}
    backends: list[str] = []
    metrics: dict[str, float] = {}
    stage = d.parent / f".{d.name}.export-{secrets.token_hex(4)}"
    stage.mkdir()
    try:
        if args.onnx or (args.int8 and ONNX_FILE not in manifest.files):
            t = time.perf_counter()
            export_onnx(model, encoder, stage / ONNX_FILE)
            metrics["onnx_max_abs_diff"] = check_onnx(model, encoder, stage / ONNX_FILE)
            todo[ONNX_FILE] = stage / ONNX_FILE
            backends += ["onnxruntime", "tensorrt"]
            print(f"onnx: {time.perf_counter() - t:.1f} s, max |diff| {metrics['onnx_max_abs_diff']:.2e}", file=sys.stderr)
        if args.int8:
            src = stage / ONNX_FILE if ONNX_FILE in todo else d / ONNX_FILE
            quantize_int8(src, stage / ONNX_INT8_FILE)
            todo[ONNX_INT8_FILE] = stage / ONNX_INT8_FILE
            backends.append("onnxruntime-int8")
        if args.aot:
            t = time.perf_counter()
            export_aot_inductor(model, encoder, stage / AOTI_FILE)
            todo[AOTI_FILE] = stage / AOTI_FILE
            backends.append("aotinductor")
            metrics["aoti_compile_seconds"] = time.perf_counter() - t
            print(f"aotinductor: compiled in {metrics['aoti_compile_seconds']:.1f} s", file=sys.stderr)
        manifest = add_files(d, todo, backends, metrics)
    finally:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
    _print_json({"artifact": str(d), "version": manifest.version, "backends": manifest.backends, **metrics})
    return 0


def evaluate_artifact(artifact: Path, backends: Sequence[str], *, config: Any, threads: int | None = None,
                      max_rows: int | None = None) -> dict[str, Any]:
    """Test-split metrics of an artifact through :func:`load_scorer` on each backend (plus max |Δp| vs the first)."""
    import numpy as np

    from featurestore.repository import get_repo
    from ranking.artifact import load_scorer, verify_artifact
    from ranking.data import build_splits, labels_of, rich_mask
    from ranking.train import evaluate

    manifest = verify_artifact(artifact)
    current = get_repo(config.features.definitions).resolve(manifest.feature_set_name).fingerprint
    out: dict[str, Any] = {"artifact": str(artifact), "version": manifest.version,
                           "feature_set_matches": current == manifest.feature_set_fingerprint}
    splits = build_splits(manifest.feature_set_name, config=config, max_rows=max_rows)
    y = labels_of(splits.test)
    rich = rich_mask(splits.test, config.ranking.rich_min_ratings)
    reference = None
    for backend in backends:
        scorer = load_scorer(artifact, backend, threads or config.ranking.threads)
        x = scorer.encoder.encode_table(splits.test)
        t = time.perf_counter()
        p = scorer.score_encoded(x)
        seconds = time.perf_counter() - t
        m = evaluate(p, y, rich)
        m["samples_per_s"] = y.size / seconds if seconds > 0 else float("nan")
        if reference is None:
            reference = p
        else:
            m["max_abs_prob_diff_vs_" + backends[0]] = float(np.max(np.abs(p - reference)))
            m["mean_abs_prob_diff_vs_" + backends[0]] = float(np.mean(np.abs(p - reference)))
        out[backend] = m
        scorer.close()
    return out


def cmd_evaluate(args: argparse.Namespace, config: Any) -> int:
    from ranking.artifact import verify_artifact
    from ranking.backends import available_backends

    d = Path(args.artifact)
    backends = args.backend or available_backends(verify_artifact(d))
    _print_json(evaluate_artifact(d, backends, config=config, threads=args.threads, max_rows=args.max_rows))
    return 0


# Sub-commands owned by the serving side, dispatched before argparse sees them.
DELEGATED = {
    "serve": ("ranking.service", "serve", "serve RankingService and ModelAdminService over gRPC"),
    "models": ("ranking.registry", "main", "the model registry: publish, list, pin, rollback, split"),
}


def main(argv: Sequence[str] | None = None) -> int:
    from cascade.config import get_config

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        import importlib

        module, function, _ = DELEGATED[args_list[0]]
        return int(getattr(importlib.import_module(module), function)(args_list[1:]) or 0)
    parser = argparse.ArgumentParser(prog="cascade rank", description="Ranking models: train, export, evaluate, serve, models.",
                                     epilog="; ".join(f"{k}: {v[2]}" for k, v in DELEGATED.items()))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train DeepFM or DIN on MovieLens-100K and save an artifact")
    p.add_argument("--model", choices=("deepfm", "din"), default=None, help="model kind (default: ranking.model)")
    p.add_argument("--feature-set", default=None, help="feature set (default: deepfm_movielens / din_movielens)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", default=None, help="artifact directory (default: <artifacts>/<models>/<name>/<version>)")
    p.add_argument("--name", default=None, help="logical model name (default: the kind)")
    p.add_argument("--max-rows", type=int, default=None, help="subsample the ratings (quick runs)")
    p.add_argument("--aot", action="store_true", help="also compile model.pt2 with AOTInductor (~30 s)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                   help="also write a dynamically quantised model.int8.onnx (default: ranking.int8, what is served)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a RankingConfig field for this run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--publish", action="store_true", help="register the artifact in the model registry (ranking.registry)")
    p.add_argument("--promote", action="store_true", help="publish and make it live (unless automatic promotion is suspended)")
    e = sub.add_parser("export", help="add compiled/quantised files to an artifact")
    e.add_argument("artifact")
    e.add_argument("--aot", action="store_true", help="compile model.pt2 with AOTInductor")
    e.add_argument("--int8", action="store_true", help="write model.int8.onnx (ONNX Runtime dynamic quantisation)")
    e.add_argument("--onnx", action="store_true", help="(re-)export model.onnx")
    v = sub.add_parser("evaluate", help="test-split metrics of an artifact through the serving scorer")
    v.add_argument("artifact")
    v.add_argument("--backend", action="append", help="backend(s) to evaluate (default: all available)")
    v.add_argument("--threads", type=int, default=None)
    v.add_argument("--max-rows", type=int, default=None)
    args = parser.parse_args(args_list)
    config = get_config()
    if args.command == "train":
        args.model = args.model or config.ranking.model
        return cmd_train(args, config)
    if args.command == "export":
        if not (args.aot or args.int8 or args.onnx):
            args.aot = True
        return cmd_export(args, config)
    return cmd_evaluate(args, config)


if __name__ == "__main__":
    sys.exit(main())
