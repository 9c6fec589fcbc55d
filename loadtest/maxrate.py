"""The highest open-loop arrival rate a service sustains within a p99 goal.

A step search: run ``step_duration_s`` at ``start_rate``, multiply by ``growth``
while the step passes (p99 within the goal, error-and-drop share within
``max_error_rate``), then bisect ``refine`` times between the last passing and
the first failing rate. Open loop on purpose: a closed loop slows down with the
server and would report a rate the server chose, not one it withstood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadtest.report import LAG_WARN_MS, LoadReport
from loadtest.runner import Progress, run_open_loop


@dataclass
class RateStep:
    rate: float
    passed: bool
    reason: str
    p99_ms: float | None
    ok_qps: float
    error_rate: float
    client_lag_p99_ms: float | None
    report: LoadReport = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("rate", "passed", "reason", "p99_ms", "ok_qps", "error_rate",
                                                "client_lag_p99_ms")}


@dataclass
class MaxRateResult:
    target: str
    p99_ms_goal: float
    max_error_rate: float
    best_rate: float | None
    """Highest passing rate tried; None when even the lowest failed."""
    stopped: str
    steps: list[RateStep]

    @property
    def best(self) -> LoadReport | None:
        """The report of the best passing step."""
        return next((s.report for s in self.steps if s.passed and s.rate == self.best_rate), None)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"target": self.target, "p99_ms_goal": self.p99_ms_goal, "max_error_rate": self.max_error_rate,
                "best_rate": self.best_rate, "stopped": self.stopped, "steps": [s.to_dict() for s in self.steps],
                "best": best.to_dict() if best is not None else None}

    def summary(self) -> str:
        lines = [f"max rate with p99 <= {self.p99_ms_goal:g} ms and error share <= {self.max_error_rate:g}: "
                 + (f"{self.best_rate:g} req/s" if self.best_rate is not None else "none") + f" ({self.stopped})",
                 f"{'rate':>10} {'verdict':>7} {'p99 ms':>9} {'ok/s':>9} {'errors':>7}  reason"]
        for s in self.steps:
            p99 = "-" if s.p99_ms is None else f"{s.p99_ms:.2f}"
            lines.append(f"{s.rate:>10g} {'pass' if s.passed else 'FAIL':>7} {p99:>9} {s.ok_qps:>9.1f} "
                         f"{100 * s.error_rate:>6.2f}%  {s.reason}")
        return "\n".join(lines)


def judge(report: LoadReport, p99_ms_goal: float, max_error_rate: float) -> tuple[bool, str]:
    """Whether one step meets the goal, and why not."""
    p99 = report.latency.p99_ms
    if report.ok == 0 or p99 is None:
        return False, "no successful answers"
    if report.error_rate > max_error_rate:
        worst = max(((k, v) for k, v in report.codes.items() if k != "OK"), key=lambda kv: kv[1], default=None)
        detail = f"{worst[0]} {worst[1]}" if worst else f"DROPPED {report.dropped}"
        return False, f"errors and drops {100 * report.error_rate:.2f}% > {100 * max_error_rate:g}% ({detail})"
    if p99 > p99_ms_goal:
        lag = report.client_lag.p99_ms
        behind = f"; the generator itself lagged (client lag p99 {lag:.1f} ms): add processes" \
            if lag is not None and lag > max(LAG_WARN_MS, p99_ms_goal / 2) else ""
        return False, f"p99 {p99:.2f} ms > {p99_ms_goal:g} ms{behind}"
    return True, "within goal"


def find_max_rate(target: str, p99_ms_goal: float, *, start_rate: float = 10.0, growth: float = 2.0,
                  max_rate: float | None = None, refine: int = 3, step_duration_s: float = 5.0,
                  warmup_s: float = 1.0, max_error_rate: float = 0.0, processes: int = 1,
                  progress: Progress | None = None, **load_kwargs: Any) -> MaxRateResult:
    """Step search for the highest rate within ``p99_ms_goal``; ``load_kwargs`` go to :func:`run_open_loop`."""
    if not start_rate > 0 or not growth > 1:
        raise ValueError(f"need start_rate > 0 and growth > 1, got {start_rate}, {growth}")
    if max_rate is not None and max_rate < start_rate:
        raise ValueError(f"max_rate ({max_rate}) < start_rate ({start_rate})")
    steps: list[RateStep] = []

    def attempt(rate: float) -> bool:
        report = run_open_loop(target, rate, step_duration_s, warmup_s=warmup_s, processes=processes,
                               progress=progress, **load_kwargs)
        passed, reason = judge(report, p99_ms_goal, max_error_rate)
        steps.append(RateStep(rate, passed, reason, report.latency.p99_ms, report.ok_qps, report.error_rate,
                              report.client_lag.p99_ms, report))
        if progress is not None:
            p99 = "-" if report.latency.p99_ms is None else f"{report.latency.p99_ms:.2f}"
            progress(f"[maxrate] {rate:g} req/s: p99 {p99} ms, ok {report.ok_qps:.1f}/s, "
                     f"errors+drops {100 * report.error_rate:.2f}% -> {'pass' if passed else 'FAIL'} ({reason})")
        return passed

    best: float | None = None
    rate = start_rate
    while True:
        if not attempt(rate):
            failed = rate
            break
        best = rate
        if max_rate is not None and rate >= max_rate:
            return MaxRateResult(target, p99_ms_goal, max_error_rate, best, f"max_rate {max_rate:g} reached", steps)
        rate = rate * growth if max_rate is None else min(rate * growth, max_rate)
    lo = best if best is not None else 0.0
    hi = failed
    for _ in range(refine):
        mid = (lo + hi) / 2
        if attempt(mid):
            lo = best = mid
        else:
            hi = mid
    return MaxRateResult(target, p99_ms_goal, max_error_rate, best,
                         f"first failure at {failed:g} req/s, then {refine} bisection step(s)", steps)
