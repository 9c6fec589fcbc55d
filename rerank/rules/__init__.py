"""The rule implementations, one module each, and the registry of their ``type`` names.

| type                  | job                                                          | Redis read            |
|-----------------------|--------------------------------------------------------------|-----------------------|
| `seen_filter`         | drop items the user was shown within a window                | impression history    |
| `blocked_filter`      | drop blocked items and items by blocked authors              | block lists (option)  |
| `availability_filter` | drop out-of-stock and expired items                          | item state (option)   |
| `dedup_group`         | keep the best-scored item per near-duplicate group           | -                     |
| `freshness_boost`     | lift new items, bounded in factor and positions moved        | -                     |
| `diversity`           | at most k per category/author in any window of w positions   | -                     |
| `slots`               | insert ads/boosts at configured positions                    | -                     |
"""

from __future__ import annotations

from rerank.rules.availability import AvailabilityFilter
from rerank.rules.base import Rule, RuleContext, RuleParams, Stores
from rerank.rules.blocked import BlockedFilter
from rerank.rules.dedup import DedupGroup
from rerank.rules.diversity import Diversity
from rerank.rules.freshness import FreshnessBoost
from rerank.rules.seen import SeenFilter
from rerank.rules.slots import Slots

RULE_TYPES: dict[str, type[Rule]] = {
    cls.type: cls
    for cls in (SeenFilter, BlockedFilter, AvailabilityFilter, DedupGroup, FreshnessBoost, Diversity, Slots)
}

__all__ = [
    "RULE_TYPES",
    "AvailabilityFilter",
    "BlockedFilter",
    "DedupGroup",
    "Diversity",
    "FreshnessBoost",
    "Rule",
    "RuleContext",
    "RuleParams",
    "SeenFilter",
    "Slots",
    "Stores",
]
