"""slots: insert ads or boosted items from the injection list at configured page positions.

``positions`` are 0-based page positions (e.g. ``[3, 10]``); only those below the
page size are used, and positions another slot rule already took are skipped.
Injections of the rule's ``kinds`` are taken best-first (by their priority
score); each gets the free slot nearest to its ``requested_position`` (ties:
the later slot), or the earliest free slot when it requests none. An injection
that duplicates an organic item that could appear on the page (same item id or
same non-empty group_id among the first ``count`` organic items) is dropped:
the page never shows the same thing twice. Injections left without a slot are
below the cut-off (not listed as dropped). Injected items keep their kind (AD
or BOOSTED) and are exempt from the other rules' reordering.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field, field_validator

from rerank.rules.base import Rule, RuleContext, RuleParams
from rerank.types import ItemKind, Slate

_KINDS = {"ad": ItemKind.AD, "boosted": ItemKind.BOOSTED}


class SlotsParams(RuleParams):
    type: Literal["slots"]
    positions: tuple[int, ...] = Field(min_length=1, description="0-based page positions of the slots.")
    kinds: tuple[Literal["ad", "boosted"], ...] = Field(("ad",), min_length=1, description="Injection kinds this rule places.")

    @field_validator("positions")
    @classmethod
    def _positions(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(p < 0 or p > 999 for p in v):
            raise ValueError(f"positions must be in [0, 999], got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"positions must be unique, got {list(v)}")
        return tuple(sorted(v))


class Slots(Rule):
    type = "slots"
    Params = SlotsParams
    params: SlotsParams

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        kinds = {_KINDS[k] for k in self.params.kinds}
        free = [p for p in self.params.positions if p < ctx.count and p not in slate.placed]
        mine = [e for e in slate.injections if e.candidate.kind in kinds]
        if not mine or not free:
            return slate
        page = slate.items[:ctx.count]
        page_ids = {e.item_id: e for e in page}
        page_groups = {e.candidate.group_id: e for e in page if e.candidate.group_id}
        placed = dict(slate.placed)
        drops: dict[str, str] = {}
        used: set[str] = set()
        for e in sorted(mine, key=lambda x: -x.final_score):  # stable: ties keep the list order
            if not free:
                break
            c = e.candidate
            if c.item_id in page_ids:
                drops[c.item_id] = f"duplicates organic item '{c.item_id}' on the page"
                continue
            if c.group_id and c.group_id in page_groups:
                drops[c.item_id] = f"duplicates organic item '{page_groups[c.group_id].item_id}' (group '{c.group_id}')"
                continue
            want = c.requested_position
            if want is None:
                slot = free[0]
                how = ""
            else:
                slot = min(free, key=lambda p: (abs(p - want), -p))
                how = "" if slot == want else f", requested {want}"
            free.remove(slot)
            used.add(c.item_id)
            kind = ItemKind(c.kind).name.lower()
            placed[slot] = e.with_reason(self.name, f"inserted {kind} at slot {slot}{how} (priority {e.final_score:.4g})")
        if not used and not drops:
            return slate
        injections = tuple(e for e in slate.injections if e.item_id not in used)
        return replace(slate, injections=injections, placed=placed).without(self.name, drops, injections=True)
