"""The embedding channel: the user's query vector from online features, then FAISS search.

Per request:

1. take the served artifact once (``art = live.current``): the query encoder and
   the index always come from the same version, even across a hot swap;
2. the query vector reads ``query.recent_items`` (the last-N list, most recent
   first) and ``query.user_features[ref]`` for the profile refs the model uses
   (``channel.required_features``: the service should include them in its one
   online read per request). When some are absent and the channel has a
   `FeatureClient`, it fetches just those (one online read); without a client
   the missing ones encode as "missing" (the model was trained with that bucket);
3. search in a worker thread (``asyncio.to_thread``; FAISS is CPU-bound and
   releases the GIL), FAISS single-threaded per query so latency stays
   predictable when many requests search at once.

Scores are inner products (or cosines) of the two towers: comparable within
this channel only. Seen items are not filtered here (the merge does it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recall.artifacts import LiveIndex, RecallArtifact
from recall.channel import ChannelResult, RecallQuery

log = logging.getLogger("cascade.recall.embedding")


def _set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


class EmbeddingChannel:
    """`recall.channel.Channel` over a `LiveIndex` (see the module docstring)."""

    def __init__(self, live: LiveIndex, *, feature_client: Any = None, name: str = "embedding",
                 faiss_threads: int | None = 1) -> None:
        self.name = name
        self.live = live
        self.feature_client = feature_client
        if faiss_threads is not None:
            _set_faiss_threads(faiss_threads)  # process-wide: one thread per query
        self.stats = {"requests": 0, "feature_fetches": 0, "missing_features": 0, "empty_history": 0}

    @classmethod
    def from_config(cls, config: Any = None, *, name: str | None = None, feature_client: Any = None,
                    watch_s: float | None = None, **kwargs: Any) -> EmbeddingChannel:
        """A channel on artifact set `name` (default ``recall.embedding_artifacts``), its CURRENT version loaded now.

        The live index then polls for new versions every `watch_s` seconds
        (default ``recall.index_watch_s``; 0 = never): `cascade recall build`
        in another process is picked up without a restart.
        """
        if config is None:
            from cascade.config import get_config

            config = get_config()
        live = LiveIndex.from_config(config, name or config.recall.embedding_artifacts)
        interval = config.recall.index_watch_s if watch_s is None else watch_s
        if interval:
            live.start_watching(interval)
        return cls(live, feature_client=feature_client, **kwargs)

    @property
    def required_features(self) -> tuple[str, ...]:
        """The online user features the query vector reads (from the served version)."""
        return self.live.current.required_features

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        self.stats["requests"] += 1
        if k <= 0:
            return ChannelResult.empty()
        art = self.live.current  # one version for the whole request
        features, recent = await self._inputs(art, query)
        vector = art.query_vector(features, recent)
        return await asyncio.to_thread(self._search, art, vector, k)

    async def _inputs(self, art: RecallArtifact, query: RecallQuery) -> tuple[Mapping[str, Any], Sequence[int] | None]:
        features: Mapping[str, Any] = query.user_features or {}
        history_ref = art.encoder.history_feature
        recent: Sequence[int] | None = query.recent_items if len(query.recent_items) else None
        wanted = [r for r in art.encoder.spec.user_features if r not in features]
        if recent is None and history_ref not in features:
            wanted.append(history_ref)
        if wanted:
            if self.feature_client is not None:
                self.stats["feature_fetches"] += 1
                rows = await self.feature_client.get_online_features_async("user", [query.user_id], wanted)
                fetched = rows.to_rows()[0]
                features = {**features, **{r: fetched.get(r) for r in wanted}}
            else:
                self.stats["missing_features"] += 1
        if recent is None:
            recent = features.get(history_ref)
        if not recent:
            self.stats["empty_history"] += 1
        return features, recent

    @staticmethod
    def _search(art: RecallArtifact, vector: np.ndarray, k: int) -> ChannelResult:
        ids, scores = art.search(vector, k)
        return ChannelResult(ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False))

    def __repr__(self) -> str:
        return f"<EmbeddingChannel {self.name} {self.live!r}>"


__all__ = ["EmbeddingChannel"]
