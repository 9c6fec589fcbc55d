"""Cheap scores for when the model cannot answer: the ranking service fails open.

When the model raises, misses its deadline, sheds load or is not loaded at
all, Rank still answers -- with these scores, marked degraded with the reason
(twitter's home-mixer: a backup pipeline when scoring fails). In order of
preference:

1. **a fallback model** (``ranking.fallback_model``, e.g. the streaming FTRL
   one) when a version of it is live in this replica: the hook
   ``model_provider`` returns it and it scores the features already read;
2. **popularity** from the feature store: the first of
   ``ranking.fallback_features`` that is defined (e.g.
   ``item_popularity:rating_count_7d``), taken from the features already read
   for the model when its feature set has it, else read for the candidates
   (one batched read); a count ``c`` becomes ``log1p(c) / (1 + log1p(c))``:
   monotone, in [0, 1), comparable across requests;
3. **request order**: nothing else is available (the feature store is down):
   ``(n - i) / (n + 1)`` keeps the caller's (recall's) order.

:meth:`Fallback.score` is blocking (it may read Redis): call it in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_log = logging.getLogger("cascade.ranking.fallback")

POPULARITY = "popularity"
REQUEST_ORDER = "request_order"


@dataclass(frozen=True)
class FallbackScores:
    """Scores and what produced them: `name` ("popularity", "request_order", or the fallback model's name)."""

    scores: np.ndarray
    name: str
    model: Any = None  # the LoadedModel that scored, for a fallback model
    problems: tuple[str, ...] = field(default_factory=tuple)  # what was tried first and failed


def squash_counts(counts: Any) -> np.ndarray:
    """``log1p(c) / (1 + log1p(c))`` of non-negative counts (NaN and negatives -> 0): monotone, in [0, 1)."""
    c = np.asarray(counts, dtype=np.float64)
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    lg = np.log1p(c)
    return lg / (1.0 + lg)


def request_order_scores(n: int) -> np.ndarray:
    """``(n - i) / (n + 1)``: strictly decreasing in (0, 1), keeps the caller's order."""
    return (np.arange(n, 0, -1, dtype=np.float64) / (n + 1)).astype(np.float64)


class Fallback:
    """Scores without the main model; see the module docstring.

    `client` is the service's :class:`~featurestore.client.FeatureClient` (None:
    no popularity). `features` are the candidate popularity refs, in
    preference order. `model_provider()` returns the fallback model (an object
    with ``.scorer.score(online_features)`` and ``.name``) or None.
    """

    def __init__(self, client: Any, features: Sequence[str] = (), *,
                 model_provider: Callable[[], Any] | None = None) -> None:
        self.client = client
        self.model_provider = model_provider
        self.ref, self._join_keys = self._pick(client, features)

    @staticmethod
    def _pick(client: Any, refs: Sequence[str]) -> tuple[str | None, tuple[str, ...]]:
        """The first ref defined in the client's repository and keyed by one join key (the item's)."""
        if client is None:
            return None, ()
        for ref in refs:
            try:
                keys = tuple(client.repo.feature(ref).join_keys)
            except Exception:  # noqa: BLE001 - not defined in these definitions: try the next
                continue
            if len(keys) == 1:
                return ref, keys
        return None, ()

    def score(self, user_id: str, item_ids: Sequence[str], features: Any = None, *,
              exclude_model: Any = None) -> FallbackScores:
        """Fallback scores for the candidates (blocking). `features`: what was read for the model, if anything."""
        problems: list[str] = []
        n = len(item_ids)
        model = self.model_provider() if self.model_provider is not None else None
        if model is not None and model is not exclude_model and features is not None \
                and getattr(features, "feature_set", None) == model.feature_set:
            try:
                s = np.asarray(model.scorer.score(features), dtype=np.float64).reshape(-1)
                if s.shape == (n,) and np.isfinite(s).all():
                    return FallbackScores(np.clip(s, 0.0, 1.0), model.name, model, tuple(problems))
                problems.append(f"fallback model {model.name} returned invalid scores")
            except Exception as exc:  # noqa: BLE001 - fall through to popularity
                problems.append(f"fallback model {model.name} failed: {type(exc).__name__}: {exc}")
        if self.ref is not None:
            try:
                return FallbackScores(squash_counts(self._counts(item_ids, features)), POPULARITY, None, tuple(problems))
            except Exception as exc:  # noqa: BLE001 - the store may be the thing that is down
                problems.append(f"popularity ({self.ref}) unavailable: {type(exc).__name__}: {exc}")
        else:
            problems.append("no popularity feature defined")
        return FallbackScores(request_order_scores(n), REQUEST_ORDER, None, tuple(problems))

    def _counts(self, item_ids: Sequence[str], features: Any) -> np.ndarray:
        assert self.ref is not None
        if features is not None and self.ref in getattr(features, "refs", ()):
            col = features.column(self.ref)
            valid = features.valid(self.ref)
            return np.where(valid, np.asarray(col, dtype=np.float64), 0.0)
        got = self.client.get_online_features(None, {self._join_keys[0]: list(item_ids)}, [self.ref])
        return np.where(got.valid(self.ref), np.asarray(got.column(self.ref), dtype=np.float64), 0.0)


__all__ = ["POPULARITY", "REQUEST_ORDER", "Fallback", "FallbackScores", "request_order_scores", "squash_counts"]
