"""``cascade loadtest``: drive FeedService.GetFeed and report latency, throughput and errors.

    cascade loadtest open    --target HOST:PORT --rate R [--duration S] [--processes P] [--arrival uniform|poisson] ...
    cascade loadtest closed  --target HOST:PORT --clients N [--think-time S] ...
    cascade loadtest maxrate --target HOST:PORT --p99-ms GOAL [--start-rate R] [--growth G] [--refine K] ...

Progress goes to stderr once a second; the summary table to stdout. With
``--out DIR``: ``report.json``, ``summary.txt``, ``latency_over_time.png`` and
``latency_histogram.png`` (maxrate: ``maxrate.json``, ``maxrate_p99.png`` and the
plots of the best passing step). ``--json`` prints the report as one JSON line
instead of the table.

Exit codes: 0 the run completed (whatever the service answered); 1 it could
not run (no connection, a worker crashed); 2 bad usage; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COMMANDS = {"loadtest": ("main", "loadtest: open-loop, closed-loop and max-rate load tests of FeedService.GetFeed")}


def _common(p: argparse.ArgumentParser, *, duration: bool = True) -> None:
    p.add_argument("--target", required=True, help="FeedService address, HOST:PORT")
    if duration:
        p.add_argument("--duration", type=float, default=30.0, help="measured seconds (default 30)")
        p.add_argument("--warmup", type=float, default=2.0, help="seconds sent but not measured first (default 2)")
    p.add_argument("--processes", type=int, default=1, help="worker processes sharing the load (default 1)")
    p.add_argument("--timeout", type=float, default=None, help="per-call deadline in s (default grpc.default_deadline_s)")
    p.add_argument("--connect-timeout", type=float, default=None,
                   help="seconds to wait for the first connection (default grpc.default_deadline_s)")
    p.add_argument("--users", type=int, default=1000, help="user pool size: ids PREFIX1..PREFIXN (default 1000)")
    p.add_argument("--user-prefix", default="", help="prefix of generated user ids (default none)")
    p.add_argument("--user-dist", choices=("uniform", "zipf"), default="uniform", help="how users are drawn")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent for --user-dist zipf (default 1.1)")
    p.add_argument("--count", type=int, default=10, help="GetFeedRequest.count (default 10)")
    p.add_argument("--surface", default="home_feed", help="RequestContext.surface (default home_feed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user draws")
    p.add_argument("--out", type=Path, default=None, help="directory for report.json, summary.txt and PNG plots")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line instead of the table")
    p.add_argument("--quiet", action="store_true", help="no per-second progress lines")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade loadtest", description="Load-test FeedService.GetFeed over gRPC.")
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("open", help="fixed arrival rate; latency from each request's scheduled send time")
    _common(p)
    p.add_argument("--rate", type=float, required=True, help="arrivals per second, all processes together")
    p.add_argument("--arrival", choices=("uniform", "poisson"), default="uniform", help="inter-arrival times")
    p.add_argument("--max-in-flight", type=int, default=None, help="outstanding calls before due requests are dropped")

    p = sub.add_parser("closed", help="N clients each send, wait for the answer, think, repeat")
    _common(p)
    p.add_argument("--clients", type=int, required=True, help="concurrent clients, all processes together")
    p.add_argument("--think-time", type=float, default=0.0, help="seconds a client waits between calls (default 0)")

    p = sub.add_parser("maxrate", help="highest open-loop rate whose p99 stays within a goal")
    _common(p, duration=False)
    p.add_argument("--p99-ms", type=float, required=True, help="p99 latency goal in ms")
    p.add_argument("--start-rate", type=float, default=10.0, help="first rate tried (default 10)")
    p.add_argument("--growth", type=float, default=2.0, help="rate factor between steps until one fails (default 2)")
    p.add_argument("--max-rate", type=float, default=None, help="stop growing here")
    p.add_argument("--refine", type=int, default=3, help="bisection steps after the first failure (default 3)")
    p.add_argument("--step-duration", type=float, default=5.0, help="measured seconds per step (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per step (default 1)")
    p.add_argument("--max-error-rate", type=float, default=0.0, help="share of errors+drops a passing step may have")
    p.add_argument("--arrival", choices=("uniform", "poisson"), default="uniform", help="inter-arrival times")
    p.add_argument("--max-in-flight", type=int, default=None, help="outstanding calls before due requests are dropped")
    return parser


def _progress(quiet: bool) -> Any:
    return None if quiet else (lambda line: print(line, file=sys.stderr, flush=True))


def _write(out: Path | None, name: str, data: dict[str, Any], summary: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=2) + "\n")
    (out / "summary.txt").write_text(summary + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args_list else 2
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)

    from loadtest.maxrate import find_max_rate
    from loadtest.plots import RATE_CURVE, plot_rate_curve, write_plots
    from loadtest.requests import FeedRequestFactory
    from loadtest.runner import DEFAULT_MAX_IN_FLIGHT, LoadTestError, run_closed_loop, run_open_loop

    try:
        factory = FeedRequestFactory.numbered(args.users, prefix=args.user_prefix, count=args.count,
                                              surface=args.surface, distribution=args.user_dist, zipf_s=args.zipf_s)
        common: dict[str, Any] = {"processes": args.processes, "timeout_s": args.timeout, "factory": factory,
                                  "seed": args.seed, "connect_timeout_s": args.connect_timeout,
                                  "progress": _progress(args.quiet)}
        if args.mode == "maxrate":
            result = find_max_rate(
                args.target, args.p99_ms, start_rate=args.start_rate, growth=args.growth, max_rate=args.max_rate,
                refine=args.refine, step_duration_s=args.step_duration, warmup_s=args.warmup,
                max_error_rate=args.max_error_rate, arrival=args.arrival,
                max_in_flight=args.max_in_flight or DEFAULT_MAX_IN_FLIGHT, **common)
            best = result.best
            if args.out is not None:
                plot_rate_curve(result, args.out / RATE_CURVE)
                if best is not None:
                    write_plots(best, args.out)
            _write(args.out, "maxrate.json", result.to_dict(),
                   result.summary() + ("\n\nbest step:\n" + best.summary(per_second=True) if best else ""))
            print(json.dumps(result.to_dict()) if args.json else result.summary())
            return 0
        if args.mode == "open":
            report = run_open_loop(args.target, args.rate, args.duration, warmup_s=args.warmup, arrival=args.arrival,
                                   max_in_flight=args.max_in_flight or DEFAULT_MAX_IN_FLIGHT, **common)
        else:
            report = run_closed_loop(args.target, args.clients, args.duration, warmup_s=args.warmup,
                                     think_time_s=args.think_time, **common)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.out is not None:
        write_plots(report, args.out)
    _write(args.out, "report.json", report.to_dict(), report.summary(per_second=True))
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
