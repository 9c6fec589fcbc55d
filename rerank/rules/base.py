"""What every rule is: typed parameters from ``config/rerank.toml`` and a pure ``apply(slate, ctx) -> slate``.

A rule that reads Redis (seen, block lists, item state) also implements
``queue(pipe, ctx, slate)``: it adds its reads to the engine's one pipeline and
returns the parser of its replies; the parsed value reaches ``apply`` as
``ctx.fetched[rule.name]``. So ``apply`` stays a pure function that tests call
with hand-made inputs, and all Redis reads of a request are one round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from rerank.impressions import HistoryBackend, Parse
from rerank.types import Slate

RULE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class RuleParams(BaseModel):
    """Keys every ``[[rules]]`` table may carry; each rule adds its own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = Field(None, pattern=RULE_NAME_PATTERN, description="Reported as RerankReason.rule; default: the type.")
    enabled: bool = Field(True, description="false keeps the rule in the file but skips it.")

    @property
    def rule_name(self) -> str:
        return self.name or self.type


@dataclass(frozen=True)
class RuleContext:
    """Per-request inputs of the rules (beyond the slate)."""

    user_id: str
    now_ms: int
    count: int
    blocked_item_ids: frozenset[str] = frozenset()
    blocked_authors: frozenset[str] = frozenset()
    fetched: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stores:
    """What Redis-backed rules need to queue their reads."""

    prefix: str
    history: HistoryBackend | None = None


class Rule:
    """Base of the rule implementations. Subclasses set ``type`` and ``Params`` and implement ``apply``."""

    type: ClassVar[str]
    Params: ClassVar[type[RuleParams]]

    def __init__(self, params: RuleParams, stores: Stores | None = None) -> None:
        self.params = params
        self.stores = stores

    @property
    def name(self) -> str:
        return self.params.rule_name

    @property
    def needs_fetch(self) -> bool:
        """True if ``apply`` needs ``ctx.fetched[self.name]`` from :meth:`queue`."""
        return False

    @property
    def works_without_fetch(self) -> bool:
        """True if ``apply`` still does part of its job when the Redis read failed (request data only)."""
        return False

    def queue(self, pipe: Any, ctx: RuleContext, slate: Slate) -> Parse:  # pragma: no cover - overridden
        raise NotImplementedError

    def apply(self, slate: Slate, ctx: RuleContext) -> Slate:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class RequestAndRedisParams(RuleParams):
    """Filters that use what the request carries and, optionally, state read from Redis."""

    use_redis: bool = Field(True, description="Also read state from Redis (in the engine's one round trip).")
    include_injections: bool = Field(True, description="Also drop matching ads/boosts.")


class RequestAndRedisFilter(Rule):
    """A filter that still does its request-data part when the Redis read failed."""

    params: RequestAndRedisParams

    @property
    def needs_fetch(self) -> bool:
        return self.params.use_redis

    @property
    def works_without_fetch(self) -> bool:
        return True

    def _entries(self, slate: Slate) -> list[Any]:
        return [*slate.items, *slate.injections] if self.params.include_injections else list(slate.items)


def fmt_hours(ms: float) -> str:
    """``5400000`` -> ``"1.5h"``; minutes under an hour, days past two."""
    h = ms / 3_600_000
    if h < 1:
        return f"{max(0, math.floor(ms / 60_000))}m"
    if h >= 48:
        return f"{h / 24:.1f}d"
    return f"{h:.1f}h"
