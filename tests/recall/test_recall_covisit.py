"""Co-visitation: the offline DuckDB build on a hand-checked log, packing, publishing and the item2item channel."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pyarrow as pa
import pytest

from recall.channel import RecallQuery
from recall.channels.item2item import Item2ItemChannel
from recall.covisit import (
    CovisitBuild,
    CovisitSpec,
    compute_covisit,
    live_version,
    neighbor_dict,
    pack_batch,
    pack_row,
    publish_covisit,
    unpack_row,
    versions_key,
)
from recall.redis_io import async_redis
from recall_helpers import HOUR_MS, T0_MS, events_table

A, B, C, D = 1, 2, 3, 4
# user 1: A@0h, B@1h, C@30h;  user 2: A@2h, B@3h;  user 3: B@10h, C@11h
LOG = events_table([(1, A, 0), (1, B, 1), (1, C, 30), (2, A, 2), (2, B, 3), (3, B, 10), (3, C, 11)])
AS_OF = T0_MS + 48 * HOUR_MS


def w(hours: float, half_life_h: float = 24.0) -> float:
    """Time decay of an interaction at `hours`, as of 48h."""
    return 2.0 ** (-(48.0 - hours) / half_life_h)


def sims(table: pa.Table) -> dict[tuple[int, int], float]:
    return {(i, j): s for i, row in neighbor_dict(table).items() for j, s in row}


def test_decayed_windowed_cosine_by_hand():
    spec = CovisitSpec(half_life_days=1.0, window_hours=24.0, user_weighting=False, max_gap=10)
    got = sims(compute_covisit(LOG, spec, as_of=AS_OF))
    # Pairs within 24h: user 1 (B@1h, A@0h) -- its C@30h is 29h from B --, user 2 (B@3h, A@2h), user 3 (C@11h, B@10h);
    # each weighted by the decay of its newer interaction.
    c_ab = w(1) + w(3)
    c_bc = w(11)
    n_a = w(0) + w(2)
    n_b = w(1) + w(3) + w(10)
    n_c = w(30) + w(11)
    assert set(got) == {(A, B), (B, A), (B, C), (C, B)}  # A and C were never within 24h of each other
    assert got[(A, B)] == pytest.approx(c_ab / math.sqrt(n_a * n_b), rel=1e-6)
    assert got[(B, A)] == got[(A, B)]
    assert got[(B, C)] == pytest.approx(c_bc / math.sqrt(n_b * n_c), rel=1e-6)


def test_no_window_no_decay_and_user_weighting():
    spec = CovisitSpec(half_life_days=None, window_hours=None, user_weighting=True, max_gap=10)
    got = sims(compute_covisit(LOG, spec, as_of=AS_OF))
    u1, u2, u3 = 1 / math.log2(4), 1 / math.log2(3), 1 / math.log2(3)  # 1/log2(1 + items of the user)
    n = {A: u1 + u2, B: u1 + u2 + u3, C: u1 + u3}
    c = {(A, B): u1 + u2, (A, C): u1, (B, C): u1 + u3}
    for (i, j), cij in c.items():
        assert got[(i, j)] == pytest.approx(cij / math.sqrt(n[i] * n[j]), rel=1e-6)
        assert got[(j, i)] == pytest.approx(got[(i, j)])


def test_gap_history_cutoff_and_top_k_order():
    # max_gap=1: user 1 pairs only neighbours in time (C-B, B-A), never C-A.
    spec = CovisitSpec(half_life_days=None, window_hours=None, user_weighting=False, max_gap=1)
    assert (A, C) not in sims(compute_covisit(LOG, spec, as_of=AS_OF))
    # as_of cuts the log: before 10h user 3 has no events, before 30h user 1 has no C.
    got = sims(compute_covisit(LOG, CovisitSpec(half_life_days=None, window_hours=None, user_weighting=False),
                               as_of=T0_MS + 5 * HOUR_MS))
    assert set(got) == {(A, B), (B, A)} and got[(A, B)] == pytest.approx(1.0)
    # max_history=2 keeps each user's 2 most recent items: user 1 loses A.
    got = sims(compute_covisit(LOG, CovisitSpec(half_life_days=None, window_hours=None, user_weighting=False, max_history=2),
                               as_of=AS_OF))
    assert got[(A, B)] == pytest.approx(1 / math.sqrt(1 * 3))  # only user 2 pairs A-B; n_A = 1, n_B = 3
    # neighbours=1 keeps the best; ties go to the smaller id
    star = events_table([(1, 10, 0), (1, 11, 1), (2, 10, 0), (2, 12, 1)])
    table = compute_covisit(star, CovisitSpec(half_life_days=None, window_hours=None, user_weighting=False, neighbors=1),
                            as_of=T0_MS + 10 * HOUR_MS)
    assert neighbor_dict(table)[10] == [(11, pytest.approx(1 / math.sqrt(2)))]


def test_repeated_interactions_count_once_and_event_types_filter():
    log = events_table([(1, A, 0), (1, A, 1), (1, B, 2), (2, A, 0), (2, C, 1)], ["click", "click", "click", "click", "view"])
    spec = CovisitSpec(half_life_days=None, window_hours=None, user_weighting=False, event_types=("click",))
    got = sims(compute_covisit(log, spec, as_of=T0_MS + 10 * HOUR_MS))
    assert set(got) == {(A, B), (B, A)}  # the view of C does not count
    assert got[(A, B)] == pytest.approx(1 / math.sqrt(2 * 1))  # A: two users (once each), B: one


def test_packing_round_trip_and_wide_ids():
    ids, rows = pack_batch(pa.table({"item_id": [5, 6], "neighbors": [[1, 2], [2**40]], "scores": [[0.5, 0.25], [1.0]]}))
    assert ids.tolist() == [5, 6]
    n0, s0 = unpack_row(rows[0])
    assert n0.tolist() == [1, 2] and s0.tolist() == [0.5, 0.25] and len(rows[0]) == 1 + 2 * 8
    n1, s1 = unpack_row(rows[1])
    assert n1.tolist() == [2**40] and s1.tolist() == [1.0]
    assert unpack_row(pack_row(np.array([], np.int64), np.array([], np.float32)))[0].size == 0


def test_spill_bounded_build_streams_batches(tmp_path):
    rng = np.random.default_rng(0)
    n = 20_000
    log = pa.table({
        "user_id": rng.integers(0, 500, n), "item_id": rng.integers(0, 2000, n),
        "event_ts": pa.array(T0_MS * 1000 + rng.integers(0, 10 * 24 * HOUR_MS * 1000, n), pa.int64()).cast(pa.timestamp("us", "UTC")),
    })
    spec = CovisitSpec(memory_limit_mb=64, threads=1, temp_dir=tmp_path / "spill", neighbors=5)
    with CovisitBuild(log, spec) as build:
        rows = sum(b.num_rows for b in build.batches(rows_per_batch=300))
        assert rows == build.stats.items > 1000 and build.stats.pairs > 0 and build.stats.buckets >= 1
    full = compute_covisit(log, CovisitSpec(neighbors=5))
    assert full.num_rows == rows
    assert all(len(x) <= 5 for x in full["neighbors"].to_pylist())


def test_publish_and_item2item_channel(redis, stack, config, unique_prefix):
    ns = unique_prefix
    table = pa.table({
        "item_id": [A, B, C],
        "neighbors": [[B, C], [A, D], [D]],
        "scores": [[0.9, 0.3], [0.9, 0.5], [0.8]],
    })
    pub = publish_covisit(redis, ns, table, version="v1")
    assert (pub.version, pub.items, pub.neighbors) == ("v1", 3, 5) and live_version(redis, ns) == "v1"

    async def scenario() -> tuple:
        client = async_redis(stack.redis_url, config.redis)
        try:
            ch = Item2ItemChannel(client, ns, max_seeds=20, seed_decay=0.5)
            q = RecallQuery(user_id=1, now_ms=0, recent_items=(A, B, A, 99))
            res = await ch.recall(q, 10)
            empty = await ch.recall(RecallQuery(user_id=1, now_ms=0, recent_items=()), 10)
            # a new version replaces the table; the channel notices through the pointer in its MGET
            publish_covisit(redis, ns, pa.table({"item_id": [A], "neighbors": [[D]], "scores": [[0.1]]}), version="v2")
            after = await ch.recall(RecallQuery(user_id=1, now_ms=0, recent_items=(A,)), 10)
            return res, empty, after, ch.version, ch.applicable(q), ch.applicable(RecallQuery(user_id=1, now_ms=0))
        finally:
            await client.aclose()

    res, empty, after, version, applicable, not_applicable = asyncio.run(scenario())
    # seeds A (weight 1), B (0.5), item 99 unknown (weight 0.25, no row); seeds excluded from the result
    assert res.items.tolist() == [C, D]
    assert res.scores.tolist() == pytest.approx([0.3, 0.5 * 0.5])
    assert len(empty.items) == 0
    assert after.items.tolist() == [D] and version == "v2"
    assert applicable and not not_applicable
    # keep_versions=2: publishing a third version deletes v1's rows
    publish_covisit(redis, ns, table, version="v3")
    assert redis.exists(f"{ns}:i2i:v1:{A}") == 0 and redis.exists(f"{ns}:i2i:v2:{A}") == 1
    assert [v.decode() for v in redis.lrange(versions_key(ns), 0, -1)] == ["v3", "v2"]



def test_item2item_asked_again_in_one_request_answers_without_reading(redis, stack, config, unique_prefix):
    ns = unique_prefix
    publish_covisit(redis, ns, pa.table({"item_id": [A], "neighbors": [[B, C, D]], "scores": [[0.9, 0.5, 0.1]]}),
                    version="v1")

    async def scenario() -> tuple:
        client = async_redis(stack.redis_url, config.redis)
        try:
            ch = Item2ItemChannel(client, ns, max_seeds=20, seed_decay=0.5)
            q = RecallQuery(user_id=1, now_ms=0, recent_items=(A,))
            first = await ch.recall(q, 1)
            redis.delete(f"{ns}:i2i:v1:{A}")  # the rows are gone: what follows comes from the request's memo
            more = await ch.recall(q, 10)  # the merge's top-up: same request, larger k
            other = await ch.recall(RecallQuery(user_id=2, now_ms=0, recent_items=(A,)), 10)  # a new request reads
            return first, more, other
        finally:
            await client.aclose()

    first, more, other = asyncio.run(scenario())
    assert first.items.tolist() == [B] and more.items.tolist() == [B, C, D] and len(other.items) == 0
