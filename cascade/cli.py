"""The `cascade` command: one entry point, one sub-command per job.

Each stage owns its commands; this module only dispatches, importing a stage
lazily so `cascade --help` stays fast and a broken stage cannot break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# sub-command -> (module, function, help). The function takes the remaining argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("cascade.demo", "main", "start the stack and services, drive traffic, show what happens"),
    "bench": ("bench.harness", "main", "run a benchmark: cascade bench NAME [--quick]"),
    "stack": ("stack.cli", "main", "run the embedded Redis and Kafka servers until Ctrl-C"),
    "data": ("featurestore.data.cli", "main", "load MovieLens-100K or generate a synthetic catalogue into the offline store"),
}


def register(name: str, module: str, function: str, help_text: str) -> None:
    """Let a stage add its own sub-command (e.g. `features`, `recall`, `rank`)."""
    COMMANDS[name] = (module, function, help_text)


def _load(name: str) -> Callable[[list[str]], int]:
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


def _optional_stage_commands() -> None:
    """Stages that exist register themselves through `<stage>.cli:COMMANDS`."""
    for stage in ("featurestore", "recall", "ranking", "rerank", "feed", "events", "streaming", "loadtest"):
        try:
            mod = importlib.import_module(f"{stage}.cli")
        except ModuleNotFoundError as exc:
            if exc.name in (f"{stage}.cli",):
                continue
            raise
        for name, (function, help_text) in getattr(mod, "COMMANDS", {}).items():
            register(name, f"{stage}.cli", function, help_text)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    _optional_stage_commands()
    parser = argparse.ArgumentParser(prog="cascade", description="Cascade recommendation pipeline")
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[2]}" for k, v in sorted(COMMANDS.items())))
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] not in COMMANDS:
        parser.error(f"unknown command {args[0]!r}; choose from {', '.join(sorted(COMMANDS))}")
    return int(_load(args[0])(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
