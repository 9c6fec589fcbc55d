"""diversity: at most ``max`` items sharing a category (or author) in any ``window`` consecutive positions.

Sliding-window greedy, for all constraints at once: at each position, take the
highest-ranked remaining item (the incoming order, i.e. score order after the
freshness boost) that violates no constraint given the ``window - 1`` items
placed just before; if none qualifies, relax: take the highest-ranked item
anyway and record the violation on it. Only the first ``positions`` places are
arranged (default: the page size, ``count``); the rest keep their order after
them. Items with an empty value for a field are not limited by that field.

Invariant (checked on random inputs in the tests): in the output, every window
of ``window`` consecutive positions holds at most ``max`` items with the same
value, unless an item in it carries a relaxation reason of this rule.

Positions in explanations are 0-based indices of the organic order at this
rule (slot rules insert ads/boosts later). Ads and boosts are not subject to
diversity (their positions are fixed by the slot rules), so the invariant holds
for the organic items of the final page, windows counted over those.

Cost: O(positions x scanned), where the scan stops at the first eligible item;
when every remaining item is blocked (detected from per-value counts without a
scan) the relaxation is O(1).
"""

from __future__ import annotations

from collections import Counter, deque
from operator import attrgetter
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rerank.rules.base import Rule, RuleContext, RuleParams
from rerank.types import Entry, Slate


class DiversityConstraint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    field: Literal["category", "author"]
    window: int = Field(ge=2, le=100, description="Consecutive positions the limit applies to.")
    max: int = Field(ge=1, description="Items with the same value allowed in any window.")

    @model_validator(mode="after")
    def _max_below_window(self) -> DiversityConstraint:
        if self.max >= self.window:
            raise ValueError(f"max ({self.max}) must be smaller than window ({self.window}), else the constraint never binds")
        return self


class DiversityParams(RuleParams):
    type: Literal["diversity"]
    constraints: tuple[DiversityConstraint, ...] = Field(min_length=1)
    positions: int | None = Field(None, ge=1, le=1000, description="Positions arranged (default: the page size).")

    @model_validator(mode="after")
    def _one_per_field(self) -> DiversityParams:
        fields = [c.field for c in self.constraints]
        if len(set(fields)) != len(fields):
            raise ValueError(f"one constraint per field, got {fields}")
        return self


def violations(values: list[list[str]], constraints: tuple[DiversityConstraint, ...]) -> list[tuple[int, int]]:
    """(window start, constraint index) of every window breaking a constraint; values[c][p] is the field value at p."""
    out = []
    for ci, c in enumerate(constraints):
        col = values[ci]
        for start in range(0, max(0, len(col) - c.window + 1)):
            counts = Counter(v for v in col[start:start + c.window] if v)
            if counts and max(counts.values()) > c.max:
                out.append((start, ci))
    return out


class Diversity(Rule):
    type = "diversity"
    Params = DiversityParams
    params: DiversityParams

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:
        items = slate.items
        n = len(items)
        cons = self.params.constraints
        limit = min(n, self.params.positions or ctx.count)
        if n < 2 or limit < 2:
            return slate
        fields = [c.field for c in cons]
        get = attrgetter(*fields)
        vals = [get(e[0]) for e in items] if len(fields) > 1 else [(get(e[0]),) for e in items]
        # remaining items, per-value counts among them (for the "nothing eligible" shortcut)
        remaining = list(range(n))
        left = [Counter(v[ci] for v in vals) for ci in range(len(cons))]
        left_pairs = Counter(vals) if len(cons) > 1 else None
        recent = [deque(maxlen=c.window - 1) for c in cons]  # values at the last window-1 positions
        in_window = [Counter() for _ in cons]
        blocked_why: dict[int, str] = {}
        relaxed: dict[int, str] = {}
        placed: list[int] = []
        for pos in range(limit):
            full = [{v for v, k in in_window[ci].items() if v and k >= c.max} for ci, c in enumerate(cons)]
            pick = None
            if not any(full):
                pick = 0
            elif self._anything_eligible(full, left, left_pairs, len(remaining)):
                for j, r in enumerate(remaining):
                    v = vals[r]
                    hit = next((ci for ci in range(len(cons)) if v[ci] in full[ci]), None)
                    if hit is None:
                        pick = j
                        break
                    if r not in blocked_why:
                        c = cons[hit]
                        blocked_why[r] = f"{c.field} '{v[hit]}' already {in_window[hit][v[hit]]} in window {c.window}"
            if pick is None:
                pick = 0
                r = remaining[0]
                v = vals[r]
                why = "; ".join(f"{c.field} '{v[ci]}' already {in_window[ci][v[ci]]} in window {c.window}"
                                for ci, c in enumerate(cons) if v[ci] in full[ci])
                relaxed[r] = f"constraint relaxed at position {pos}: no remaining item fits the window limits ({why})"
            r = remaining.pop(pick)
            placed.append(r)
            v = vals[r]
            for ci in range(len(cons)):
                left[ci][v[ci]] -= 1
                if len(recent[ci]) == recent[ci].maxlen:
                    in_window[ci][recent[ci][0]] -= 1
                recent[ci].append(v[ci])
                in_window[ci][v[ci]] += 1
            if left_pairs is not None:
                left_pairs[v] -= 1
        order = placed + remaining
        if order == list(range(n)) and not relaxed:
            return slate
        out: list[Entry] = []
        name = self.name
        for to, r in enumerate(order):
            e = items[r]
            if r in relaxed:
                e = e.with_reason(name, relaxed[r])
            if to > r:
                e = e.with_lazy_reason(name, "moved down from {} to {} ({})", r, to, blocked_why.get(r) or "items promoted above it")
            elif to < r:
                e = e.with_lazy_reason(name, "moved up from {} to {} (higher-ranked items would exceed the window limits)", r, to)
            out.append(e)
        return replace(slate, items=tuple(out))

    @staticmethod
    def _anything_eligible(full: list[set[str]], left: list[Counter], left_pairs: Counter | None, n_left: int) -> bool:
        """Is some remaining item outside every saturated value? By counting (inclusion-exclusion over two fields)."""
        if len(full) == 1:
            return sum(left[0][v] for v in full[0]) < n_left
        if len(full) == 2 and left_pairs is not None:
            blocked = sum(left[0][v] for v in full[0]) + sum(left[1][v] for v in full[1])
            blocked -= sum(left_pairs[(a, b)] for a in full[0] for b in full[1])
            return blocked < n_left
        return True  # unreachable with the two supported fields; fall back to the scan
