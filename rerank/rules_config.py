"""The declarative rule chain: ``config/rerank.toml`` loaded and validated into typed rule parameters.

Format (TOML, the project's config format)::

    policy = "default"            # label; policy_version = "<policy>-<hash of the validated chain>"

    [[rules]]                     # one table per rule; rules run in the order of the tables
    type = "seen_filter"          # which rule (see rerank.rules)
    name = "seen_filter"          # optional; reported in reasons and used by disabled_rules (default: type)
    window_hours = 72             # the rule's own keys; unknown keys are errors
    # enabled = false             # keep it in the file, skip it

Order: exactly the order of the ``[[rules]]`` tables. A file without a
``rules`` key (or no file at all) gets :data:`DEFAULT_RULES`, which is also what
``config/rerank.toml`` ships: filters first (seen, blocked, availability: they
only remove), then de-duplication (so a group's best survivor is kept, not a
filtered one), then the freshness boost (it re-sorts by score, so it must come
before anything that reorders), then diversity (arranges the page in score
order), then the slots (they insert at fixed positions and must see the final
organic order to avoid duplicates).

Errors name the file, the rule and the key, e.g.
``config/rerank.toml: rules[4] ('diversity').constraints[0].window: Input should be greater than or equal to 2``.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cascade.config import RerankConfig
from rerank.rules import RULE_TYPES
from rerank.rules.availability import AvailabilityFilterParams
from rerank.rules.blocked import BlockedFilterParams
from rerank.rules.dedup import DedupGroupParams
from rerank.rules.diversity import DiversityParams
from rerank.rules.freshness import FreshnessBoostParams
from rerank.rules.seen import SeenFilterParams
from rerank.rules.slots import SlotsParams

RuleSpec = Annotated[
    Union[SeenFilterParams, BlockedFilterParams, AvailabilityFilterParams, DedupGroupParams,
          FreshnessBoostParams, DiversityParams, SlotsParams],
    Field(discriminator="type"),
]

DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"type": "seen_filter", "window_hours": 72},
    {"type": "blocked_filter"},
    {"type": "availability_filter"},
    {"type": "dedup_group"},
    {"type": "freshness_boost", "boost": 0.3, "tau_hours": 12, "max_age_hours": 72, "max_positions": 5},
    {"type": "diversity", "constraints": [{"field": "category", "window": 5, "max": 2},
                                          {"field": "author", "window": 4, "max": 1}]},
    {"type": "slots", "name": "ad_slot", "kinds": ["ad"], "positions": [3, 10]},
    {"type": "slots", "name": "boost_slot", "kinds": ["boosted"], "positions": [1]},
)


class RulesConfigError(ValueError):
    """The rule chain is invalid; the message names the file, rule and key."""


class RulesConfig(BaseModel):
    """The validated chain. ``rules`` are in application order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field("default", min_length=1, max_length=64)
    rules: tuple[RuleSpec, ...] = Field(default_factory=lambda: _default_specs())

    @model_validator(mode="after")
    def _unique_names(self) -> RulesConfig:
        seen: dict[str, int] = {}
        for i, r in enumerate(self.rules):
            if r.rule_name in seen:
                raise ValueError(f"rules[{i}]: rule name '{r.rule_name}' already used by rules[{seen[r.rule_name]}]; "
                                 f"give one of them a distinct `name`")
            seen[r.rule_name] = i
        return self

    @property
    def version(self) -> str:
        """``<policy>-<12 hex of the canonical validated chain>``: changes whenever any effective parameter does."""
        canon = json.dumps([r.model_dump(mode="json") for r in self.rules], sort_keys=True, separators=(",", ":"))
        return f"{self.policy}-{hashlib.sha256(canon.encode()).hexdigest()[:12]}"

    @property
    def names(self) -> list[str]:
        return [r.rule_name for r in self.rules]


def _default_specs() -> tuple[Any, ...]:
    return RulesConfig.model_validate({"rules": list(DEFAULT_RULES)}).rules


def _where(loc: Sequence[Any], tree: Mapping[str, Any]) -> str:
    """A pydantic error location as a readable key path; the rule's name is added after ``rules[i]``."""
    out = ""
    i = 0
    loc = list(loc)
    while i < len(loc):
        part = loc[i]
        if part == "rules" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            idx = loc[i + 1]
            raw = tree.get("rules")
            label = ""
            if isinstance(raw, list) and idx < len(raw) and isinstance(raw[idx], Mapping):
                label = str(raw[idx].get("name") or raw[idx].get("type") or "")
            out += f"rules[{idx}]" + (f" ('{label}')" if label else "")
            i += 2
            if i < len(loc) and isinstance(loc[i], str) and loc[i] in RULE_TYPES:  # the discriminator's branch
                i += 1
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        i += 1
    return out or "(top level)"


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "union_tag_invalid":
        return f"unknown rule type {err.get('input', {}).get('type')!r}; known types: {', '.join(sorted(RULE_TYPES))}" \
            if isinstance(err.get("input"), Mapping) else str(err.get("msg"))
    if kind == "union_tag_not_found":
        return f"missing key 'type' (one of: {', '.join(sorted(RULE_TYPES))})"
    return str(err.get("msg")).removeprefix("Value error, ")


def parse_rules(tree: Mapping[str, Any], source: str = "rerank rules", settings: RerankConfig | None = None) -> RulesConfig:
    """Validate a parsed TOML tree; raises :class:`RulesConfigError` naming every bad key."""
    try:
        cfg = RulesConfig.model_validate(dict(tree))
    except ValidationError as exc:
        errors = exc.errors()
        locs = [tuple(e["loc"]) for e in errors]
        lines = [
            f"{source}: {_where(e['loc'], tree)}: {_message(e)}" if e["loc"] else f"{source}: {_message(e)}"
            for e in errors
            # a container "too short" because its only element was invalid is noise next to that element's error
            if not (e["type"] == "too_short" and any(len(o) > len(e["loc"]) and o[:len(e["loc"])] == tuple(e["loc"]) for o in locs))
        ]
        raise RulesConfigError("invalid rerank rules:\n  " + "\n  ".join(lines)) from None
    if settings is not None:
        for i, r in enumerate(cfg.rules):
            if isinstance(r, SeenFilterParams) and r.window_hours > settings.impressions_retention_hours:
                raise RulesConfigError(
                    f"invalid rerank rules:\n  {source}: rules[{i}] ('{r.rule_name}').window_hours: {r.window_hours:g} "
                    f"exceeds rerank.impressions_retention_hours ({settings.impressions_retention_hours:g}): "
                    f"the history does not go back that far")
    return cfg


def load_rules(path: str | Path | None = None, settings: RerankConfig | None = None) -> RulesConfig:
    """Read and validate the rule chain (default: ``settings.rules_file``); missing file -> :data:`DEFAULT_RULES`."""
    settings = settings or RerankConfig()
    file = Path(path) if path is not None else settings.rules_file
    if not file.exists():
        if path is not None:
            raise FileNotFoundError(f"rerank rules file not found: {file}")
        return parse_rules({}, "(defaults)", settings)
    try:
        with file.open("rb") as fh:
            tree = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RulesConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_rules(tree, str(file), settings)


__all__ = ["DEFAULT_RULES", "RuleSpec", "RulesConfig", "RulesConfigError", "load_rules", "parse_rules"]
