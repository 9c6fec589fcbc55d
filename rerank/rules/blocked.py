"""blocked_filter: drop items, and items by authors, that the user blocked.

Two sources, merged: the request (``RerankInput.blocked_item_ids`` /
``blocked_authors``; over gRPC ``context.attributes["blocked_item_ids"]`` and
``["blocked_authors"]``, comma separated) and, with ``use_redis``, the user's
block lists in Redis (``rerank.stores``), read in the engine's one round trip.
"""

from __future__ import annotations

from typing import Any, Literal


from rerank.impressions import Parse
from rerank.rules.base import RequestAndRedisFilter, RequestAndRedisParams, RuleContext
from rerank.stores import queue_blocked
from rerank.types import Slate


class BlockedFilterParams(RequestAndRedisParams):
    type: Literal["blocked_filter"]


class BlockedFilter(RequestAndRedisFilter):
    type = "blocked_filter"
    Params = BlockedFilterParams
    params: BlockedFilterParams

    def queue(self, pipe: Any, ctx: RuleContext, slate: Slate) -> Parse:
        assert self.stores is not None, "blocked_filter with use_redis needs stores"
        entries = self._entries(slate)
        authors = sorted({e.candidate.author for e in entries if e.candidate.author})
        return queue_blocked(pipe, self.stores.prefix, ctx.user_id, [e.item_id for e in entries], authors)

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        """``ctx.fetched[name]`` (with use_redis): (blocked item ids, blocked authors) from Redis."""
        redis_items, redis_authors = ctx.fetched.get(self.name, (frozenset(), frozenset())) if self.params.use_redis else (frozenset(), frozenset())
        drops: dict[str, str] = {}
        for e in self._entries(slate):
            c = e.candidate
            if c.item_id in ctx.blocked_item_ids:
                drops[c.item_id] = "item blocked by the user (request)"
            elif c.item_id in redis_items:
                drops[c.item_id] = "item blocked by the user (block list)"
            elif c.author and c.author in ctx.blocked_authors:
                drops[c.item_id] = f"author '{c.author}' blocked by the user (request)"
            elif c.author and c.author in redis_authors:
                drops[c.item_id] = f"author '{c.author}' blocked by the user (block list)"
        return slate.without(self.name, drops, injections=self.params.include_injections)
