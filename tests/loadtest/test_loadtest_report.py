"""Pure logic of the load generator: merging, percentiles, series, schedules, request factory, plots, search."""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import loadtest.maxrate as maxrate_mod
from bench.stats import percentiles
from cascade.config import get_config
from loadtest.maxrate import find_max_rate, judge
from loadtest.plots import plot_latency_histogram, plot_latency_over_time, plot_rate_curve
from loadtest.report import LoadReport, RunSettings, build_report
from loadtest.requests import FeedRequestFactory
from loadtest.samples import CLIENT_ERROR, DROPPED, OK, Samples, code_name, merge
from loadtest.worker import WorkerSpec, schedule

UNAVAILABLE, DEADLINE = 14, 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_samples(worker: int, n: int, duration_s: float, seed: int) -> Samples:
    rng = np.random.default_rng(seed)
    code = rng.choice([OK, OK, OK, OK, UNAVAILABLE, DEADLINE, DROPPED, CLIENT_ERROR], size=n)
    latency = rng.lognormal(mean=-4.0 + worker, sigma=0.7, size=n)  # workers see different latencies on purpose
    latency[code == DROPPED] = math.nan
    return Samples.from_columns(
        sched_s=rng.uniform(0, duration_s, n), latency_s=latency, lag_s=rng.uniform(0, 1e-3, n), code=code,
        degraded=(rng.random(n) < 0.3) & (code == OK), items=np.where(code == OK, 7, 0), worker=worker)


def _settings(duration_s: float = 3.0, mode: str = "open") -> RunSettings:
    return RunSettings(mode=mode, target="127.0.0.1:1", duration_s=duration_s, warmup_s=0.5, processes=3,
                       rate=100.0, arrival="uniform", max_in_flight=100)


@pytest.fixture()
def parts() -> list[Samples]:
    return [_random_samples(w, n, 3.0, seed=w) for w, n in enumerate((700, 400, 900))]


def test_merged_percentiles_equal_pooled_samples(parts: list[Samples]) -> None:
    merged = merge(parts)
    report = build_report(merged, _settings(), processes_samples=parts)
    pooled_codes = np.concatenate([p.code for p in parts])
    pooled_lat = np.concatenate([p.latency_s for p in parts])
    pooled_sched = np.concatenate([p.sched_s for p in parts])
    ok_lat = pooled_lat[pooled_codes == OK]
    expected = percentiles(ok_lat)
    assert report.latency.p50_ms == pytest.approx(expected["p50_ms"])
    assert report.latency.p90_ms == pytest.approx(expected["p90_ms"])
    assert report.latency.p99_ms == pytest.approx(expected["p99_ms"])
    assert report.latency.p999_ms == pytest.approx(expected["p999_ms"])
    assert report.latency.max_ms == pytest.approx(ok_lat.max() * 1e3)
    # Per-second percentiles are those of the pooled requests scheduled in that second.
    for bucket in report.series:
        in_sec = (np.floor(pooled_sched) == bucket.t) & (pooled_codes == OK)
        assert bucket.p50_ms == pytest.approx(np.percentile(pooled_lat[in_sec], 50) * 1e3)
        assert bucket.p99_ms == pytest.approx(np.percentile(pooled_lat[in_sec], 99) * 1e3)
        assert bucket.requests == int((np.floor(pooled_sched) == bucket.t).sum())


def test_merged_counts_are_exact_and_sum_over_workers(parts: list[Samples]) -> None:
    report = build_report(merge(parts), _settings(), processes_samples=parts)
    pooled = Counter(code_name(c) for p in parts for c in p.code)
    assert report.requests == 2000 == report.ok + report.errors + report.dropped
    assert report.ok == pooled["OK"] and report.dropped == pooled["DROPPED"]
    assert report.codes == {k: v for k, v in pooled.items() if k != "DROPPED"}
    assert sum(report.codes.values()) == report.ok + report.errors
    assert [w["requests"] for w in report.per_worker] == [700, 400, 900]
    for key in ("requests", "ok", "errors", "dropped"):
        assert sum(w[key] for w in report.per_worker) == getattr(report, key)
    assert sum(b.requests for b in report.series) == report.requests
    assert sum(b.dropped for b in report.series) == report.dropped
    assert sum(sum(b.errors.values()) for b in report.series) == report.errors
    degraded = sum(int((p.degraded & (p.code == OK)).sum()) for p in parts)
    assert report.degraded == degraded and report.degraded_rate == pytest.approx(degraded / report.ok)
    assert report.items_mean == 7.0
    assert report.offered_qps == pytest.approx(2000 / 3.0)
    assert report.achieved_qps == pytest.approx(int((merge(parts).code >= 0).sum()) / 3.0)
    assert sum(report.histogram.counts) == report.ok
    assert len(report.histogram.edges_ms) == len(report.histogram.counts) + 1


def test_report_is_plain_json_and_empty_run_has_no_nans() -> None:
    empty = build_report(Samples.empty(), _settings(duration_s=2.0))
    data = json.loads(json.dumps(empty.to_dict(), allow_nan=False))
    assert data["requests"] == 0 and data["latency"]["p99_ms"] is None
    assert [b["t"] for b in data["series"]] == [0, 1]
    assert empty.error_rate == 0.0
    assert "requests   0" in empty.summary(per_second=True)


def test_summary_names_the_figures(parts: list[Samples]) -> None:
    report = build_report(merge(parts), _settings(), processes_samples=parts,
                          error_messages={"UNAVAILABLE": "backend down"})
    text = report.summary(per_second=True)
    assert f"requests   {report.requests}" in text
    assert f"p99 {report.latency.p99_ms:.2f}" in text
    assert "UNAVAILABLE: backend down" in text
    assert len([ln for ln in text.splitlines() if ln.strip().split(" ")[0] in ("0", "1", "2")]) == 3


