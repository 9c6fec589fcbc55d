"""The load generator against a real gRPC FeedService on loopback (the stub in conftest.py).

Assertions are on counts and on relationships (late vs early latency, QPS
within loose bounds of N/d), never on absolute timings.
"""

from __future__ import annotations

import socket

import pytest

from loadtest.maxrate import find_max_rate
from loadtest.runner import LoadTestError, run_closed_loop, run_open_loop


def test_open_loop_counts_rate_codes_and_degraded(feed_server) -> None:  # type: ignore[no-untyped-def]
    servicer = feed_server.behave(delay_s=0.001, fail_every=5, degraded_every=4, items=5)
    lines: list[str] = []
    r = run_open_loop(feed_server.address, 100.0, 2.0, warmup_s=0.5, progress=lines.append)
    # Every due request is accounted for, exactly: 2 s at 100/s after the warm-up.
    assert r.requests == 200 == r.ok + r.errors + r.dropped
    assert r.dropped == 0
    assert set(r.codes) == {"OK", "UNAVAILABLE"} and sum(r.codes.values()) == r.ok + r.errors
    assert abs(r.codes["UNAVAILABLE"] - 40) <= 2  # every 5th call by arrival order
    assert "every k-th call fails" in r.error_messages["UNAVAILABLE"]
    assert servicer.calls == 250  # warm-up requests were sent too
    # The rate was achieved: each second of the window saw ~100 answers arrive (loose), 200 in all.
    assert r.offered_qps == pytest.approx(100.0)
    assert r.achieved_qps == pytest.approx(100.0)
    assert [b.requests for b in r.series] == [100, 100]
    assert all(60 <= b.answered <= 140 for b in r.series), [b.answered for b in r.series]
    assert abs(r.degraded - r.ok / 4) <= 2 and r.degraded_rate == pytest.approx(0.25, abs=0.02)
    assert r.items_mean == 5.0
    assert r.latency.p50_ms is not None and r.latency.p50_ms >= 1.0  # the server sleeps 1 ms
    assert lines and lines[-1].startswith("[loadtest open") and "ok 200" in lines[-1]


def test_multiprocess_run_merges_worker_totals(feed_server) -> None:  # type: ignore[no-untyped-def]
    feed_server.behave(fail_every=3)
    r = run_open_loop(feed_server.address, 60.0, 1.5, warmup_s=0.3, processes=2)
    assert r.requests == 90 == r.ok + r.errors + r.dropped
    assert [w["requests"] for w in r.per_worker] == [45, 45]
    for key in ("requests", "ok", "errors", "dropped"):
        assert sum(w[key] for w in r.per_worker) == getattr(r, key)
    assert r.errors == r.codes["UNAVAILABLE"] and abs(r.errors - 30) <= 2


def test_queueing_shows_when_the_server_is_slower_than_the_arrivals(feed_server) -> None:  # type: ignore[no-untyped-def]
    # Capacity 50/s (one call at a time, 20 ms each) against 80 arrivals/s: a queue builds up, and since
    # latency runs from the scheduled send time the late requests show it.
    feed_server.behave(delay_s=0.02, concurrency=1)
    r = run_open_loop(feed_server.address, 80.0, 1.5, timeout_s=10.0)
    assert r.requests == 120 and r.ok == 120
    early, late = r.series[0].p50_ms, r.series[1].p50_ms
    assert early is not None and late is not None
    assert late > 1.5 * early, [b.p50_ms for b in r.series]
    assert r.latency.max_ms is not None and r.latency.max_ms > 10 * 20.0  # far beyond the 20 ms service time


def test_closed_loop_qps_is_clients_over_delay(feed_server) -> None:  # type: ignore[no-untyped-def]
    d, clients = 0.05, 4
    feed_server.behave(delay_s=d)
    r = run_closed_loop(feed_server.address, clients, 1.5, warmup_s=0.3, processes=2)
    assert r.errors == 0 and r.dropped == 0 and r.requests == r.ok
    assert 0.5 * clients / d <= r.ok_qps <= 1.1 * clients / d
    assert r.latency.p50_ms is not None and r.latency.p50_ms >= d * 1e3  # never faster than the server's sleep
    assert len(r.per_worker) == 2 and sum(w["requests"] for w in r.per_worker) == r.requests
    assert all(w["requests"] > 0 for w in r.per_worker)


def test_overflow_beyond_max_in_flight_is_counted_as_dropped(feed_server) -> None:  # type: ignore[no-untyped-def]
    feed_server.behave(delay_s=0.2)
    r = run_open_loop(feed_server.address, 100.0, 1.0, max_in_flight=4)
    assert r.requests == 100 == r.ok + r.errors + r.dropped
    assert r.dropped > 0 and r.ok > 0
    assert "DROPPED" not in r.codes
    assert sum(b.dropped for b in r.series) == r.dropped


def test_unreachable_target_fails_fast_with_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LoadTestError, match="cannot connect"):
        run_open_loop(f"127.0.0.1:{port}", 10.0, 1.0, connect_timeout_s=0.5)


def test_find_max_rate_stops_below_capacity(feed_server) -> None:  # type: ignore[no-untyped-def]
    # Capacity 100/s; at 180/s the queue grows by 80 calls per second, so p99 must exceed the goal.
    feed_server.behave(delay_s=0.01, concurrency=1)
    result = find_max_rate(feed_server.address, 50.0, start_rate=20.0, growth=3.0, refine=0,
                           step_duration_s=1.0, warmup_s=0.2, timeout_s=10.0)
    rates = [s.rate for s in result.steps]
    assert rates == [20.0 * 3 ** i for i in range(len(rates))]
    assert rates[-1] <= 180.0 and not result.steps[-1].passed and "p99" in result.steps[-1].reason
    assert all(s.passed for s in result.steps[:-1])
    assert result.best_rate == (rates[-2] if len(rates) > 1 else None)
    if result.best is not None:
        assert result.best.latency.p99_ms is not None and result.best.latency.p99_ms <= 50.0
