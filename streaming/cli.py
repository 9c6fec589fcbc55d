"""`cascade streaming ...`: the learning loop's commands.

    cascade streaming join       impressions ⋈ events -> labelled samples (streaming.joiner_cli)
    cascade streaming features   events -> online features, through the feature store's updater (streaming.features)
    cascade streaming train      labelled samples -> FTRL model versions in the ranking registry (streaming.trainer)

A sub-command is a function ``fn(argv) -> exit code`` in `SUBCOMMANDS` (name ->
(fn, help)); keep imports inside the function so ``cascade --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

COMMANDS = {"streaming": ("main", "streaming learning loop: join, features, train (cascade streaming --help)")}


def join(argv: Sequence[str]) -> int:
    from streaming.joiner_cli import main as run

    return run(argv)


def features(argv: Sequence[str]) -> int:
    from streaming.features import main as run

    return run(argv)


def train(argv: Sequence[str]) -> int:
    from streaming.trainer import main as run

    return run(argv)


SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "join": (join, "join impressions with events into labelled samples (exactly once)"),
    "features": (features, "keep the online features fed by the events topic live (feature store updater)"),
    "train": (train, "learn the FTRL model from the samples topic and publish versions for ranking to hot-swap"),
}


def _usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: cascade streaming COMMAND [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    entry = SUBCOMMANDS.get(args[0])
    if entry is None:
        print(f"error: unknown command {args[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    return int(entry[0](args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
