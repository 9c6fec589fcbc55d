"""availability_filter: drop out-of-stock (``available=false``) and expired (``expires_at_ms < now``) items.

The item state comes from the candidate when it carries it (in-process callers
may set ``Candidate.available`` / ``expires_at_ms``), else from the catalogue's
item-state hash in Redis (``rerank.stores``), read in the engine's one round
trip. An item without any state is available and never expires.
"""

from __future__ import annotations

from typing import Any, Literal


from rerank.impressions import Parse
from rerank.rules.base import RequestAndRedisFilter, RequestAndRedisParams, RuleContext, fmt_hours
from rerank.stores import queue_item_state
from rerank.types import Slate


class AvailabilityFilterParams(RequestAndRedisParams):
    type: Literal["availability_filter"]


class AvailabilityFilter(RequestAndRedisFilter):
    type = "availability_filter"
    Params = AvailabilityFilterParams
    params: AvailabilityFilterParams

    def queue(self, pipe: Any, ctx: RuleContext, slate: Slate) -> Parse:
        assert self.stores is not None, "availability_filter with use_redis needs stores"
        ids = [e.item_id for e in self._entries(slate)
               if e.candidate.available is None or not e.candidate.expires_at_ms]
        return queue_item_state(pipe, self.stores.prefix, ids)

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        """``ctx.fetched[name]`` (with use_redis): {item id: (available, expires_at_ms)} from Redis."""
        state: dict[str, tuple[bool, int]] = ctx.fetched.get(self.name, {}) if self.params.use_redis else {}
        drops: dict[str, str] = {}
        for e in self._entries(slate):
            c = e.candidate
            stored = state.get(c.item_id)
            available = c.available if c.available is not None else (stored[0] if stored else True)
            expires = c.expires_at_ms or (stored[1] if stored else 0)
            if not available:
                drops[c.item_id] = "out of stock (available=false)"
            elif expires and expires < ctx.now_ms:
                drops[c.item_id] = f"expired {fmt_hours(ctx.now_ms - expires)} ago (expires_at_ms={expires})"
        return slate.without(self.name, drops, injections=self.params.include_injections)
