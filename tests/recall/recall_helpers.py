"""Helpers of the recall tests: event tables, a scripted channel, Kafka topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from recall.channel import ChannelResult, RecallQuery

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def events_table(rows: Sequence[tuple[int, int, float]], event_type: str | Sequence[str] = "click") -> pa.Table:
    """(user, item, hours after T0) rows -> an event log with event_ts in µs UTC."""
    types = [event_type] * len(rows) if isinstance(event_type, str) else list(event_type)
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "item_id": pa.array([r[1] for r in rows], pa.int64()),
        "event_type": pa.array(types, pa.string()),
        "event_ts": pa.array([int((T0_MS + r[2] * HOUR_MS) * 1000) for r in rows], pa.int64()).cast(pa.timestamp("us", "UTC")),
    })


class ScriptedChannel:
    """A channel answering fixed items (scores descending), optionally late or failing: merge logic tests."""

    def __init__(self, name: str, items: Sequence[int], *, delay_s: float = 0.0, error: Exception | None = None,
                 applicable: bool = True, block: bool = False) -> None:
        self.name = name
        self.items = np.asarray(items, dtype=np.int64)
        self.delay_s = delay_s
        self.error = error
        self._applicable = applicable
        self.block = block  # busy-wait in the event loop instead of sleeping (a CPU-bound channel)
        self.calls: list[int] = []

    def applicable(self, query: RecallQuery) -> bool:
        return self._applicable

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        self.calls.append(k)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        items = self.items[:k]
        return ChannelResult(items, np.linspace(1.0, 0.5, num=items.size, dtype=np.float32) if items.size else np.empty(0, np.float32))


def create_topic(bootstrap: str, config: Any, name: str, partitions: int = 1, timeout_s: float = 20.0) -> str:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=f"{config.kafka.client_id}-recall-test",
                             request_timeout_ms=config.kafka.request_timeout_ms)
    try:
        admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
        deadline = time.monotonic() + timeout_s
        while name not in set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} not visible after {timeout_s}s")
            time.sleep(0.05)
    finally:
        admin.close()
    return name
