"""The result of a load run: :class:`LoadReport`, built from merged samples, and its text summary.

Latency percentiles are over OK answers only (a fast UNAVAILABLE must not make
the service look quick); failures show up as error counts per code, per second.
Everything in the report is plain data so ``to_dict()`` is JSON as is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.stats import percentiles
from loadtest.samples import DROPPED, OK, Samples, count_codes

# Histogram bins: 20 per decade from 1 us to 1000 s, so the log-scale plot is smooth and
# any latency a gRPC call can have lands in a bin (out-of-range values go to the end bins).
_HIST_EDGES_MS = np.logspace(-3, 6, 9 * 20 + 1)
LAG_WARN_MS = 5.0
"""Client lag p99 above this means the generator itself fell behind (CPU-starved or too few processes)."""


@dataclass
class RunSettings:
    """What was asked for. ``rate``/``arrival``/``max_in_flight`` are open-loop only, ``clients``/``think_time_s`` closed-loop only."""

    mode: str
    target: str
    duration_s: float
    warmup_s: float
    processes: int
    rate: float | None = None
    arrival: str | None = None
    max_in_flight: int | None = None
    clients: int | None = None
    think_time_s: float | None = None
    timeout_s: float | None = None


@dataclass
class LatencySummary:
    """Milliseconds; all None when there was no sample."""

    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None

    @classmethod
    def of(cls, latencies_s: np.ndarray) -> LatencySummary:
        if latencies_s.size == 0:
            return cls()
        p = percentiles(latencies_s)
        return cls(p50_ms=p["p50_ms"], p90_ms=p["p90_ms"], p99_ms=p["p99_ms"], p999_ms=p["p999_ms"],
                   max_ms=float(latencies_s.max() * 1e3), mean_ms=p["mean_ms"])


@dataclass
class SecondStats:
    """One second of the measured window, ``t`` seconds after it opened.

    ``requests``, ``ok``, ``errors``, ``dropped``, ``degraded`` and the percentiles
    count requests *scheduled* in that second (so a latency spike is placed where
    the load arrived); ``answered`` counts answers that *arrived* in it (throughput).
    """

    t: int
    requests: int
    answered: int
    ok: int
    errors: dict[str, int]
    dropped: int
    degraded: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class LatencyHistogram:
    """Counts of OK latencies in log-spaced bins; ``edges_ms`` has one more entry than ``counts``."""

    edges_ms: list[float]
    counts: list[int]

    @classmethod
    def of(cls, latencies_s: np.ndarray) -> LatencyHistogram:
        if latencies_s.size == 0:
            return cls([], [])
        ms = np.clip(latencies_s * 1e3, _HIST_EDGES_MS[0], _HIST_EDGES_MS[-1])
        counts, _ = np.histogram(ms, bins=_HIST_EDGES_MS)
        nz = np.flatnonzero(counts)
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        return cls([float(e) for e in _HIST_EDGES_MS[lo:hi + 1]], [int(c) for c in counts[lo:hi]])


@dataclass
class LoadReport:
    """Figures of one run over the measured window (warm-up excluded).

    ``requests = ok + errors + dropped`` exactly: every request due in the window
    is accounted for, including the ones the generator could not send.
    """

    settings: RunSettings
    requests: int
    ok: int
    errors: int
    dropped: int
    codes: dict[str, int]
    degraded: int
    degraded_rate: float | None
    items_mean: float | None
    offered_qps: float
    achieved_qps: float
    ok_qps: float
    latency: LatencySummary
    client_lag: LatencySummary
    series: list[SecondStats]
    histogram: LatencyHistogram
    per_worker: list[dict[str, int]]
    error_messages: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    wall_s: float = 0.0
    plots: dict[str, str] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        """Share of due requests that did not succeed (errors and drops)."""
        return (self.errors + self.dropped) / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (NaN/inf become None)."""
        return _clean(asdict(self))

    def summary(self, per_second: bool = False) -> str:
        return format_summary(self, per_second=per_second)


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _series(s: Samples, duration_s: float) -> list[SecondStats]:
    seconds = max(1, math.ceil(duration_s - 1e-9))
    sec = np.clip(np.floor(s.sched_s).astype(np.int64), 0, seconds - 1)
    answered = s.answered
    done_sec = np.floor(s.sched_s[answered] + s.latency_s[answered]).astype(np.int64)
    answered_per_sec = np.bincount(done_sec[(done_sec >= 0) & (done_sec < seconds)], minlength=seconds)
    order = np.argsort(sec, kind="stable")
    bounds = np.searchsorted(sec[order], np.arange(seconds + 1))
    out: list[SecondStats] = []
    for t in range(seconds):
        idx = order[bounds[t]:bounds[t + 1]]
        code = s.code[idx]
        ok = code == OK
        lat_ok = s.latency_s[idx][ok]
        failed = code[(code != OK) & (code != DROPPED)]
        errors = count_codes(failed)
        p50, p99 = (np.percentile(lat_ok, [50, 99]) * 1e3).tolist() if lat_ok.size else (None, None)
        out.append(SecondStats(
            t=t, requests=int(idx.size), answered=int(answered_per_sec[t]), ok=int(ok.sum()), errors=errors,
            dropped=int((code == DROPPED).sum()), degraded=int((s.degraded[idx] & ok).sum()),
            p50_ms=p50, p99_ms=p99,
        ))
    return out


