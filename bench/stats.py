"""Small statistics helpers shared by benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentiles(samples_s: Sequence[float] | np.ndarray, prefix: str = "") -> dict[str, float]:
    """Latency summary in milliseconds of samples given in seconds.

    Returns ``{prefix}p50_ms, p90_ms, p99_ms, p999_ms, mean_ms`` (linear interpolation
    between order statistics, numpy's default). Raises ValueError on no samples.
    """
    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("percentiles() of no samples")
    p50, p90, p99, p999 = np.percentile(arr, [50, 90, 99, 99.9]) * 1e3
    return {
        f"{prefix}p50_ms": float(p50),
        f"{prefix}p90_ms": float(p90),
        f"{prefix}p99_ms": float(p99),
        f"{prefix}p999_ms": float(p999),
        f"{prefix}mean_ms": float(arr.mean() * 1e3),
    }


def rate(count: float, seconds: float) -> float:
    """Items per second; raises ValueError on a non-positive duration."""
    if seconds <= 0:
        raise ValueError(f"rate over a non-positive duration: {seconds}")
    return float(count) / float(seconds)
