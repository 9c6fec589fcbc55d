"""`cascade features ...`: plan, apply and inspect feature definitions.

    cascade features plan                      diff the definitions against the live registry
    cascade features apply [--allow-breaking]  publish them as a new version
    cascade features versions                  list applied versions
    cascade features show [SET] [--json]       a feature set's resolved schema (or list everything)
    cascade features materialize ...           see featurestore.materialize
    cascade features skew ...                  see featurestore.skew

Every command takes ``--definitions FILE`` and ``--registry DIR`` (defaults:
``features.definitions`` and the registry under ``paths.var_dir``).

Exit codes: 0 success; 1 invalid definitions, an unknown name, or an apply
refused for breaking changes (nothing written); 2 bad usage or a sub-command
that is not available.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

COMMANDS = {"features": ("main", "feature store: apply, plan, versions, materialize, skew")}

# sub-commands implemented elsewhere: name -> (module, function); they get the remaining argv
DELEGATED = {
    "materialize": ("featurestore.materialize", "cli_main"),
    "skew": ("featurestore.skew", "cli_main"),
    "serve": ("featurestore.service", "serve"),
    "stream": ("featurestore.streaming", "cli_main"),
}


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config features.definitions)")
    common.add_argument("--registry", type=Path, default=None, help="registry directory (default: config registry_dir)")
    parser = argparse.ArgumentParser(prog="cascade features", description="Feature store: definitions, registry, materialization.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plan", parents=[common], help="show what `apply` would change, and whether it is breaking")
    apply = sub.add_parser("apply", parents=[common], help="publish the definitions as a new registry version")
    apply.add_argument("--allow-breaking", action="store_true", help="apply even incompatible changes (affected views get new versions)")
    sub.add_parser("versions", parents=[common], help="list applied registry versions")
    show = sub.add_parser("show", parents=[common], help="print a feature set's resolved schema (no SET: list sets and views)")
    show.add_argument("feature_set", nargs="?", metavar="SET")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    for name in DELEGATED:
        sub.add_parser(name, help=f"see `cascade features {name} --help`", add_help=False)
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    module_name, function = DELEGATED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _err(f"`cascade features {name}` is not available: cannot import {module_name} ({exc})")
        return 2
    fn = getattr(module, function, None)
    if not callable(fn):
        _err(f"`cascade features {name}` is not available: {module_name} has no {function}(argv)")
        return 2
    return int(fn(argv) or 0)


def _repo(args: argparse.Namespace) -> Any:
    from featurestore.repository import load_repo

    return load_repo(args.definitions)


def _registry(args: argparse.Namespace) -> Any:
    from featurestore.registry import Registry

    return Registry(args.registry) if args.registry else Registry.from_config()


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        return _delegate(args_list[0], args_list[1:])
    parser = _parser()
    if not args_list:
        parser.print_help()
        return 2
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 2

    from featurestore.registry import BreakingChangeError, RegistryError
    from featurestore.repository import DefinitionError, UnknownDefinition

    try:
        return {"plan": _plan, "apply": _apply, "versions": _versions, "show": _show}[args.command](args)
    except (DefinitionError, FileNotFoundError) as exc:
        _err(str(exc))
        return 1
    except BreakingChangeError as exc:
        print(exc.plan.format())
        _err(str(exc))
        return 1
    except (RegistryError, UnknownDefinition) as exc:
        _err(str(exc))
        return 1


def _plan(args: argparse.Namespace) -> int:
    plan = _registry(args).plan(_repo(args))
    print(plan.format())
    return 0


def _apply(args: argparse.Namespace) -> int:
    registry = _registry(args)
    repo = _repo(args)
    before = registry.live()
    applied = registry.apply(repo, allow_breaking=args.allow_breaking)
    if before is not None and applied.version == before.version:
        print(f"No changes: version {applied.version} is already live.")
        return 0
    plan_text = applied.summary
    print(f"Applied version {applied.version} ({registry.path}).")
    for key in ("added", "changed", "removed"):
        if plan_text.get(key):
            print(f"  {key}: {', '.join(plan_text[key])}")
    if applied.forced:
        print("Breaking changes were applied; re-materialize these views before serving:")
        for reason in applied.data.get("breaking", []):
            print(f"  ! {reason}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    registry = _registry(args)
    versions = registry.versions()
    if not versions:
        print(f"No versions applied in {registry.path}; run `cascade features apply`.")
        return 0
    live = versions[-1].version
    for v in versions:
        s = v.summary
        counts = ", ".join(f"{len(s.get(k, []))} {k}" for k in ("added", "changed", "removed"))
        flags = (" live" if v.version == live else "") + (" forced" if v.forced else "")
        print(f"v{v.version:<4} {v.applied_at}  fingerprint {v.fingerprint}  {counts}{'  [' + flags.strip() + ']' if flags else ''}")
    return 0


def _show(args: argparse.Namespace) -> int:
    repo = _repo(args)
    if not args.feature_set:
        if args.json:
            print(json.dumps({"feature_sets": list(repo.feature_sets), "views": {n: list(v.feature_names) for n, v in repo.views.items()}}, indent=2))
            return 0
        print(f"{repo!r}  fingerprint {repo.fingerprint()}")
        print("feature sets:")
        for name in repo.feature_sets:
            r = repo.resolve(name)
            print(f"  {name:<24} {len(r)} features  keys {', '.join(r.join_keys) or '-'}")
        print("views:")
        for name, view in repo.views.items():
            print(f"  {name:<24} {type(view).__name__:<20} {', '.join(view.feature_names)}")
        return 0
    resolved = repo.resolve(args.feature_set)
    if args.json:
        print(json.dumps(resolved.to_json(), indent=2, default=str))
        return 0
    print(f"feature set {resolved.name}: {len(resolved)} features, fingerprint {resolved.fingerprint}")
    if resolved.description:
        print(f"  {resolved.description}")
    print(f"join keys: {', '.join(resolved.join_keys) or '-'}")
    print(f"request inputs: {', '.join(resolved.request_inputs) or '-'}")
    width = max(len(f.ref) for f in resolved.features)
    print(f"  {'#':>3}  {'feature':<{width}}  {'dtype':<12} default")
    for i, f in enumerate(resolved.features, 1):
        print(f"  {i:>3}  {f.ref:<{width}}  {f.dtype.value:<12} {f.default!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
