"""`cascade rerank ...`: serve the rule engine, or check a rule chain.

    cascade rerank [serve] [--port N] [--redis-url URL] [--rules FILE]   run the RerankService (default)
    cascade rerank check [--rules FILE] [--json]                          validate the rules, print the chain

Exit codes: 0 success; 1 invalid rules (the message names the file, rule and key); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = {"rerank": ("main", "rerank: serve the rule engine")}


def check(argv: Sequence[str]) -> int:
    from cascade.config import get_config
    from rerank.rules_config import RulesConfigError, load_rules

    parser = argparse.ArgumentParser(prog="cascade rerank check", description="Validate a rerank rule chain and print it.")
    parser.add_argument("--rules", type=Path, default=None, help="rule chain (default: config rerank.rules_file)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()
    try:
        rules = load_rules(args.rules, config.rerank)
    except (RulesConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"policy_version": rules.version,
                          "rules": [r.model_dump(mode="json") for r in rules.rules]}))
        return 0
    print(f"policy {rules.version} ({args.rules or config.rerank.rules_file}); rules in order:")
    for i, r in enumerate(rules.rules):
        params = {k: v for k, v in r.model_dump(mode="json").items() if k not in ("type", "name", "enabled")}
        off = "" if r.enabled else "  [disabled]"
        print(f"  {i}. {r.rule_name} ({r.type}) {json.dumps(params)}{off}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "check":
        return check(args[1:])
    from rerank.service import serve

    if args and args[0] == "serve":
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
