"""seen_filter: drop items the user was already shown within the last ``window_hours``.

The impression history (``rerank.impressions``) is read for all candidates in
the engine's one Redis round trip; ``apply`` only removes what it said was seen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rerank.impressions import HOUR_MS, Parse
from rerank.rules.base import Rule, RuleContext, RuleParams, fmt_hours
from rerank.types import Slate


class SeenFilterParams(RuleParams):
    type: Literal["seen_filter"]
    window_hours: float = Field(72.0, gt=0, description="Look-back of the impression history (at most rerank.impressions_retention_hours).")
    include_injections: bool = Field(False, description="Also drop ads/boosts already shown (ads usually have their own frequency caps).")


class SeenFilter(Rule):
    type = "seen_filter"
    Params = SeenFilterParams
    params: SeenFilterParams

    @property
    def needs_fetch(self) -> bool:
        return True

    def since_ms(self, ctx: RuleContext) -> int:
        return ctx.now_ms - int(self.params.window_hours * HOUR_MS)

    def queue(self, pipe: Any, ctx: RuleContext, slate: Slate) -> Parse:
        assert self.stores is not None and self.stores.history is not None, "seen_filter needs an impression history"
        ids = [e.item_id for e in slate.items]
        if self.params.include_injections:
            ids += [e.item_id for e in slate.injections]
        return self.stores.history.queue_seen(pipe, ctx.user_id, ids, self.since_ms(ctx), ctx.now_ms)

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        """``ctx.fetched[name]``: {item id: last impression ms, or None when the layout does not keep times}."""
        seen: dict[str, int | None] = ctx.fetched[self.name]
        window = fmt_hours(self.params.window_hours * HOUR_MS)
        drops = {
            item: (f"shown to the user {fmt_hours(ctx.now_ms - at)} ago (window {window})" if at is not None
                   else f"shown to the user within the last {window}")
            for item, at in seen.items()
        }
        return slate.without(self.name, drops, injections=self.params.include_injections)
