"""PNG plots of a :class:`LoadReport`: latency over time and the latency histogram.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot,
no global backend switch), so plotting works headless and from any thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from loadtest.report import LoadReport

if TYPE_CHECKING:
    from loadtest.maxrate import MaxRateResult

LATENCY_OVER_TIME = "latency_over_time.png"
LATENCY_HISTOGRAM = "latency_histogram.png"
RATE_CURVE = "maxrate_p99.png"


def _title(r: LoadReport) -> str:
    s = r.settings
    load = f"open loop {s.rate:g} req/s ({s.arrival})" if s.mode == "open" else f"closed loop, {s.clients} clients"
    return f"GetFeed {load} -> {s.target}, {s.processes} process(es)"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_latency_over_time(r: LoadReport, path: Path | str) -> Path:
    """Top: p50 and p99 per second (log scale), red crosses on seconds with errors. Bottom: answers/s and errors/s by code."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    t = [b.t for b in r.series]
    p50 = [b.p50_ms if b.p50_ms is not None else float("nan") for b in r.series]
    p99 = [b.p99_ms if b.p99_ms is not None else float("nan") for b in r.series]
    top.plot(t, p50, marker=".", label="p50")
    top.plot(t, p99, marker=".", label="p99")
    if r.latency.p99_ms is not None:
        top.axhline(r.latency.p99_ms, color="grey", linestyle=":", label=f"overall p99 {r.latency.p99_ms:.1f} ms")
    err_t = [b.t for b in r.series if b.errors or b.dropped]
    if err_t:  # along the top edge, whatever the latency scale
        top.scatter(err_t, [0.97] * len(err_t), transform=top.get_xaxis_transform(), marker="x", color="red",
                    zorder=3, clip_on=False, label="seconds with errors or drops")
    if any(v == v for v in p50 + p99):
        top.set_yscale("log")
    top.set_ylabel("latency (ms, from scheduled send)")
    top.set_title(_title(r))
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="best", fontsize="small")

    bottom.plot(t, [b.answered for b in r.series], color="black", label="answered/s")
    codes = sorted({c for b in r.series for c in b.errors})
    base = [0] * len(t)
    for code in codes:
        vals = [b.errors.get(code, 0) for b in r.series]
        bottom.bar(t, vals, bottom=base, label=f"{code}/s", alpha=0.7)
        base = [a + v for a, v in zip(base, vals)]
    if any(b.dropped for b in r.series):
        bottom.bar(t, [b.dropped for b in r.series], bottom=base, label="dropped/s", color="red", alpha=0.5)
    bottom.set_xlabel("seconds since the measured window opened")
    bottom.set_ylabel("per second")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="best", fontsize="small")
    return _save(fig, Path(path))


def plot_latency_histogram(r: LoadReport, path: Path | str) -> Path:
    """OK latencies in log-spaced bins (log x), with p50/p99/p99.9 marked."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    h = r.histogram
    if h.counts:
        ax.stairs(h.counts, h.edges_ms, fill=True, alpha=0.6)
        ax.set_xscale("log")
        for name, v, style in (("p50", r.latency.p50_ms, "--"), ("p99", r.latency.p99_ms, "-."),
                               ("p99.9", r.latency.p999_ms, ":")):
            if v is not None:
                ax.axvline(v, color="black", linestyle=style, label=f"{name} {v:.2f} ms")
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no successful answers", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("OK answers")
    ax.set_title(f"{_title(r)}\n{r.ok} OK answers")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, Path(path))


def write_plots(r: LoadReport, out_dir: Path | str) -> dict[str, str]:
    """Both plots into ``out_dir``; records and returns their paths in ``r.plots``."""
    out = Path(out_dir)
    r.plots["latency_over_time"] = str(plot_latency_over_time(r, out / LATENCY_OVER_TIME))
    r.plots["latency_histogram"] = str(plot_latency_histogram(r, out / LATENCY_HISTOGRAM))
    return r.plots


def plot_rate_curve(result: MaxRateResult, path: Path | str) -> Path:
    """p99 against offered rate for each step of a max-rate search, with the goal line."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    steps = sorted(result.steps, key=lambda s: s.rate)
    for passed, colour, label in ((True, "green", "pass"), (False, "red", "fail")):
        pts = [(s.rate, s.p99_ms) for s in steps if s.passed == passed and s.p99_ms is not None]
        if pts:
            ax.scatter(*zip(*pts), color=colour, label=label, zorder=3)
    pts = [(s.rate, s.p99_ms) for s in steps if s.p99_ms is not None]
    if pts:
        ax.plot(*zip(*pts), color="grey", alpha=0.5)
    ax.axhline(result.p99_ms_goal, color="black", linestyle="--", label=f"goal p99 {result.p99_ms_goal:g} ms")
    if result.best_rate is not None:
        ax.axvline(result.best_rate, color="green", linestyle=":", label=f"max rate {result.best_rate:g} req/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"max-rate search -> {result.target}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, Path(path))
