"""Click-through rate over time per experiment arm, as a live line and a PNG plot."""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Bucket:
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0  # sum of the true click probabilities: CTR without the draw noise

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def expected_ctr(self) -> float:
        return self.expected_clicks / self.impressions if self.impressions else math.nan


class CtrTracker:
    """Impressions and clicks per (arm, time bucket); thread-safe.

    Besides the observed CTR it keeps the expected CTR (mean true click
    probability of what was shown): the same quantity without the binomial
    noise, so two arms can be compared with far fewer impressions.
    """

    def __init__(self, bucket_s: float = 10.0) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be > 0")
        self.bucket_s = bucket_s
        self._data: dict[str, dict[int, Bucket]] = defaultdict(dict)
        self._lock = threading.Lock()

    def add(self, arm: str, t_s: float, impressions: int, clicks: int, expected_clicks: float) -> None:
        key = int(t_s // self.bucket_s)
        with self._lock:
            b = self._data[arm].setdefault(key, Bucket())
            b.impressions += impressions
            b.clicks += clicks
            b.expected_clicks += expected_clicks

    def arms(self) -> list[str]:
        with self._lock:
            return sorted(self._data)

    def series(self, arm: str) -> list[tuple[float, Bucket]]:
        """(bucket start in seconds, bucket) in time order."""
        with self._lock:
            return [(k * self.bucket_s, Bucket(**vars(b))) for k, b in sorted(self._data.get(arm, {}).items())]

    def total(self, arm: str, since_s: float = 0.0) -> Bucket:
        out = Bucket()
        for start, b in self.series(arm):
            if start >= since_s:
                out.impressions += b.impressions
                out.clicks += b.clicks
                out.expected_clicks += b.expected_clicks
        return out

    def line(self) -> str:
        """One status line: overall and last-bucket CTR per arm."""
        parts = []
        for arm in self.arms():
            series = self.series(arm)
            last = series[-1][1] if series else Bucket()
            tot = self.total(arm)
            parts.append(f"{arm}: CTR {100 * tot.ctr:.2f}% (last {self.bucket_s:.0f}s {100 * last.expected_ctr:.2f}% exp)")
        return " | ".join(parts)

    def plot(self, path: Path, title: str = "Click-through rate over time") -> Path:
        """Write a PNG of expected and observed CTR per arm; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
        for arm in self.arms():
            series = self.series(arm)
            xs = [start + self.bucket_s / 2 for start, _ in series]
            line, = ax.plot(xs, [100 * b.expected_ctr for _, b in series], label=f"{arm} (expected)", linewidth=2)
            ax.plot(xs, [100 * b.ctr for _, b in series], linestyle=":", color=line.get_color(), alpha=0.7,
                    label=f"{arm} (observed)")
        ax.set_xlabel("simulation time (s)")
        ax.set_ylabel("CTR (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path
