"""``cascade data``: build the offline store's datasets.

    cascade data load-movielens [--force] [--root DIR]
    cascade data synth --users N --items N --events N [--seed S] [--root DIR] [--force] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade data", description="Build the offline store's datasets (Parquet).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    ml = sub.add_parser("load-movielens", help="write MovieLens-100K (from the recbole package) under <offline_root>/movielens")
    ml.add_argument("--force", action="store_true", help="rewrite files that already exist")
    ml.add_argument("--root", type=Path, default=None, help="offline store root (default: config's offline_root)")

    syn = sub.add_parser("synth", help="generate a synthetic feed under <offline_root>/synthetic_<tag>")
    syn.add_argument("--users", type=int, required=True)
    syn.add_argument("--items", type=int, required=True)
    syn.add_argument("--events", type=int, required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--categories", type=int, default=None, help="number of item categories (default 50)")
    syn.add_argument("--days", type=int, default=None, help="length of the event span in days (default 30)")
    syn.add_argument("--start", default=None, help="first day, ISO date in UTC (default 2026-01-01)")
    syn.add_argument("--no-latents", action="store_true", help="omit the taste / latent vector columns")
    syn.add_argument("--root", type=Path, default=None, help="offline store root (default: config's offline_root)")
    syn.add_argument("--force", action="store_true", help="regenerate even if the same spec is already there")
    syn.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    began = time.perf_counter()
    try:
        if args.action == "load-movielens":
            from featurestore.data.movielens import load_movielens

            ml = load_movielens(args.root, force=args.force)
            print(f"movielens: {ml.n_users} users, {ml.n_items} items, {ml.n_ratings} ratings in {ml.root}")
        else:
            from featurestore.data.synthetic import SyntheticSpec, generate

            options = {"n_categories": args.categories, "days": args.days, "start": args.start}
            spec = SyntheticSpec(
                n_users=args.users,
                n_items=args.items,
                n_events=args.events,
                seed=args.seed,
                write_latents=not args.no_latents,
                **{k: v for k, v in options.items() if v is not None},
            )
            syn = generate(spec, args.root, progress=not args.quiet, force=args.force)
            print(f"synthetic: {syn.n_users} users, {syn.n_items} items, {syn.n_events} events in {syn.root}")
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f"cascade data {args.action}: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - began:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