def test_uniform_schedule_splits_global_slots_across_workers() -> None:
    spec = WorkerSpec(index=0, processes=3, mode="open", target="x", grpc=get_config().grpc, duration_s=2.0,
                      warmup_s=0.5, factory=FeedRequestFactory(("u",)), seed=0, timeout_s=None, connect_timeout_s=1.0,
                      rate=40.0)
    per_worker = [list(schedule(WorkerSpec(**{**spec.__dict__, "index": i}))) for i in range(3)]
    times = sorted(t for w in per_worker for t, _ in w)
    assert times == pytest.approx([k / 40.0 for k in range(100)])  # 2.5 s at 40/s, each slot exactly once
    assert sum(m for w in per_worker for _, m in w) == 80  # the 2 s after warm-up
    assert [len(w) for w in per_worker] == [34, 33, 33]
    poisson = WorkerSpec(**{**spec.__dict__, "arrival": "poisson", "processes": 1, "duration_s": 50.0})
    arrivals = [t for t, _ in schedule(poisson)]
    assert arrivals == sorted(arrivals) and arrivals[-1] < 50.5
    assert len(arrivals) == pytest.approx(40 * 50.5, rel=0.1)


def test_request_factory_draws_users_reproducibly() -> None:
    uniform = FeedRequestFactory.numbered(50, prefix="u", count=7, surface="related_items")
    req = uniform(np.random.default_rng(3))
    assert req.count == 7 and req.context.surface == "related_items" and req.context.timestamp_ms > 0
    rng = np.random.default_rng(1)
    seen = Counter(uniform(rng).user_id for _ in range(5000))
    assert set(seen) == {f"u{i}" for i in range(1, 51)}
    zipf = FeedRequestFactory.numbered(50, distribution="zipf", zipf_s=1.2)
    copy = pickle.loads(pickle.dumps(zipf))  # crosses the spawn boundary
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [zipf(rng_a).user_id for _ in range(20)] == [copy(rng_b).user_id for _ in range(20)]
    rng = np.random.default_rng(2)
    z = Counter(zipf(rng).user_id for _ in range(5000))
    assert z.most_common(1)[0][0] == "1" and z["1"] > 5 * z.get("20", 0)
    with pytest.raises(ValueError):
        FeedRequestFactory((), count=1)
    with pytest.raises(ValueError):
        FeedRequestFactory(("a",), distribution="pareto")


def test_plots_are_valid_pngs(parts: list[Samples], tmp_path: Path) -> None:
    report = build_report(merge(parts), _settings(), processes_samples=parts)
    empty = build_report(Samples.empty(), _settings())
    for r, name in ((report, "full"), (empty, "empty")):
        for plot in (plot_latency_over_time, plot_latency_histogram):
            path = plot(r, tmp_path / f"{name}_{plot.__name__}.png")
            data = path.read_bytes()
            assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def _synthetic_report(rate: float, p99_s: float, errors: int = 0, lag_s: float = 0.0) -> LoadReport:
    n = 100
    code = np.array([UNAVAILABLE] * errors + [OK] * (n - errors))
    lat = np.full(n, p99_s)
    s = Samples.from_columns(np.linspace(0, 0.99, n), lat, np.full(n, lag_s), code, np.zeros(n, bool),
                             np.zeros(n, int), 0)
    return build_report(s, RunSettings(mode="open", target="t", duration_s=1.0, warmup_s=0.0, processes=1, rate=rate,
                                       arrival="uniform", max_in_flight=10))


def test_judge() -> None:
    assert judge(_synthetic_report(10, 0.005), 10.0, 0.0) == (True, "within goal")
    passed, reason = judge(_synthetic_report(10, 0.020), 10.0, 0.0)
    assert not passed and "p99" in reason
    passed, reason = judge(_synthetic_report(10, 0.005, errors=2), 10.0, 0.0)
    assert not passed and "UNAVAILABLE 2" in reason
    assert judge(_synthetic_report(10, 0.005, errors=2), 10.0, 0.05)[0]
    # A step the generator could not keep up with says so, in the verdict and in the summary.
    lagging = _synthetic_report(10, 0.5, lag_s=0.4)
    passed, reason = judge(lagging, 10.0, 0.0)
    assert not passed and "generator itself lagged" in reason
    assert "fell behind its schedule" in lagging.summary()
    assert "fell behind" not in _synthetic_report(10, 0.5).summary()


def test_find_max_rate_search_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The search itself, over a model of a service whose p99 jumps past 100 req/s (no server needed)."""
    def model(target: str, rate: float, duration_s: float, **kw: object) -> LoadReport:
        return _synthetic_report(rate, 0.005 if rate <= 100 else 0.5)

    monkeypatch.setattr(maxrate_mod, "run_open_loop", model)
    result = find_max_rate("t", 20.0, start_rate=10, growth=2, refine=3)
    assert [s.rate for s in result.steps] == [10, 20, 40, 80, 160, 120, 100, 110]
    assert result.best_rate == 100 and result.best is result.steps[6].report
    capped = find_max_rate("t", 20.0, start_rate=10, growth=4, max_rate=50)
    assert [s.rate for s in capped.steps] == [10, 40, 50] and capped.best_rate == 50
    none = find_max_rate("t", 1.0, start_rate=10, refine=2)
    assert none.best_rate is None and [s.rate for s in none.steps] == [10, 5, 2.5]
    json.dumps(result.to_dict(), allow_nan=False)
    assert "100 req/s" in result.summary()
    png = plot_rate_curve(result, tmp_path / "curve.png").read_bytes()
    assert png[:8] == PNG_MAGIC
