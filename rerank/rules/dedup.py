"""dedup_group: keep one item per near-duplicate group (non-empty ``group_id``), the best-scored.

"Best" is the highest current score (after any boost applied before this rule);
ties go to the item earlier in the current order. The kept item says what it
beat; the others are dropped naming the item they duplicate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from rerank.rules.base import Rule, RuleContext, RuleParams
from rerank.types import Entry, Slate


class DedupGroupParams(RuleParams):
    type: Literal["dedup_group"]


class DedupGroup(Rule):
    type = "dedup_group"
    Params = DedupGroupParams
    params: DedupGroupParams

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        best: dict[str, Entry] = {}
        members: dict[str, int] = {}
        for e in slate.items:
            g = e.candidate.group_id
            if not g:
                continue
            members[g] = members.get(g, 0) + 1
            cur = best.get(g)
            if cur is None or e.final_score > cur.final_score:
                best[g] = e
        dup_groups = {g for g, n in members.items() if n > 1}
        if not dup_groups:
            return slate
        drops: dict[str, str] = {}
        for e in slate.items:
            g = e.candidate.group_id
            if g in dup_groups and e is not best[g]:
                keep = best[g]
                drops[e.item_id] = (f"near-duplicate of '{keep.item_id}' in group '{g}' "
                                    f"(score {e.final_score:.4g} <= {keep.final_score:.4g})")
        kept = {id(best[g]): best[g].with_reason(self.name, f"kept the best of {members[g]} items in group '{g}'")
                for g in dup_groups}
        items = tuple(kept.get(id(e), e) for e in slate.items)
        return replace(slate, items=items).without(self.name, drops)
