"""The demo's live terminal view: QPS, p50/p99 per stage, degraded rate, model versions, CTR per arm."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

STAGES = ("features", "recall", "ranking", "rerank", "total")


@dataclass
class _Sample:
    at: float
    timings: dict[str, float]
    degraded: bool


class FeedObserver:
    """Keeps the last `window_s` seconds of served feeds (the gateway's own stage timings)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._samples: deque[_Sample] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self.degraded_total = 0

    def __call__(self, result: object) -> None:
        timings = result.timings.as_dict()  # type: ignore[attr-defined]
        degraded = bool(result.response.degraded)  # type: ignore[attr-defined]
        now = time.monotonic()
        with self._lock:
            self._samples.append(_Sample(now, timings, degraded))
            self.total += 1
            self.degraded_total += int(degraded)
            while self._samples and self._samples[0].at < now - self.window_s:
                self._samples.popleft()

    def snapshot(self) -> dict[str, float]:
        """qps, degraded share and p50/p99 of each stage over the window."""
        with self._lock:
            samples = list(self._samples)
        out: dict[str, float] = {"qps": len(samples) / self.window_s,
                                 "degraded": float(np.mean([s.degraded for s in samples])) if samples else 0.0}
        for stage in STAGES:
            values = [s.timings.get(f"{stage}_ms", 0.0) for s in samples]
            out[f"{stage}_p50"] = float(np.percentile(values, 50)) if values else float("nan")
            out[f"{stage}_p99"] = float(np.percentile(values, 99)) if values else float("nan")
        return out


def render(snapshot: dict[str, float], versions: dict[str, str], ctr_line: str, elapsed_s: float, note: str = "") -> str:
    """A few lines for the terminal."""
    stages = "  ".join(f"{s} {snapshot[f'{s}_p50']:.1f}/{snapshot[f'{s}_p99']:.1f}" for s in STAGES)
    models = "  ".join(f"{arm}: {v}" for arm, v in sorted(versions.items())) or "-"
    lines = [
        f"[{elapsed_s:6.0f}s] GetFeed {snapshot['qps']:.1f} req/s  degraded {100 * snapshot['degraded']:.1f}%"
        f"{'  ' + note if note else ''}",
        f"         p50/p99 ms  {stages}",
        f"         models  {models}",
        f"         {ctr_line}",
    ]
    return "\n".join(lines)
