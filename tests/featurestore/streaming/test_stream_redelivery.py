"""Re-delivery is harmless: a record applied once is never counted again, however it comes back.

Real Kafka (Tansu) and real Redis: a crash between the tile write and the
offset commit, a second consumer group replaying the topic, a store failure
half-way through a batch, a stop() while running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis as redis_py
from stream_helpers import event, produce, utc

from cascade.config import Config
from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.online import OnlineStore
from featurestore.streaming import StreamingUpdater

H = timedelta(hours=1)
T0 = utc(2024, 5, 1, 8)
NOW = T0 + 10 * H


def view(topic: str) -> WindowedFeatureView:
    return WindowedFeatureView(
        "r_user", (Entity("user", ("user_id",)),), ParquetSource("events.parquet"),
        aggregations=(Aggregation(AggregationFunction.COUNT, (24 * H,), name="n"),
                      Aggregation(AggregationFunction.SUM, (24 * H,), column="rating"),
                      Aggregation(AggregationFunction.LAST_N, (24 * H,), column="item_id", n=50,
                                  dtype=ValueType.INT64_LIST)),
        stream=StreamSource(topic, fields={"rating": "value", "event_ts": "timestamp_ms"}))


EVENTS = [event(u, 100 + k, T0 + timedelta(minutes=7 * k), value=float(k)) for k in range(40) for u in (1, 2)]
EXPECTED = {
    u: {"r_user:n_1d": 40, "r_user:rating_sum_1d": float(sum(range(40))),
        "r_user:item_id_last50_1d": [100 + k for k in reversed(range(40))]}  # most recent first
    for u in (1, 2)
}


def served(store: OnlineStore, v: WindowedFeatureView) -> dict[int, dict]:
    rows = store.read(v, [1, 2], now=NOW).to_rows()
    return {1: rows[0], 2: rows[1]}


def updater(config: Config, bootstrap: str, store: OnlineStore, v: WindowedFeatureView, group: str,
            **kwargs) -> StreamingUpdater:  # noqa: ANN003
    return StreamingUpdater(config, bootstrap, store, [v], group_id=group, assign=True, **kwargs)


@pytest.fixture()
def topic_and_view(new_topic: Callable[..., str], bootstrap: str, config: Config) -> tuple[str, WindowedFeatureView]:
    topic = new_topic(partitions=2)
    produce(bootstrap, config, topic, EVENTS, keys=[e.user_id.encode() for e in EVENTS])
    return topic, view(topic)


def test_crash_between_write_and_commit_does_not_double_count(topic_and_view, online: OnlineStore, config: Config,
                                                              bootstrap: str, unique_prefix: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _, v = topic_and_view
    group = f"{unique_prefix}-g"
    first = updater(config, bootstrap, online, v, group)
    monkeypatch.setattr(first, "_commit", lambda offsets: None)  # the process dies after writing, before committing
    s1 = first.run_for(until_idle=True, timeout=60)
    first.close()
    assert s1.applied == len(EVENTS) and s1.commits == 0
    assert served(online, v) == EXPECTED

    second = updater(config, bootstrap, online, v, group)  # the restart re-reads everything uncommitted
    s2 = second.run_for(until_idle=True, timeout=60)
    second.close()
    assert (s2.records, s2.applied, s2.duplicates) == (len(EVENTS), 0, len(EVENTS))
    assert s2.commits > 0
    assert served(online, v) == EXPECTED

    third = updater(config, bootstrap, online, v, group)  # now committed: nothing comes back
    s3 = third.run_for(until_idle=True, timeout=60)
    third.close()
    assert s3.records == 0 and s3.idle


def test_another_group_replaying_the_topic_changes_nothing(topic_and_view, online: OnlineStore, config: Config,
                                                           bootstrap: str, unique_prefix: str) -> None:
    _, v = topic_and_view
    with updater(config, bootstrap, online, v, f"{unique_prefix}-a") as a:
        assert a.run_for(until_idle=True, timeout=60).applied == len(EVENTS)
    with updater(config, bootstrap, online, v, f"{unique_prefix}-b") as b:
        s = b.run_for(until_idle=True, timeout=60)
    assert s.duplicates == len(EVENTS) and s.applied == 0
    assert served(online, v) == EXPECTED


def test_without_the_guard_a_replay_double_counts(topic_and_view, online: OnlineStore, config: Config,
                                                  bootstrap: str, unique_prefix: str) -> None:
    """Why the guard exists: the store's plain add_events counts a re-delivered record again."""
    _, v = topic_and_view
    for group in ("a", "b"):
        with updater(config, bootstrap, online, v, f"{unique_prefix}-{group}", exactly_once=False) as u:
            u.run_for(until_idle=True, timeout=60)
    assert served(online, v)[1]["r_user:n_1d"] == 80


def test_a_store_failure_half_way_is_retried_without_double_counting(topic_and_view, online: OnlineStore,
                                                                      config: Config, bootstrap: str,
                                                                      unique_prefix: str) -> None:
    _, v = topic_and_view
    u = updater(config, bootstrap, online, v, f"{unique_prefix}-g", retry_backoff_s=(0.01, 0.05))
    real_apply = u.writer.apply
    failures = []

    def flaky(batches):  # noqa: ANN001, ANN202 - writes some rings, then the connection drops
        if not failures:
            failures.append(1)
            real_apply([(view_, events[: len(events) // 2]) for view_, events in batches])
            raise redis_py.ConnectionError("connection reset by peer (injected)")
        return real_apply(batches)

    u.writer.apply = flaky
    s = u.run_for(until_idle=True, timeout=60)
    u.close()
    assert s.write_errors == 1
    assert s.applied + s.duplicates == len(EVENTS) and s.duplicates > 0
    assert served(online, v) == EXPECTED


def test_a_store_failure_that_outlasts_the_run_rewinds_and_commits_nothing(topic_and_view, online: OnlineStore,
                                                                            config: Config, bootstrap: str,
                                                                            unique_prefix: str) -> None:
    _, v = topic_and_view
    group = f"{unique_prefix}-g"
    u = updater(config, bootstrap, online, v, group, retry_backoff_s=(0.05, 0.1))

    def down(batches):  # noqa: ANN001, ANN202
        raise redis_py.ConnectionError("store down (injected)")

    u.writer.apply = down
    s = u.run_for(2.0)
    assert s.write_errors >= 1 and s.commits == 0 and s.applied == 0
    del u.writer.apply  # the store is back: the same updater re-reads the rewound records
    s = u.run_for(until_idle=True, timeout=60)
    u.close()
    assert s.applied == len(EVENTS)
    assert served(online, v) == EXPECTED


def test_stop_from_another_thread_finishes_and_commits(new_topic: Callable[..., str], online: OnlineStore,
                                                       config: Config, bootstrap: str, unique_prefix: str) -> None:
    topic = new_topic()
    v = view(topic)
    group = f"{unique_prefix}-g"
    u = StreamingUpdater(config, bootstrap, online, [v], group_id=group)  # a group member, as in production
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("stats", u.run()), daemon=True)
    runner.start()
    produce(bootstrap, config, topic, EVENTS)
    deadline = time.monotonic() + 60
    while u.stats.applied < len(EVENTS) and time.monotonic() < deadline:
        time.sleep(0.05)
    u.stop()
    runner.join(30)
    assert not runner.is_alive()
    assert result["stats"].applied == len(EVENTS)
    with updater(config, bootstrap, online, v, group) as again:
        assert again.run_for(until_idle=True, timeout=60).records == 0
    assert served(online, v) == EXPECTED
