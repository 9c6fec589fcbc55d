"""The gateway's feature read: the item attributes rerank's rules need, and optional user features.

Rerank rules work on ``category``, ``author``, ``group_id`` and
``published_at_ms`` of every candidate (diversity, de-duplication,
freshness). Recall and ranking do not return them, so the gateway reads them
from the online feature store: ``feed.item_attributes`` maps each attribute to
an item feature (``"syn_item_profile:category"``); a list-valued feature
(MovieLens genres) gives its first element. ``feed.user_features`` are read in
the same call (one pipelined round trip for the user and all candidates).

The read is the ``features`` stage of the gateway; it runs beside ranking
(both need only recall's candidates). A failed or late read degrades the feed
(stage FEATURES) and the candidates go to rerank without attributes.

Catalogue attributes hardly change, so they are cached in process
(``feed.item_attributes_cache_items`` entries, oldest out first, each trusted for
``feed.item_attributes_ttl_s``): only the candidates not cached are read, and
a request whose candidates are all cached is answered without leaving the
event loop. Measured on a 20k-item catalogue: the read of 1,000 candidates
took 4-10 ms of a busy 2-core machine, a fully cached lookup ~0.3 ms.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

ATTRIBUTES = ("category", "author", "group_id", "published_at_ms")
Attrs = tuple[str, str, str, int]  # category, author, group_id, published_at_ms
EMPTY: Attrs = ("", "", "", 0)


@dataclass
class FeatureRead:
    """Attributes per candidate (in the order asked) and the user's features."""

    attrs: list[Attrs]
    user_features: dict[str, Any] = field(default_factory=dict)
    missing: int = 0  # candidates without any attribute value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return _text(value[0]) if len(value) else ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _millis(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    try:
        v = int(value)
    except (TypeError, ValueError):
        return 0
    return max(0, v)


class ItemAttributes:
    """Reads the configured attributes (see the module docstring) with a :class:`FeatureClient`, through a cache."""

    def __init__(self, client: Any, attributes: Mapping[str, str], user_features: Sequence[str] = (), *,
                 cache_items: int = 0, cache_ttl_s: float = 0.0, clock: Any = time.monotonic) -> None:
        unknown = set(attributes) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"feed.item_attributes: unknown attribute(s) {sorted(unknown)}; known: {', '.join(ATTRIBUTES)}")
        self.client = client
        self.attributes = {a: attributes[a] for a in ATTRIBUTES if attributes.get(a)}
        self.item_refs = list(dict.fromkeys(self.attributes.values()))
        self.user_refs = [r for r in dict.fromkeys(user_features) if r not in self.item_refs]
        self.cache_items = max(0, int(cache_items)) if cache_ttl_s > 0 else 0
        self.cache_ttl_s = float(cache_ttl_s)
        self.clock = clock
        self._cache: dict[str, tuple[float, Attrs]] = {}  # item -> (expires at, attrs); insertion order = age
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0}

    def cached(self, item_ids: Sequence[str]) -> FeatureRead | None:
        """The read when every candidate is cached and no user feature is wanted (no I/O: call it in the loop)."""
        if not self.cache_items or self.user_refs:
            return None
        now = self.clock()
        cache = self._cache
        out: list[Attrs] = []
        for item in item_ids:
            hit = cache.get(item)
            if hit is None or hit[0] < now:
                return None
            out.append(hit[1])
        self.stats["hits"] += len(out)
        return FeatureRead(out, {}, sum(1 for a in out if a == EMPTY))

    def _remember(self, items: Sequence[str], attrs: Sequence[Attrs]) -> None:
        if not self.cache_items:
            return
        expires = self.clock() + self.cache_ttl_s
        with self._lock:
            cache = self._cache
            for item, a in zip(items, attrs):
                cache.pop(item, None)
                cache[item] = (expires, a)
            over = len(cache) - self.cache_items
            if over > 0:
                for key in list(itertools.islice(iter(cache), over)):
                    del cache[key]

    @property
    def enabled(self) -> bool:
        return self.client is not None and bool(self.item_refs or self.user_refs)

    def check(self) -> None:
        """Raise ValueError when a configured feature is not servable (a deployment error: refuse to start)."""
        if self.client is None:
            return
        try:
            if self.item_refs:
                self.client.plan(self.item_refs, "item")
            if self.user_refs:
                self.client.plan(self.user_refs, "user")
        except ValueError as exc:
            raise ValueError(f"feed: the features to read are not servable: {exc}") from exc

    def read(self, user_id: str, item_ids: Sequence[str], now_ms: int | None = None) -> FeatureRead:
        """One online read for the user and the candidates not cached (blocking: call it from a worker thread)."""
        n = len(item_ids)
        if not self.enabled or (n == 0 and not self.user_refs):
            return FeatureRead([EMPTY] * n)
        if self.cache_items and n:
            now = self.clock()
            cache = self._cache
            known: dict[int, Attrs] = {}
            for i, item in enumerate(item_ids):
                hit = cache.get(item)
                if hit is not None and hit[0] >= now:
                    known[i] = hit[1]
            if known:
                todo = [item for i, item in enumerate(item_ids) if i not in known]
                self.stats["hits"] += len(known)
                fresh = self._read(user_id, todo, now_ms)
                it = iter(fresh.attrs)
                attrs = [known[i] if i in known else next(it) for i in range(n)]
                return FeatureRead(attrs, fresh.user_features, sum(1 for a in attrs if a == EMPTY))
        return self._read(user_id, item_ids, now_ms)

    def _read(self, user_id: str, item_ids: Sequence[str], now_ms: int | None) -> FeatureRead:
        n = len(item_ids)
        if n == 0 and not self.user_refs:
            return FeatureRead([])
        self.stats["misses"] += n
        at = None if now_ms is None else datetime.fromtimestamp(now_ms / 1000.0, tz=UTC)
        user_key: Any = int(user_id) if user_id.isdigit() else user_id
        if n == 0:
            rows = self.client.get_online_features("user", [user_key], self.user_refs, now=at)
            return FeatureRead([], {ref: rows.values(ref)[0] for ref in self.user_refs})
        refs = [*self.item_refs, *self.user_refs]
        if self.user_refs:  # one read: the user's row is fetched once whatever n is
            rows = self.client.get_online_features(None, {"user_id": [user_key] * n, "item_id": list(item_ids)}, refs, now=at)
        else:
            rows = self.client.get_online_features("item", list(item_ids), refs, now=at)
        cols = {a: rows.values(ref) for a, ref in self.attributes.items()}
        attrs: list[Attrs] = []
        missing = 0
        for i in range(n):
            cat = _text(cols["category"][i]) if "category" in cols else ""
            author = _text(cols["author"][i]) if "author" in cols else ""
            group = _text(cols["group_id"][i]) if "group_id" in cols else ""
            pub = _millis(cols["published_at_ms"][i]) if "published_at_ms" in cols else 0
            missing += not (cat or author or group or pub)
            attrs.append((cat, author, group, pub))
        user = {ref: rows.values(ref)[0] for ref in self.user_refs} if self.user_refs else {}
        self._remember(item_ids, attrs)
        return FeatureRead(attrs, user, missing)


__all__ = ["ATTRIBUTES", "EMPTY", "FeatureRead", "ItemAttributes"]
