"""The shared-entity cache (featurestore.shared_cache): item rows from memory, never older than the ttl."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from featurestore.client import FeatureClient
from featurestore.shared_cache import SharedEntityCache

FEATURES = ["profile:age", "profile:tags", "item_stats:ctr", "item_stats:recent", "item_stats:weights",
            "affinity:strength", "clicks:click_count_6h"]
KEYS = {"user_id": ["1", "1", "1", "1"], "item_id": ["5", "6", "5", "7"]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _client(seeded: SimpleNamespace, ttl_s: float = 1.0, refresh_s: float = 0.5, clock: Any = None,
            chunk_keys: int = 256) -> FeatureClient:
    cache = SharedEntityCache(seeded.store, ttl_s, refresh_s, clock=clock or time.monotonic, chunk_keys=chunk_keys)
    cache._stop.set()  # these tests drive refreshes by hand (the thread is tested on its own below)
    return FeatureClient(seeded.store, seeded.repo, shared_cache=cache)


def _warm(seeded: SimpleNamespace, clock: Clock) -> FeatureClient:
    """A cached client whose snapshot holds KEYS' items (missed in two periods running: reused)."""
    cached = _client(seeded, clock=clock)
    for _ in range(2):
        cached.get_online_features(None, KEYS, FEATURES)
        cached.shared_cache.refresh()
    return cached


def _ctr(seeded: SimpleNamespace, value: float, at: Any) -> None:
    seeded.store.write_rows(seeded.repo.view("item_stats"), pa.table({
        "item_id": [5], "ctr": [value], "recent": [[1]], "weights": [[0.5]],
        "event_ts": pa.array([at], type=pa.timestamp("us", "UTC"))}))


@pytest.mark.parametrize("chunk_keys", [256, 1])  # 1: the refresh reads key by key and joins the parts
def test_rows_from_the_cache_equal_rows_from_redis(seeded: SimpleNamespace, chunk_keys: int) -> None:
    cached = _client(seeded, chunk_keys=chunk_keys)
    want = seeded.client.get_online_features(None, KEYS, FEATURES, now=seeded.now)
    cold = cached.get_online_features(None, KEYS, FEATURES, now=seeded.now)  # nothing cached yet: all from Redis
    cached.shared_cache.refresh()  # asked for once: not worth a background read yet
    cached.get_online_features(None, KEYS, FEATURES, now=seeded.now)
    cached.shared_cache.refresh()  # missed in two periods running: reused, read into the snapshot
    warm = cached.get_online_features(None, KEYS, FEATURES, now=seeded.now)  # every item from the snapshot
    partial = cached.get_online_features(None, {"user_id": ["1"] * 3, "item_id": ["8", "5", "9"]}, FEATURES, now=seeded.now)
    for got in (cold, warm):
        assert got.to_rows() == want.to_rows()
        assert (got.status == want.status).all()
        assert got.event_ts_ms(FEATURES.index("item_stats:ctr")).tolist() == want.event_ts_ms(FEATURES.index("item_stats:ctr")).tolist()
    assert partial.to_rows() == seeded.client.get_online_features(
        None, {"user_id": ["1"] * 3, "item_id": ["8", "5", "9"]}, FEATURES, now=seeded.now).to_rows()
    assert cached.shared_cache.hits == 4 + 1 and cached.shared_cache.misses == 4 + 4 + 2


def test_an_item_write_is_seen_at_the_next_refresh_and_users_are_always_read_fresh(seeded: SimpleNamespace) -> None:
    clock = Clock()
    cached = _warm(seeded, clock)
    _ctr(seeded, 0.9, seeded.now)
    seeded.store.write_rows(seeded.repo.view("profile"), pa.table({
        "user_id": [1], "age": [31], "score": [0.9], "city": ["Paris"], "vip": [True], "emb": [[1.0, 2.0, 3.0]],
        "tags": [["z"]], "event_ts": pa.array([seeded.now], type=pa.timestamp("us", "UTC"))}))
    clock.now += 0.4
    stale = cached.get_online_features(None, KEYS, FEATURES)
    assert stale.column("item_stats:ctr").tolist()[0] == 0.25  # the snapshot's value, read < ttl ago
    assert stale.column("profile:age").tolist() == [31] * 4  # users are not cached
    cached.shared_cache.refresh()
    assert cached.get_online_features(None, KEYS, FEATURES).column("item_stats:ctr").tolist()[0] == 0.9


