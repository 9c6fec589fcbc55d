"""freshness_boost: lift new items, with a bounded effect.

boosted = score x (1 + boost x e^(-age / tau)) for items published at most
``max_age_hours`` ago (age < 0, a clock skew, counts as 0; an unknown
``published_at_ms`` = 0 gets no boost). Two bounds: the factor is at most
``1 + boost``, and an item never moves up more than ``max_positions``: its
boosted score is capped at the score of the item ``max_positions + 1`` places
above it in the incoming order. Since boosts only raise scores and ties keep the
incoming order, that item and every item above it stay above it.

The list is then re-sorted by the new score (stable), so the incoming order
must be a score order: place this rule before the rules that reorder
(diversity) and after the filters. Boosted items say by how much and how far
they moved; items pushed down say so too.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from pydantic import Field

from rerank.impressions import HOUR_MS
from rerank.rules.base import Rule, RuleContext, RuleParams, fmt_hours
from rerank.types import Slate


class FreshnessBoostParams(RuleParams):
    type: Literal["freshness_boost"]
    boost: float = Field(0.3, gt=0, le=10, description="Largest relative lift (for an item published just now).")
    tau_hours: float = Field(12.0, gt=0, description="Decay time constant of the lift.")
    max_age_hours: float = Field(72.0, gt=0, description="Items older than this get no lift.")
    max_positions: int = Field(5, ge=0, description="An item moves up at most this many positions.")


class FreshnessBoost(Rule):
    type = "freshness_boost"
    Params = FreshnessBoostParams
    params: FreshnessBoostParams

    def factor(self, published_at_ms: int, now_ms: int) -> float:
        if published_at_ms <= 0:
            return 1.0
        age = max(0, now_ms - published_at_ms)
        if age > self.params.max_age_hours * HOUR_MS:
            return 1.0
        return 1.0 + self.params.boost * math.exp(-age / (self.params.tau_hours * HOUR_MS))

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        items = slate.items
        n = len(items)
        if not n:
            return slate
        limit = self.params.max_positions
        incoming = [e.final_score for e in items]
        new = list(incoming)
        capped = [False] * n
        now = ctx.now_ms
        oldest = now - self.params.max_age_hours * HOUR_MS
        boost, tau = self.params.boost, self.params.tau_hours * HOUR_MS
        exp = math.exp
        for r, e in enumerate(items):
            published = e.candidate.published_at_ms
            if published <= 0 or published < oldest:
                continue
            f = 1.0 + boost * exp(-max(0, now - published) / tau)
            s = incoming[r] * f
            above = r - limit - 1  # must stay above us: the item just beyond max_positions
            if above >= 0 and s > incoming[above]:
                s = max(incoming[r], incoming[above])
                capped[r] = True
            new[r] = s
        if new == incoming:
            return slate
        neg = [-x for x in new]
        order = sorted(range(n), key=neg.__getitem__)  # stable: ties keep the incoming order
        out = []
        name = self.name
        for to, r in enumerate(order):
            e = items[r]
            if new[r] != incoming[r]:
                e = e.with_lazy_reason(name, _boosted, now - e[0].published_at_ms, incoming[r], new[r], r, to,
                                       limit if capped[r] else -1, final_score=new[r])
            elif to > r:
                e = e.with_lazy_reason(name, "moved down from {} to {} (fresher items boosted above it)", r, to)
            out.append(e)
        return replace(slate, items=tuple(out))


def _boosted(age_ms: int, old: float, new: float, frm: int, to: int, capped_at: int) -> str:
    move = f", moved up from {frm} to {to}" if to < frm else (f", moved down from {frm} to {to}" if to > frm else "")
    cap = f" (capped: at most {capped_at} positions up)" if capped_at >= 0 else ""
    return f"published {fmt_hours(max(0, age_ms))} ago: score {old:.4g} -> {new:.4g} (x{new / old:.3f}){move}{cap}"
