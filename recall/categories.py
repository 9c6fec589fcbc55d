"""Item categories in memory, and a user's preferred categories for the popular and fresh channels.

:class:`ItemCategories` maps item ids to category names (one category per
synthetic item, several genres per MovieLens movie) in flat numpy arrays: a
1M-item catalogue with one category each is ~16 MB. It is loaded once at
start-up from the catalogue (Parquet or an Arrow table) and shared by the
trending updater (per-category counts), the fresh index and the channels.

:func:`preferred_categories` weighs categories for one request: categories
named by user features (``RecallConfig.category_features``, e.g. the
synthetic ``syn_user_profile:home_category``) count fully; categories of the
user's recent items count with a recency weight (``decay**position``),
together as much as one category feature. The weights are scaled so the strongest category has 1.0, and the top few are
kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recall.ids import dense_slots, lookup_slots


class ItemCategories:
    """item id -> category names, from flat arrays (see the module docstring)."""

    def __init__(self, item_ids: np.ndarray, category_codes: np.ndarray, names: Sequence[str]) -> None:
        """`item_ids[i]` belongs to category ``names[category_codes[i]]`` (an item may repeat: several categories)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        codes = np.asarray(category_codes, dtype=np.int32)
        if item_ids.shape != codes.shape:
            raise ValueError("item_ids and category_codes must have the same length")
        order = np.argsort(item_ids, kind="stable")
        self._items = item_ids[order]
        self._codes = codes[order]
        self.names = np.asarray(list(names), dtype=object)
        self._uniq, self._start = np.unique(self._items, return_index=True)
        self._end = np.append(self._start[1:], self._items.size)
        self._slot = dense_slots(self._uniq)

    @classmethod
    def from_table(cls, table: pa.Table, category_column: str = "category", item_column: str = "item_id") -> "ItemCategories":
        """From a catalogue table whose category column is a scalar (int or string) or a list of them."""
        col = table[category_column].combine_chunks() if isinstance(table[category_column], pa.ChunkedArray) else table[category_column]
        items = table[item_column].to_numpy(zero_copy_only=False).astype(np.int64)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
            items = np.repeat(items, lengths)
            col = col.flatten()
        col = col.cast(pa.string())
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        encoded = pc.dictionary_encode(col).combine_chunks() if isinstance(col, pa.ChunkedArray) else pc.dictionary_encode(col)
        codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        return cls(items[valid], codes[valid], names)

    @classmethod
    def from_parquet(cls, path: str | Path, category_column: str = "category", item_column: str = "item_id") -> "ItemCategories":
        return cls.from_table(pq.read_table(path, columns=[item_column, category_column]), category_column, item_column)

    def __len__(self) -> int:
        return int(self._uniq.size)

    @property
    def categories(self) -> list[str]:
        return [str(n) for n in self.names]

    def of(self, item: int) -> list[str]:
        """The categories of one item ([] when unknown)."""
        i = int(np.searchsorted(self._uniq, item))
        if i >= self._uniq.size or self._uniq[i] != item:
            return []
        return [str(n) for n in self.names[self._codes[self._start[i]:self._end[i]]]]

    def codes_of(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `items`, category code) pairs for every category of every known item."""
        items = np.asarray(items, dtype=np.int64)
        if self._slot is not None:
            pos_c = lookup_slots(self._slot, items)
            known = pos_c >= 0
        else:
            pos = np.searchsorted(self._uniq, items)
            pos_c = np.minimum(pos, max(self._uniq.size - 1, 0))
            known = (pos < self._uniq.size) & (self._uniq[pos_c] == items) if self._uniq.size else np.zeros(items.size, bool)
        idx = np.flatnonzero(known)
        starts, ends = self._start[pos_c[idx]], self._end[pos_c[idx]]
        counts = ends - starts
        owner = np.repeat(idx, counts)
        flat = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        return owner, self._codes[flat]

    def of_many(self, items: Iterable[int]) -> list[list[str]]:
        arr = np.fromiter((int(i) for i in items), dtype=np.int64)
        out: list[list[str]] = [[] for _ in range(arr.size)]
        owner, codes = self.codes_of(arr)
        for o, c in zip(owner.tolist(), codes.tolist()):
            out[o].append(str(self.names[c]))
        return out


def _values(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v if x is not None and str(x) != ""]
    s = str(v)
    return [s] if s else []


def preferred_categories(user_features: Mapping[str, Any], recent_items: Sequence[int], *,
                         category_features: Sequence[str] = (), categories: ItemCategories | None = None,
                         limit: int = 3, recent_decay: float = 0.85, max_recent: int = 20) -> dict[str, float]:
    """``{category: preference in (0, 1]}``, strongest first, at most `limit` (see the module docstring)."""
    if limit <= 0:
        return {}
    weight: dict[str, float] = {}
    for ref in category_features:
        for c in _values(user_features.get(ref)):
            weight[c] = weight.get(c, 0.0) + 1.0
    if categories is not None and recent_items:
        items = list(recent_items)[:max_recent]
        recent: dict[str, float] = {}
        for p, cats in enumerate(categories.of_many(items)):
            if cats:
                w = recent_decay**p / len(cats)
                for c in cats:
                    recent[c] = recent.get(c, 0.0) + w
        total = sum(recent.values())
        for c, w in recent.items():  # recent items as a whole weigh as much as one category feature
            weight[c] = weight.get(c, 0.0) + w / total
    if not weight:
        return {}
    top = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    best = top[0][1]
    return {c: w / best for c, w in top}


def query_preferences(query: Any, categories: ItemCategories | None, category_features: Sequence[str],
                      limit: int) -> dict[str, float]:
    """:func:`preferred_categories` of a :class:`recall.channel.RecallQuery`, computed once per request.

    The popular and fresh channels weigh the same categories; the result is
    kept in ``query.memo`` under the arguments so the second channel (or a
    top-up round) reuses it. Callers must not mutate the returned dict.
    """
    key = ("preferred_categories", id(categories), tuple(category_features), limit)
    memo = query.memo
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = preferred_categories(query.user_features, query.recent_items,
                                               category_features=category_features, categories=categories,
                                               limit=limit)
    return hit  # type: ignore[no-any-return]


__all__ = ["ItemCategories", "preferred_categories", "query_preferences"]
