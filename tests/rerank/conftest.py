"""Helpers of the rerank tests: candidates, slates and contexts in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rerank.rules import RuleContext
from rerank.types import Candidate, Entry, ItemKind, Slate

NOW = 1_750_000_000_000
HOUR = 3_600_000


def cand(item_id: str, score: float, **kw) -> Candidate:
    return Candidate(item_id, score, **kw)


def slate(*cands: Candidate, injections: tuple[Candidate, ...] = ()) -> Slate:
    items = sorted((Entry.of(c) for c in cands), key=lambda e: -e.final_score)
    inj = sorted((Entry.of(c) for c in injections), key=lambda e: -e.final_score)
    return Slate(tuple(items), tuple(inj))


def ctx(count: int = 10, fetched=None, **kw) -> RuleContext:
    return RuleContext(user_id=kw.pop("user_id", "u1"), now_ms=kw.pop("now_ms", NOW), count=count,
                       fetched=fetched or {}, **kw)


def ids(s: Slate) -> list[str]:
    return [e.item_id for e in s.items]


def reasons(s: Slate, item_id: str) -> list[str]:
    e = next(e for e in s.items if e.item_id == item_id)
    return [f"{r.rule}: {r.explanation}" for r in e.reasons]


@pytest.fixture(scope="session")
def rr() -> SimpleNamespace:
    """The helpers above, as a fixture (test modules are imported by path, not as a package)."""
    return SimpleNamespace(NOW=NOW, HOUR=HOUR, cand=cand, slate=slate, ctx=ctx, ids=ids, reasons=reasons,
                           ItemKind=ItemKind)


@pytest.fixture(scope="session")
def patient_config(config):
    """The session config with a generous Redis budget: tests that assert "not degraded" must not flake on a busy machine."""
    return config.model_copy(update={"rerank": config.rerank.model_copy(update={"fetch_timeout_ms": 3000.0})})
