"""CTR tracking per arm and its plot."""

from __future__ import annotations

import math

import pytest

from simulation.ctr import CtrTracker


def test_buckets_sum_per_arm_and_time() -> None:
    t = CtrTracker(bucket_s=10)
    t.add("on", 1.0, 10, 2, 1.5)
    t.add("on", 9.0, 10, 0, 0.5)
    t.add("on", 12.0, 5, 5, 4.0)
    t.add("off", 3.0, 4, 1, 1.0)
    assert t.arms() == ["off", "on"]
    (s0, b0), (s1, b1) = t.series("on")
    assert (s0, b0.impressions, b0.clicks) == (0.0, 20, 2) and b0.expected_ctr == pytest.approx(0.1)
    assert (s1, b1.ctr) == (10.0, 1.0)
    assert t.total("on").impressions == 25 and t.total("on", since_s=10).clicks == 5
    assert math.isnan(t.total("missing").ctr)
    assert "on: CTR" in t.line() and "off: CTR" in t.line()


def test_plot_writes_a_png(tmp_path) -> None:
    t = CtrTracker(bucket_s=1)
    for i in range(5):
        t.add("on", i, 100, 10 + i, 10.0 + i)
        t.add("off", i, 100, 10, 10.0)
    path = t.plot(tmp_path / "ctr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
