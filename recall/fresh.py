"""Fresh items: recently published items in sorted sets by publication time, globally and per category.

Keys (one hash tag per namespace)::

    {ns:fresh}:g           zset item -> published time (epoch ms)
    {ns:fresh}:c:<cat>     the same per category
    {ns:fresh}:cats        set of categories with a zset

:class:`FreshIndex` writes them: :meth:`~FreshIndex.bootstrap` from a
catalogue (items published in ``[now - max_age, now + lookahead]``, replacing
the sets atomically), :meth:`~FreshIndex.add` for new items as they are
published, :meth:`~FreshIndex.prune` to drop items past ``max_age``. Reads
bound the age by score range anyway, so an unpruned set is only larger,
never wrong. The reader is :class:`recall.channels.fresh.FreshChannel`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from recall.categories import ItemCategories
from recall.covisit import to_ms
from recall.redis_io import SortedSetKeys, decode_str

_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class FreshKeys(SortedSetKeys):
    family: ClassVar[str] = "fresh"


class FreshIndex:
    """Writes the fresh-item sets (see the module docstring)."""

    def __init__(self, client: Any, namespace: str, *, max_age_hours: float,
                 categories: ItemCategories | None = None) -> None:
        if not max_age_hours > 0:
            raise ValueError("max_age_hours must be positive")
        self.client = client
        self.keys = FreshKeys.of(namespace)
        self.max_age_ms = int(max_age_hours * _HOUR_MS)
        self.categories = categories

    @classmethod
    def from_config(cls, client: Any, config: Any, namespace: str | None = None,
                    categories: ItemCategories | None = None) -> "FreshIndex":
        return cls(client, namespace or config.features.project, max_age_hours=config.recall.fresh_max_age_hours,
                   categories=categories)

    def _groups(self, items: np.ndarray, published: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {self.keys.glob: (items, published)}
        if self.categories is not None and items.size:
            owner, codes = self.categories.codes_of(items)
            for code in np.unique(codes):
                sel = owner[codes == code]
                out[self.keys.cat(str(self.categories.names[code]))] = (items[sel], published[sel])
        return out

    @staticmethod
    def _zadd(pipe: Any, key: str, items: np.ndarray, published: np.ndarray, chunk: int = 5000) -> None:
        for a in range(0, items.size, chunk):
            pipe.zadd(key, dict(zip(items[a:a + chunk].tolist(), published[a:a + chunk].tolist())))

    def add(self, items: Any, published_ms: Any) -> int:
        """Add (or move) items with their publication times; returns how many."""
        items = np.asarray(items, dtype=np.int64)
        published = np.asarray(published_ms, dtype=np.int64)
        pipe = self.client.pipeline(transaction=True)
        for key, (its, pub) in self._groups(items, published).items():
            self._zadd(pipe, key, its, pub)
            if key != self.keys.glob:
                pipe.sadd(self.keys.cats, key[len(self.keys.cat_prefix):])
        pipe.execute()
        return int(items.size)

    def bootstrap(self, catalogue: pa.Table, now: Any = None, *, published_column: str = "published_ts",
                  lookahead_hours: float = 0.0) -> int:
        """Replace the sets with the catalogue's items published in ``[now - max_age, now + lookahead]``."""
        now_ms = to_ms(now) if now is not None else int(time.time() * 1000)
        col = catalogue[published_column]
        if pa.types.is_timestamp(col.type):
            per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[col.type.unit]
            raw = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
            published = (raw * 1000 if per_ms < 1 else raw // int(per_ms)).astype(np.int64)
        else:
            published = col.to_numpy(zero_copy_only=False).astype(np.int64)
        items = catalogue["item_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        lo, hi = now_ms - self.max_age_ms, now_ms + int(lookahead_hours * _HOUR_MS)
        sel = (published >= lo) & (published <= hi)
        items, published = items[sel], published[sel]
        stage = self.keys.stage_prefix
        groups = self._groups(items, published)
        old_cats = [decode_str(c) for c in self.client.smembers(self.keys.cats)]
        pipe = self.client.pipeline(transaction=False)
        for key, (its, pub) in groups.items():
            pipe.delete(stage + key)
            self._zadd(pipe, stage + key, its, pub)
        pipe.execute()
        tx = self.client.pipeline(transaction=True)
        for c in old_cats:
            tx.delete(self.keys.cat(c))  # type: ignore[arg-type]
        tx.delete(self.keys.glob, self.keys.cats)
        for key, (its, _) in groups.items():
            if its.size:
                tx.rename(stage + key, key)
                if key != self.keys.glob:
                    tx.sadd(self.keys.cats, key[len(self.keys.cat_prefix):])
        tx.execute()
        return int(items.size)

    def prune(self, now: Any = None) -> int:
        """Drop items older than max_age at `now` from every set; returns how many entries went."""
        now_ms = to_ms(now) if now is not None else int(time.time() * 1000)
        cutoff = now_ms - self.max_age_ms
        cats = [decode_str(c) for c in self.client.smembers(self.keys.cats)]
        pipe = self.client.pipeline(transaction=True)
        for key in [self.keys.glob, *[self.keys.cat(c) for c in cats]]:  # type: ignore[arg-type]
            pipe.zremrangebyscore(key, "-inf", f"({cutoff}")
        return int(sum(pipe.execute()))


__all__ = ["FreshIndex", "FreshKeys"]
