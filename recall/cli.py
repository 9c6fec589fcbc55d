"""``cascade recall``: build the embedding index, query it, manage its versions.

    cascade recall build [--dataset movielens|synthetic] [--kind auto|hnsw|ivfpq|flat] [--epochs N] ...
    cascade recall query --user ID [--k 20] [--recent 12,50,7] [--online]
    cascade recall versions [--name NAME]
    cascade recall activate VERSION [--name NAME]

Sub-commands live in `SUBCOMMANDS` (name -> (add_arguments, run, help)); another
stage adds its own with `subcommand`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

COMMANDS = {"recall": ("main", "recall: build the index, query it")}

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, Any], int]
SUBCOMMANDS: dict[str, tuple[AddArgs, Run, str]] = {}


def subcommand(name: str, help_text: str, add_arguments: AddArgs | None = None) -> Callable[[Run], Run]:
    """Register ``cascade recall NAME``: ``@subcommand("x", "help", add_args) def run(args, config) -> int``."""

    def deco(fn: Run) -> Run:
        SUBCOMMANDS[name] = (add_arguments or (lambda p: None), fn, help_text)
        return fn

    return deco


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("movielens", "synthetic"), default="movielens")
    p.add_argument("--name", default=None, help="artifact set under the recall artifacts dir (default: the dataset)")
    p.add_argument("--artifacts-dir", type=Path, default=None, help="explicit artifact set directory (overrides --name)")


def _root(args: argparse.Namespace, config: Any) -> Path:
    from recall.artifacts import artifacts_root

    return args.artifacts_dir if args.artifacts_dir is not None else artifacts_root(config, args.name or args.dataset)


# ----------------------------------------------------------------------------- build


def _build_args(p: argparse.ArgumentParser) -> None:
    _name_arg(p)
    p.add_argument("--kind", choices=("auto", "hnsw", "ivfpq", "ivfpq_fastscan", "flat"), default=None, help="index kind (default: config recall.index_kind)")
    p.add_argument("--metric", choices=("ip", "cosine"), default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads while training (default: torch's)")
    p.add_argument("--offline-root", type=Path, default=None, help="offline store root (default: config offline_root)")
    p.add_argument("--keep", type=int, default=None, help="versions to keep (default: config recall.index_keep_versions; 0 keeps all)")
    p.add_argument("--no-activate", action="store_true", help="write the version without pointing CURRENT at it")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@subcommand("build", "train the two towers, build the FAISS index, write a new artifact version", _build_args)
def run_build(args: argparse.Namespace, config: Any) -> int:
    from recall.artifacts import build_artifact, read_manifest
    from recall.index import IndexParams

    params = IndexParams.from_config(config.recall, kind=args.kind, metric=args.metric)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("seed", args.seed)) if v is not None}
    began = time.perf_counter()
    path = build_artifact(args.dataset, config=config, name=args.name, index_params=params, progress=not args.quiet,
                          activate=not args.no_activate,
                          keep=(config.recall.index_keep_versions if args.keep is None else args.keep) or None, evaluate=not args.no_eval,
                          offline_root=args.offline_root, artifacts_dir=args.artifacts_dir, threads=args.threads,
                          **overrides)
    manifest = read_manifest(path)
    print(f"recall {args.dataset}: version {manifest['version']} ({manifest['index']['kind']}, "
          f"{manifest['index']['items']} items x {manifest['index']['dim']}) in {path}"
          f"{'' if args.no_activate else ' (now CURRENT)'}")
    print("metrics: " + json.dumps(manifest["metrics"], sort_keys=True))
    print(f"done in {time.perf_counter() - began:.1f}s")
    return 0


# ----------------------------------------------------------------------------- query


def _query_args(p: argparse.ArgumentParser) -> None:
    _name_arg(p)
    p.add_argument("--user", type=int, required=True)
    p.add_argument("-k", "--k", type=int, default=20)
    p.add_argument("--recent", default=None, help="comma-separated recent item ids, most recent first (overrides the stored list)")
    p.add_argument("--version", default=None, help="a version other than CURRENT")
    p.add_argument("--online", action="store_true",
                   help="read the user's features from the online store (REDIS_URL / config redis.url) instead of the offline store")
    p.add_argument("--as-of", default=None, help="offline: features as of this ISO time (default: after the last interaction)")
    p.add_argument("--offline-root", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _offline_features(config: Any, refs: Sequence[str], user: int, spec: Any, as_of: str | None,
                      root: Path | None) -> dict[str, Any]:
    import pyarrow as pa

    from featurestore.offline import OfflineStore
    from featurestore.repository import get_repo

    repo = get_repo(config.features.definitions)
    with OfflineStore(root or config.offline_root) as store:
        if as_of is not None:
            at = datetime.fromisoformat(as_of)
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
            ts = pa.array([at], pa.timestamp("us", "UTC"))
        else:
            src = store.relation(repo.view(spec.events_view).source)
            last = src.aggregate("max(event_ts)").fetchall()[0][0]
            ts = pa.array([last], pa.timestamp("us", "UTC"))
        table = store.get_training_set(pa.table({"user_id": [user], "event_ts": ts}), list(refs), repo.views)
    return {ref: table[ref.replace(":", "__", 1)][0].as_py() for ref in refs}


@subcommand("query", "recall items for one user from the current index", _query_args)
def run_query(args: argparse.Namespace, config: Any) -> int:
    from recall.artifacts import current_version, load_artifact

    root = _root(args, config)
    version = args.version or current_version(root)
    if version is None:
        print(f"cascade recall query: no index in {root}; run `cascade recall build --dataset {args.dataset}`", file=sys.stderr)
        return 1
    art = load_artifact(root / version)
    refs = art.required_features
    if args.online:
        from featurestore.client import FeatureClient

        if not config.redis.url:
            print("cascade recall query --online: set REDIS_URL (or redis.url) to the online store", file=sys.stderr)
            return 1
        client = FeatureClient.from_config(config, config.redis.url, check_registry=False)
        try:
            features = client.get_online_features("user", [args.user], list(refs)).to_rows()[0]
        finally:
            client.close()
    else:
        features = _offline_features(config, refs, args.user, art.encoder.spec, args.as_of, args.offline_root)
    recent = [int(x) for x in args.recent.split(",") if x.strip()] if args.recent else None
    t = time.perf_counter()
    ids, scores = art.recall(features, recent, args.k)
    ms = (time.perf_counter() - t) * 1e3
    history = recent if recent is not None else features.get(art.encoder.history_feature) or []
    if args.json:
        print(json.dumps({"user": args.user, "version": art.version, "features": features, "recent_items": list(history),
                          "items": ids.tolist(), "scores": [round(float(s), 5) for s in scores], "ms": round(ms, 3)}, default=str))
        return 0
    print(f"user {args.user} (version {art.version}); features: "
          + ", ".join(f"{r}={features.get(r)!r}" for r in art.encoder.spec.user_features))
    print(f"recent items ({len(history)}): {list(history)[:art.encoder.history_len]}")
    for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist()), 1):
        print(f"{rank:4d}  item {i:>8d}  score {s:9.4f}")
    print(f"({ms:.2f} ms: query vector + {art.index.kind} search)")
    return 0


# ----------------------------------------------------------------------------- versions


@subcommand("versions", "list artifact versions with their metrics", _name_arg)
def run_versions(args: argparse.Namespace, config: Any) -> int:
    from recall.artifacts import ArtifactError, current_version, list_versions, read_manifest

    root = _root(args, config)
    current = current_version(root)
    versions = list_versions(root)
    if not versions:
        print(f"no versions in {root}")
        return 0
    for v in versions:
        try:
            m = read_manifest(root / v)
            info = f"{m['index']['kind']:6s} {m['index']['items']:>9d} items  " + json.dumps(
                {k: v2 for k, v2 in m.get("metrics", {}).items() if "@" in k}, sort_keys=True)
        except (ArtifactError, KeyError) as exc:
            info = f"unreadable: {exc}"
        print(f"{'*' if v == current else ' '} {v}  {info}")
    return 0


def _activate_args(p: argparse.ArgumentParser) -> None:
    _name_arg(p)
    p.add_argument("version")


@subcommand("activate", "point CURRENT at a version (roll forward or back); live indexes that watch pick it up", _activate_args)
def run_activate(args: argparse.Namespace, config: Any) -> int:
    from recall.artifacts import set_current, verify_artifact

    root = _root(args, config)
    verify_artifact(root / args.version)
    set_current(root, args.version)
    print(f"CURRENT -> {args.version} in {root}")
    return 0


# ----------------------------------------------------------------------------- entry


def _parser() -> argparse.ArgumentParser:
    import recall.jobs  # noqa: F401  (registers serve, covisit, trending, fresh)

    parser = argparse.ArgumentParser(prog="cascade recall", description="Recall: the embedding index and its versions.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, (add_arguments, _, help_text) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from cascade.config import get_config

    from recall.artifacts import ArtifactError

    try:
        return int(SUBCOMMANDS[args.action][1](args, get_config()) or 0)
    except (ArtifactError, FileNotFoundError, ValueError) as exc:
        print(f"cascade recall {args.action}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
