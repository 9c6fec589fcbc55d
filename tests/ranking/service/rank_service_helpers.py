"""Helpers of the ranking service tests: a real (tiny) numpy model, and a gate to hold the model thread.

`LogisticModel` is an actual scorer -- a logistic regression over a float
matrix -- not a stub: every score is computed from the rows it is given, so a
test can check that each request got *its own* scores back, in order, by
scoring the same rows alone.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class LogisticModel:
    """sigmoid(x @ w + b) on a (rows, d) float matrix, or on {"x": matrix} blocks."""

    def __init__(self, d: int = 4, seed: int = 0, bias: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=d).astype(np.float32)
        self.b = np.float32(bias)

    def __call__(self, rows: Any) -> np.ndarray:
        x = rows["x"] if isinstance(rows, dict) else rows
        z = np.asarray(x, dtype=np.float32) @ self.w + self.b
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


class Gate:
    """Wraps a score function: records each call's row count; `hold()` makes calls wait until `release()`."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls: list[int] = []
        self.started = threading.Semaphore(0)
        self._open = threading.Event()
        self._open.set()
        self.fail_next = 0

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def __call__(self, rows: Any) -> np.ndarray:
        n = len(rows["x"]) if isinstance(rows, dict) else len(rows)
        self.calls.append(n)
        self.started.release()
        if not self._open.wait(30):
            raise TimeoutError("gate never released")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("model exploded")
        return self.fn(rows)

    async def wait_started(self, count: int = 1) -> None:
        """Wait (off the event loop) until `count` more model calls have started."""
        import asyncio

        for _ in range(count):
            ok = await asyncio.to_thread(self.started.acquire, True, 30)
            assert ok, "model call never started"


def rows(n: int, d: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