def build_report(samples: Samples, settings: RunSettings, *, processes_samples: list[Samples] | None = None,
                 error_messages: dict[str, str] | None = None, started_at: str = "", wall_s: float = 0.0) -> LoadReport:
    """Aggregate merged samples into a report. ``processes_samples`` (per worker) only feed ``per_worker``."""
    s = samples
    ok_mask = s.ok
    ok = int(ok_mask.sum())
    dropped = int((s.code == DROPPED).sum())
    errors = len(s) - ok - dropped
    degraded = int((s.degraded & ok_mask).sum())
    answered = int(s.answered.sum())
    d = settings.duration_s
    lat_ok = s.latency_s[ok_mask]
    sent = s.code != DROPPED
    parts = processes_samples if processes_samples is not None else []
    return LoadReport(
        settings=settings,
        requests=len(s),
        ok=ok,
        errors=errors,
        dropped=dropped,
        codes=s.code_counts(),
        degraded=degraded,
        degraded_rate=degraded / ok if ok else None,
        items_mean=float(s.items[ok_mask].mean()) if ok else None,
        offered_qps=len(s) / d,
        achieved_qps=answered / d,
        ok_qps=ok / d,
        latency=LatencySummary.of(lat_ok),
        client_lag=LatencySummary.of(s.lag_s[sent].astype(np.float64)),
        series=_series(s, d),
        histogram=LatencyHistogram.of(lat_ok),
        per_worker=[{"requests": len(p), "ok": int(p.ok.sum()), "dropped": int((p.code == DROPPED).sum()),
                     "errors": len(p) - int(p.ok.sum()) - int((p.code == DROPPED).sum())} for p in parts],
        error_messages=dict(error_messages or {}),
        started_at=started_at,
        wall_s=wall_s,
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_summary(r: LoadReport, per_second: bool = False) -> str:
    """A short human table; ``per_second`` appends the time series."""
    st = r.settings
    if st.mode == "open":
        load = f"open loop, {st.rate:g} req/s {st.arrival} arrivals, max in flight {st.max_in_flight}"
    else:
        load = f"closed loop, {st.clients} clients, think time {st.think_time_s or 0:g} s"
    pct = lambda n: f"{100.0 * n / r.requests:.2f}%" if r.requests else "-"  # noqa: E731
    lat, lag = r.latency, r.client_lag
    lines = [
        f"{load} -> {st.target}; {st.processes} process(es), {st.duration_s:g} s measured after {st.warmup_s:g} s warm-up",
        f"requests   {r.requests}   ok {r.ok} ({pct(r.ok)})   errors {r.errors} ({pct(r.errors)})   dropped {r.dropped} ({pct(r.dropped)})",
        f"qps        offered {r.offered_qps:.1f}   answered {r.achieved_qps:.1f}   ok {r.ok_qps:.1f}",
        f"latency    p50 {_ms(lat.p50_ms)}   p90 {_ms(lat.p90_ms)}   p99 {_ms(lat.p99_ms)}   p99.9 {_ms(lat.p999_ms)}"
        f"   max {_ms(lat.max_ms)}   mean {_ms(lat.mean_ms)} ms (OK answers, from the scheduled send time)",
        f"client lag p99 {_ms(lag.p99_ms)}   max {_ms(lag.max_ms)} ms (actual minus scheduled send time)",
        "codes      " + ("   ".join(f"{k} {v}" for k, v in sorted(r.codes.items())) or "-"),
        f"degraded   {r.degraded}" + (f" ({100.0 * r.degraded_rate:.2f}% of ok)" if r.degraded_rate is not None else "")
        + (f"   items/response {r.items_mean:.1f}" if r.items_mean is not None else ""),
    ]
    if lag.p99_ms is not None and lag.p99_ms > LAG_WARN_MS:
        lines.append(f"warning: the generator fell behind its schedule (client lag p99 {lag.p99_ms:.1f} ms); latency "
                     "includes that delay: give it more --processes or a quieter machine")
    for code, msg in sorted(r.error_messages.items()):
        lines.append(f"  {code}: {msg}")
    if per_second:
        lines.append(f"{'t':>4} {'req':>7} {'answered':>8} {'ok':>7} {'err':>6} {'drop':>6} {'p50 ms':>9} {'p99 ms':>9}")
        for b in r.series:
            lines.append(f"{b.t:>4} {b.requests:>7} {b.answered:>8} {b.ok:>7} {sum(b.errors.values()):>6} "
                         f"{b.dropped:>6} {_ms(b.p50_ms):>9} {_ms(b.p99_ms):>9}")
    return "\n".join(lines)
