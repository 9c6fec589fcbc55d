"""The embedding channel on real Redis: online features -> query vector -> FAISS; a new click moves the next recall."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from featurestore.client import FeatureClient, serving_time
from featurestore.online import OnlineStore
from recall.artifacts import LiveIndex, write_artifact
from recall.channel import Channel, ChannelResult, RecallQuery
from recall.channels.embedding import EmbeddingChannel
from recall.index import IndexParams, ItemIndex

HISTORY = "syn_user_activity:item_id_last50_30d"
PROFILE = "syn_user_profile:home_category"


@pytest.fixture(scope="module")
def live(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("recall_artifacts")
    index = ItemIndex.build(trained.item_vectors, trained.item_ids, IndexParams(kind="hnsw", hnsw_ef_search=64))
    write_artifact(root, index, trained.encoder, build=trained.build_info(), metrics=trained.metrics)
    with LiveIndex(root) as li:
        li.load()
        yield li


@pytest.fixture()
def online(redis: Any, unique_prefix: str, recall_repo: Any) -> tuple[OnlineStore, FeatureClient]:
    store = OnlineStore(redis, unique_prefix)
    return store, FeatureClient(store, recall_repo)


def _categories(syn_items: dict[str, np.ndarray]) -> tuple[int, int, dict[int, int]]:
    cat_of = dict(zip(syn_items["item_id"].tolist(), syn_items["category"].tolist()))
    counts = np.bincount(syn_items["category"])
    a, b = np.argsort(-counts)[:2].tolist()
    return a, b, cat_of


def _items_of(syn_items: dict[str, np.ndarray], category: int, n: int) -> list[int]:
    mask = syn_items["category"] == category
    order = np.argsort(-syn_items["popularity"][mask])
    return syn_items["item_id"][mask][order][:n].tolist()


def _query(client: FeatureClient, user: int, refs: tuple[str, ...]) -> RecallQuery:
    row = client.get_online_features("user", [user], list(refs)).to_rows()[0]
    return RecallQuery(user_id=user, now_ms=int(serving_time().timestamp() * 1000),
                       recent_items=tuple(row[HISTORY]), user_features=row)


def _share(items: np.ndarray, cat_of: dict[int, int], category: int) -> float:
    return float(np.mean([cat_of[int(i)] == category for i in items]))


def test_a_new_click_moves_the_next_recall(live: Any, online: Any, recall_repo: Any, syn_items: Any) -> None:
    store, client = online
    a, b, cat_of = _categories(syn_items)
    user = 987_654  # not in the training data: a cold user defined only by online features
    now = serving_time()
    store.write_rows(recall_repo.view("syn_user_profile"), pa.table({
        "user_id": [user], "home_category": [str(a)], "event_ts": pa.array([now - timedelta(days=1)], pa.timestamp("us", "UTC"))}))
    view = recall_repo.view("syn_user_activity")
    store.add_events(view, [(user, now - timedelta(minutes=30 - i), {"item_id": it}) for i, it in enumerate(_items_of(syn_items, a, 6))])
    channel = EmbeddingChannel(live)
    assert isinstance(channel, Channel) and channel.name == "embedding"
    assert channel.required_features == (PROFILE, HISTORY)

    before_q = _query(client, user, channel.required_features)
    assert len(before_q.recent_items) == 6
    before = asyncio.run(channel.recall(before_q, 40))
    assert _share(before.items, cat_of, a) > 0.5

    # The user now clicks items of another category; the streaming updater would write exactly this.
    clicks = _items_of(syn_items, b, 8)
    store.add_events(view, [(user, serving_time() - timedelta(seconds=20 - i), {"item_id": it}) for i, it in enumerate(clicks)])
    after_q = _query(client, user, channel.required_features)
    assert list(after_q.recent_items[:8]) == clicks[::-1]  # most recent first
    after = asyncio.run(channel.recall(after_q, 40))
    assert not np.array_equal(before.items, after.items)
    # The profile still says "category a" (and in this data a user's home category is most of their taste),
    # so the shift is partial, but it is there: b rises from (almost) nothing, a gives way.
    moved = (_share(before.items, cat_of, b), _share(after.items, cat_of, b), _share(before.items, cat_of, a),
             _share(after.items, cat_of, a))
    assert moved[1] >= moved[0] + 0.1 and moved[3] <= moved[2] - 0.1, moved
    best_b_before = min(i for i, it in enumerate(before.items.tolist()) if cat_of[it] == b) if moved[0] else 40
    best_b_after = min(i for i, it in enumerate(after.items.tolist()) if cat_of[it] == b)
    assert best_b_after < best_b_before


def test_channel_fetches_missing_features_with_a_client(live: Any, online: Any, recall_repo: Any, syn_items: Any) -> None:
    store, client = online
    user = 4242
    now = serving_time()
    store.add_events(recall_repo.view("syn_user_activity"),
                     [(user, now - timedelta(minutes=5 - i), {"item_id": it}) for i, it in enumerate([3, 14, 15])])
    full = _query(client, user, (PROFILE, HISTORY))
    explicit = asyncio.run(EmbeddingChannel(live).recall(full, 25))
    fetching = EmbeddingChannel(live, feature_client=client)
    bare = RecallQuery(user_id=user, now_ms=full.now_ms)
    got = asyncio.run(fetching.recall(bare, 25))
    np.testing.assert_array_equal(got.items, explicit.items)
    assert fetching.stats["feature_fetches"] == 1
    # Without a client the missing features encode as "missing": still an answer, from the profile-free tower.
    blind = EmbeddingChannel(live)
    res = asyncio.run(blind.recall(bare, 25))
    assert len(res.items) == 25 and blind.stats["missing_features"] == 1 and blind.stats["empty_history"] == 1


def test_result_contract(live: Any) -> None:
    channel = EmbeddingChannel(live)
    q = RecallQuery(user_id=1, now_ms=0, recent_items=(5, 6, 7), user_features={PROFILE: "1"})
    res = asyncio.run(channel.recall(q, 50))
    assert isinstance(res, ChannelResult)
    assert len(res.items) == 50 and res.items.dtype == np.int64 and res.scores.dtype == np.float32
    assert np.all(np.diff(res.scores) <= 1e-5) and len(set(res.items.tolist())) == 50
    assert len(asyncio.run(channel.recall(q, 0)).items) == 0
    assert len(asyncio.run(channel.recall(q, 10_000)).items) == 300  # the whole catalogue, no padding
    unknown = RecallQuery(user_id=1, now_ms=0, recent_items=(10**9,), user_features={PROFILE: "no such value"})
    assert len(asyncio.run(channel.recall(unknown, 10)).items) == 10


def test_concurrent_recalls_across_a_swap(live: Any, trained: Any, tmp_path: Path) -> None:
    """Many concurrent requests while a new version loads in the background and swaps in: none fails."""
    index = ItemIndex.build(trained.item_vectors, trained.item_ids, IndexParams(kind="flat"))
    newer = write_artifact(live.root, index, trained.encoder, activate=True)
    channel = EmbeddingChannel(live)
    queries = [RecallQuery(user_id=u, now_ms=0, recent_items=(u % 300 + 1, (7 * u) % 300 + 1),
                           user_features={PROFILE: str(u % 6)}) for u in range(64)]

    async def run() -> list[ChannelResult]:
        fut = live.refresh()
        results: list[ChannelResult] = []
        for _ in range(5):
            results += await asyncio.gather(*(channel.recall(q, 20) for q in queries))
        await asyncio.wrap_future(fut)
        results += await asyncio.gather(*(channel.recall(q, 20) for q in queries))
        return results

    results = asyncio.run(run())
    assert live.version == newer.name
    assert all(len(r.items) == 20 for r in results)