def test_a_snapshot_is_never_served_past_the_ttl(seeded: SimpleNamespace) -> None:
    clock = Clock()
    cached = _warm(seeded, clock)
    _ctr(seeded, 0.7, seeded.now)
    clock.now += 1.0  # no refresh came (Redis down, thread behind): the snapshot is too old to serve
    hits = cached.shared_cache.hits
    assert cached.get_online_features(None, KEYS, FEATURES).column("item_stats:ctr").tolist()[0] == 0.7
    assert cached.shared_cache.hits == hits


def _snapshot_keys(client: FeatureClient) -> set[str]:
    (entry,) = client.shared_cache._entries.values()
    return set(entry.snapshot.index)


def test_refresh_keeps_reused_items_and_never_reads_one_asked_for_once(seeded: SimpleNamespace) -> None:
    cached = _warm(seeded, Clock())
    assert _snapshot_keys(cached) == {"5", "6", "7"}
    cached.get_online_features(None, {"user_id": ["1", "1"], "item_id": ["7", "9"]}, FEATURES)  # 7 served, 9 missed once
    cached.shared_cache.refresh()
    assert _snapshot_keys(cached) == {"7"}  # 5 and 6 not asked for since: dropped; 9 not (yet) worth a background read
    cached.get_online_features(None, {"user_id": ["1"], "item_id": ["9"]}, FEATURES)
    cached.shared_cache.refresh()
    assert _snapshot_keys(cached) == {"9"}  # missed in two periods running


def test_non_string_keys_read_through(seeded: SimpleNamespace) -> None:
    cached = _client(seeded)
    keys = {"user_id": [1, 1], "item_id": [5, True]}  # True == 1 in a dict: never looked up in the cache
    assert cached.get_online_features(None, keys, FEATURES).to_rows() == seeded.client.get_online_features(None, keys, FEATURES).to_rows()
    assert cached.shared_cache.hits + cached.shared_cache.misses == 0


def test_the_background_thread_refreshes_and_stops(seeded: SimpleNamespace) -> None:
    cache = SharedEntityCache(seeded.store, 0.4, 0.05)
    client = FeatureClient(seeded.store, seeded.repo, shared_cache=cache)
    try:
        client.get_online_features(None, KEYS, FEATURES)
        deadline = time.monotonic() + 10
        while cache.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            client.get_online_features(None, KEYS, FEATURES)
        assert cache.hits > 0
    finally:
        cache.close()
    assert cache._thread is not None and not cache._thread.is_alive()


def test_bad_intervals_are_refused(seeded: SimpleNamespace) -> None:
    with pytest.raises(ValueError):
        SharedEntityCache(seeded.store, 0.0)
    with pytest.raises(ValueError, match="shorter than the ttl"):
        SharedEntityCache(seeded.store, 1.0, 1.0)


def test_from_config_builds_the_cache_only_when_asked(feature_config: Any, stack: Any) -> None:
    plain = FeatureClient.from_config(feature_config, stack.redis_url, check_registry=False)
    cached = FeatureClient.from_config(feature_config, stack.redis_url, check_registry=False, shared_cache=True)
    off = FeatureClient.from_config(feature_config.model_copy(update={"features": feature_config.features.model_copy(
        update={"online_cache_ttl_ms": 0.0})}), stack.redis_url, check_registry=False, shared_cache=True)
    try:
        assert plain.shared_cache is None and off.shared_cache is None
        assert cached.shared_cache is not None and cached.shared_cache.ttl_s == feature_config.features.online_cache_ttl_ms / 1000
    finally:
        for c in (plain, cached, off):
            c.close()


def test_ttl_is_measured_from_the_start_of_the_refresh_read(seeded: SimpleNamespace) -> None:
    clock = Clock()
    cached = _warm(seeded, clock)
    cached.get_online_features(None, KEYS, FEATURES)  # served from the snapshot: the next refresh reads them again
    slow_read = seeded.store.read
    reads = []

    def read(*args: Any, **kwargs: Any) -> Any:
        reads.append(clock.now)
        clock.now += 0.6  # the refresh's read takes 0.6 s
        return slow_read(*args, **kwargs)

    seeded.store.read = read
    try:
        cached.shared_cache.refresh()
    finally:
        del seeded.store.read
    assert len(reads) == 1 and _snapshot_keys(cached) == {"5", "6", "7"}
    clock.now += 0.3  # 0.9 s after the read began: still served
    hits = cached.shared_cache.hits
    cached.get_online_features(None, KEYS, FEATURES)
    assert cached.shared_cache.hits == hits + 4
    clock.now += 0.2  # 1.1 s after the read began, 0.5 s after it ended: expired
    cached.get_online_features(None, KEYS, FEATURES)
    assert cached.shared_cache.hits == hits + 4
