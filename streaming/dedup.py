"""`SampleDeduper`: drop samples whose sample_id was seen recently -- a bounded, in-memory window.

The joiner writes each sample id once (see :mod:`streaming.joiner`), so a
consumer of the samples topic needs this only as a belt-and-braces guard: for
a second joiner started against the same group by mistake, for a replay of
the topic, or for a consumer that itself re-reads records after a crash (its
own at-least-once). Sample ids are deterministic (``"<request_id>:<item_id>"``),
so equal ids mean the same impression.

Bounded: the `capacity` most recently *first-seen* ids are remembered (FIFO
eviction; an id is not refreshed by a duplicate). Memory is ~100 bytes per id.
``state()`` / ``from_state()`` let a consumer checkpoint the window with its
own offsets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class SampleDeduper:
    """``seen = d.check(sample_id)``: False the first time an id comes (it is remembered), True after."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.evicted = 0

    def check(self, sample_id: str) -> bool:
        """True if `sample_id` is a duplicate of one in the window; otherwise remember it and return False."""
        ids = self._ids
        if sample_id in ids:
            self.duplicates += 1
            return True
        ids[sample_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
            self.evicted += 1
        return False

    def filter(self, sample_ids: Iterable[str]) -> list[bool]:
        """`check` for each id in order: True where the id is new (keep), False for a duplicate."""
        return [not self.check(s) for s in sample_ids]

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def state(self) -> list[str]:
        """The remembered ids, oldest first (to checkpoint)."""
        return list(self._ids)

    @classmethod
    def from_state(cls, ids: Iterable[str], capacity: int = 1_000_000) -> "SampleDeduper":
        d = cls(capacity)
        for s in ids:
            d.check(s)
        d.duplicates = 0
        return d


__all__ = ["SampleDeduper"]
