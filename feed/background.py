"""Fire-and-forget work after a feed is answered, bounded so it can never hold the response up.

``spawn(name, coroutine_function)`` starts a task at once unless
``max_pending`` tasks are already waiting or running (then it is dropped and
counted); at most ``concurrency`` run their body at a time. A task's error is
logged and counted (``cascade_feed_background_total{task, outcome}``), never
raised to anyone. :meth:`drain` waits for what is pending (shutdown, tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from feed.metrics import BACKGROUND

_log = logging.getLogger("cascade.feed.background")


class Background:
    """Bounded after-response tasks (see the module docstring)."""

    def __init__(self, concurrency: int, max_pending: int) -> None:
        self.concurrency = max(1, int(concurrency))
        self.max_pending = max(1, int(max_pending))
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def spawn(self, name: str, fn: Callable[[], Awaitable[Any]]) -> bool:
        """Run ``await fn()`` in the background; False (and counted) when too many tasks are pending."""
        if len(self._tasks) >= self.max_pending:
            self._count(name, "dropped")
            return False
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        task = asyncio.get_running_loop().create_task(self._run(name, fn), name=f"feed-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        assert self._sem is not None
        try:
            async with self._sem:
                await fn()
        except asyncio.CancelledError:
            self._count(name, "cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - never reaches the caller: counted and logged
            self._count(name, "error")
            _log.warning("feed: background %s failed: %s: %s", name, type(exc).__name__, exc)
        else:
            self._count(name, "ok")

    def _count(self, name: str, outcome: str) -> None:
        self.stats[f"{name}_{outcome}"] += 1
        BACKGROUND.labels(name, outcome).inc()

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for the pending tasks (and those they spawn); True if all finished within `timeout_s`."""
        loop = asyncio.get_running_loop()
        end = None if timeout_s is None else loop.time() + timeout_s
        while self._tasks:
            left = None if end is None else end - loop.time()
            if left is not None and left <= 0:
                return False
            _, pending = await asyncio.wait(set(self._tasks), timeout=left)
            if pending and end is not None and loop.time() >= end:
                return False
        return True

    async def cancel(self) -> None:
        """Cancel whatever is still pending (after a bounded drain at shutdown)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Background"]
