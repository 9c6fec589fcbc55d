"""The embedding channel's search runs in a worker thread: its budget holds and the event loop never waits on it."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np

from recall.channel import RecallQuery
from recall.channels.embedding import EmbeddingChannel
from recall.merge import ChannelStatus, RecallMerger
from recall_helpers import ScriptedChannel


class BlockingArtifact:
    """A served artifact whose search holds its thread until released (a slow FAISS search); records the threads."""

    def __init__(self, released: bool = False) -> None:
        self.encoder = SimpleNamespace(history_feature="user:recent", spec=SimpleNamespace(user_features=()))
        self.release = threading.Event()
        if released:
            self.release.set()
        self.finished = threading.Event()
        self.vector_thread: int | None = None
        self.search_thread: int | None = None

    def query_vector(self, features, recent) -> np.ndarray:
        self.vector_thread = threading.get_ident()
        return np.ones(4, np.float32)

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.search_thread = threading.get_ident()
        self.release.wait(60)
        self.finished.set()
        return np.arange(1, k + 1, dtype=np.int64), np.linspace(1.0, 0.0, k).astype(np.float32)


def merger(art: BlockingArtifact) -> RecallMerger:
    emb = EmbeddingChannel(SimpleNamespace(current=art), faiss_threads=None)
    fast = ScriptedChannel("fast", [100, 101, 102])
    return RecallMerger([emb, fast], quotas={"embedding": 5, "fast": 3},
                        timeouts_ms={"embedding": 50.0, "fast": 60_000.0}, overfetch=0.0)


def test_a_search_past_its_budget_times_out_while_the_loop_goes_on():
    art = BlockingArtifact()
    m = merger(art)

    async def scenario():
        res = await m.recall(RecallQuery(user_id=1, now_ms=0, recent_items=(7,)), 8)
        running = not art.finished.is_set()  # answered while the search still held its thread
        pending = m.abandoned()
        art.release.set()
        for _ in range(6000):  # the late search finishes on its own and is forgotten
            if not m.abandoned():
                break
            await asyncio.sleep(0.01)
        return res, running, pending, threading.get_ident(), m.abandoned()

    res, running, pending, loop_thread, after = asyncio.run(scenario())
    assert res.outcome("embedding").status == ChannelStatus.TIMEOUT and "50.0 ms" in res.outcome("embedding").message
    assert res.outcome("fast").status == ChannelStatus.OK and res.items.tolist() == [100, 101, 102]
    assert res.degraded and running and pending == {"embedding": 1} and after == {}
    assert art.vector_thread == loop_thread and art.search_thread not in (None, loop_thread)


def test_a_search_within_its_budget_answers_from_the_thread():
    art = BlockingArtifact(released=True)
    m = merger(art)
    m.timeouts_ms["embedding"] = 60_000.0

    async def scenario():
        return await m.recall(RecallQuery(user_id=1, now_ms=0, recent_items=(7,)), 8), threading.get_ident()

    res, loop_thread = asyncio.run(scenario())
    assert res.outcome("embedding").status == ChannelStatus.OK and not res.degraded
    assert res.outcome("embedding").asked == 5 + 1  # quota + room for the one filtered (recent) item
    assert set(res.items.tolist()) == {1, 2, 3, 4, 5, 100, 101, 102}  # each channel its quota
    assert art.search_thread not in (None, loop_thread)
