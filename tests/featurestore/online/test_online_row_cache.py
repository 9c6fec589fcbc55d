"""The in-process row cache of shared entities (featurestore.online.cache): never older than its ttl."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from featurestore.definitions import Entity, Feature, FeatureView, ParquetSource, ValueType
from featurestore.online import OnlineStore
from featurestore.online.cache import MISS, RowCache

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
ITEM = Entity("item", ("item_id",))
USER = Entity("user", ("user_id",))
ITEMS = FeatureView("cache_items", (ITEM,), ParquetSource("i.parquet"), (Feature("price", ValueType.FLOAT64),))
USERS = FeatureView("cache_users", (USER,), ParquetSource("u.parquet"), (Feature("age", ValueType.INT64),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_are_served_until_their_generation_expires_and_never_after_the_ttl() -> None:
    clock = Clock()
    cache = RowCache(1.0, clock=clock)
    assert cache.lookup("f", ["a", "b"]) == ([MISS, MISS], [0, 1])
    cache.store("f", ["a", "b"], [b"A", None])  # None: Redis has no row (cached too)
    clock.now += 0.4
    assert cache.lookup("f", ["a", "b", "c"]) == ([b"A", None, MISS], [2])
    clock.now += 0.2  # 0.6 s: a new generation began; a and b are served from the previous one
    cache.store("f", ["c"], [b"C"])
    assert cache.lookup("f", ["a", "c"]) == ([b"A", b"C"], [])
    clock.now += 0.45  # 1.05 s after a was stored: gone; c (stored at 0.6 s) is still there
    got, missing = cache.lookup("f", ["a", "c"])
    assert got == [MISS, b"C"] and missing == [0]
    clock.now += 5.0  # long idle: everything expired
    assert cache.lookup("f", ["c"])[1] == [0]
    assert cache.hits == 5 and cache.misses == 5


def test_families_are_separate_and_size_is_bounded() -> None:
    clock = Clock()
    cache = RowCache(1.0, max_entries=2, clock=clock)
    cache.store("x", [1, 2, 3], [b"1", b"2", b"3"])
    assert cache.lookup("x", [1, 2, 3])[1] == [2]  # the third did not fit
    assert cache.lookup("y", [1])[1] == [0]
    with pytest.raises(ValueError):
        RowCache(0.0)


def _items(store: OnlineStore, price: float, ts: datetime) -> None:
    store.write_rows(ITEMS, pa.table({"item_id": [1, 2, 3], "price": [price] * 3,
                                      "event_ts": pa.array([ts] * 3, type=pa.timestamp("us", "UTC"))}))


def test_a_cached_store_serves_item_rows_up_to_ttl_old_and_reads_users_fresh(redis, unique_prefix: str) -> None:
    cached = OnlineStore(redis, unique_prefix, cache_ttl_s=1.0, cache_entities=("item",))
    clock = Clock()
    cached.cache.clock = clock
    plain = OnlineStore(redis, unique_prefix)
    _items(plain, 1.0, T0)
    plain.write_rows(USERS, pa.table({"user_id": [7], "age": [30], "event_ts": pa.array([T0], type=pa.timestamp("us", "UTC"))}))
    plan = cached.plan([ITEMS, USERS])
    keys = {"item_id": [1, 2, 4], "user_id": [7, 7, 7]}

    first = cached.read(plan, keys, now=T0)
    assert first.to_rows() == plain.read(plan, keys, now=T0).to_rows()
    _items(plain, 2.0, T0 + timedelta(seconds=1))
    plain.write_rows(USERS, pa.table({"user_id": [7], "age": [31],
                                      "event_ts": pa.array([T0 + timedelta(seconds=1)], type=pa.timestamp("us", "UTC"))}))
    clock.now += 0.5
    again = cached.read(plan, keys, now=T0)
    assert again.column("cache_items:price").tolist()[:2] == [1.0, 1.0]  # items: the cached rows (<= 1 s old)
    assert again.column("cache_users:age").tolist() == [31, 31, 31]  # users are never cached
    assert again.status_names()[2]["cache_items:price"] == "NOT_FOUND"  # a cached "no row"
    clock.now += 1.0
    later = cached.read(plan, keys, now=T0)
    assert later.column("cache_items:price").tolist()[:2] == [2.0, 2.0]  # expired: read from Redis again
    assert cached.cache.hits == 3 and cached.cache.misses == 6
