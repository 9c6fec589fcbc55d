"""The values the rule engine works on: candidates in, a slate between rules, a result out.

Rules are pure functions ``Slate -> Slate`` over immutable values: a rule that
raises leaves the previous slate intact, so the engine can skip it (fail open)
without undoing anything. Only the entries a rule touches are replaced
(``Entry.moved`` / ``Entry.rescored``), so a pass over 1,000 candidates copies
little.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple


class ItemKind(enum.IntEnum):
    """Same numbers as ``cascade.v1.ItemKind``."""

    UNSPECIFIED = 0
    ORGANIC = 1
    AD = 2
    BOOSTED = 3


class Candidate(NamedTuple):
    """An item the reranker can place (``cascade.v1.RerankCandidate`` plus optional item state).

    ``available`` / ``expires_at_ms`` are item state: None / 0 mean "not given
    here", and the availability rule then reads the item state from Redis.
    ``channels`` is passed through untouched (proto ``ChannelScore`` messages or
    ``(channel, score, rank)`` tuples). A NamedTuple: immutable and about five
    times cheaper to build than a frozen dataclass (1,000 per request).
    """

    item_id: str
    score: float
    category: str = ""
    author: str = ""
    group_id: str = ""
    published_at_ms: int = 0
    kind: ItemKind = ItemKind.ORGANIC
    requested_position: int | None = None
    available: bool | None = None
    expires_at_ms: int = 0
    channels: tuple[Any, ...] = ()


class Reason:
    """Why a rule moved, boosted, inserted, kept or dropped an item (``cascade.v1.RerankReason``).

    The explanation may be given as a format string and its arguments
    (:meth:`lazy`): it is rendered on first read, so the reasons of the hundreds
    of candidates that never reach the page cost no string formatting.
    """

    __slots__ = ("rule", "_text", "_fmt", "_args")

    def __init__(self, rule: str, explanation: str) -> None:
        self.rule = rule
        self._text: str | None = explanation
        self._fmt = ""
        self._args: tuple[Any, ...] = ()

    @classmethod
    def lazy(cls, rule: str, fmt: str | Callable[..., str], *args: Any) -> Reason:
        """The explanation is ``fmt.format(*args)`` (or ``fmt(*args)`` for a function), rendered on first read."""
        r = cls.__new__(cls)
        r.rule, r._text, r._fmt, r._args = rule, None, fmt, args
        return r

    @property
    def explanation(self) -> str:
        if self._text is None:
            fmt = self._fmt
            self._text = fmt.format(*self._args) if isinstance(fmt, str) else fmt(*self._args)
            self._args = ()
        return self._text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reason) and (self.rule, self.explanation) == (other.rule, other.explanation)

    def __hash__(self) -> int:
        return hash((self.rule, self.explanation))

    def __repr__(self) -> str:
        return f"Reason(rule={self.rule!r}, explanation={self.explanation!r})"


class Entry(NamedTuple):
    """A candidate on its way through the rules: its current score and the reasons collected so far."""

    candidate: Candidate
    final_score: float
    reasons: tuple[Reason, ...] = ()

    @staticmethod
    def of(candidate: Candidate) -> Entry:
        return Entry(candidate, float(candidate.score))

    @property
    def item_id(self) -> str:
        return self.candidate.item_id

    def with_reason(self, rule: str, explanation: str, *, final_score: float | None = None) -> Entry:
        return Entry(self.candidate, self.final_score if final_score is None else final_score,
                     (*self.reasons, Reason(rule, explanation)))

    def with_lazy_reason(self, rule: str, fmt: str | Callable[..., str], *args: Any, final_score: float | None = None) -> Entry:
        """Like :meth:`with_reason`, the explanation being rendered from ``fmt`` and ``args`` on first read."""
        return Entry(self.candidate, self.final_score if final_score is None else final_score,
                     (*self.reasons, Reason.lazy(rule, fmt, *args)))


@dataclass(frozen=True, slots=True)
class Dropped:
    """A candidate or injection a rule removed."""

    item_id: str
    reason: Reason
    kind: ItemKind = ItemKind.ORGANIC


@dataclass(frozen=True, slots=True)
class Slate:
    """The state between rules.

    ``items``: organic entries in their current order (best first).
    ``injections``: ads/boosts still eligible for a slot, best first.
    ``placed``: page position -> injected entry, filled by slot rules.
    ``dropped``: everything removed so far, in the order it was removed.
    """

    items: tuple[Entry, ...]
    injections: tuple[Entry, ...] = ()
    placed: Mapping[int, Entry] = field(default_factory=dict)
    dropped: tuple[Dropped, ...] = ()

    def without(self, rule: str, drops: Mapping[str, str], *, injections: bool = False) -> Slate:
        """A slate with the entries whose id is in ``drops`` (id -> explanation) removed and recorded as dropped."""
        if not drops:
            return self
        items, gone = _split(self.items, drops, rule)
        inj, gone_inj = _split(self.injections, drops, rule) if injections else (self.injections, [])
        return replace(self, items=items, injections=inj, dropped=(*self.dropped, *gone, *gone_inj))


def _split(entries: Sequence[Entry], drops: Mapping[str, str], rule: str) -> tuple[tuple[Entry, ...], list[Dropped]]:
    kept = tuple(e for e in entries if e[0][0] not in drops)  # e.candidate.item_id, without attribute look-ups
    if len(kept) == len(entries):
        return kept, []
    gone = [Dropped(e[0][0], Reason(rule, drops[e[0][0]]), e[0].kind) for e in entries if e[0][0] in drops]
    return kept, gone


@dataclass(frozen=True, slots=True)
class RerankInput:
    """One rerank request, in process (``cascade.v1.RerankRequest`` after validation).

    ``now_ms`` None means the engine's clock. ``blocked_item_ids`` /
    ``blocked_authors`` come from the request (the gRPC service reads them from
    ``context.attributes``, comma separated); the blocked filter adds the
    user's block lists in Redis.
    """

    user_id: str
    count: int
    candidates: Sequence[Candidate]
    injections: Sequence[Candidate] = ()
    now_ms: int | None = None
    blocked_item_ids: frozenset[str] = frozenset()
    blocked_authors: frozenset[str] = frozenset()
    disabled_rules: frozenset[str] = frozenset()
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class PlacedItem:
    """One item of the page (``cascade.v1.RerankedItem``)."""

    item_id: str
    position: int
    final_score: float
    original_score: float
    reasons: tuple[Reason, ...]
    kind: ItemKind
    channels: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Degradation:
    """A rule that was skipped (``cascade.v1.DegradedReason`` with stage RERANK)."""

    rule: str
    code: str  # "TIMEOUT", "UNAVAILABLE" or "ERROR" (DegradationCode without its prefix)
    message: str
    fallback: str = "skipped"  # or "request_data_only": the rule ran on what the request itself carried


@dataclass(frozen=True, slots=True)
class RerankResult:
    """The reranked page (``cascade.v1.RerankResponse``)."""

    items: tuple[PlacedItem, ...]
    dropped: tuple[Dropped, ...]
    policy_version: str
    degradations: tuple[Degradation, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return bool(self.degradations)

    @property
    def item_ids(self) -> list[str]:
        return [i.item_id for i in self.items]

    def to_proto(self) -> Any:
        from rerank.convert import result_to_proto

        return result_to_proto(self)
