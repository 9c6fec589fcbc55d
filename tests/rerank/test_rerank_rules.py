"""Each rule alone, as a pure function over a hand-made slate: orders checked by hand, reasons, and invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rerank.engine import assemble
from rerank.rules.availability import AvailabilityFilter, AvailabilityFilterParams
from rerank.rules.blocked import BlockedFilter, BlockedFilterParams
from rerank.rules.dedup import DedupGroup, DedupGroupParams
from rerank.rules.diversity import Diversity, DiversityParams
from rerank.rules.freshness import FreshnessBoost, FreshnessBoostParams
from rerank.rules.seen import SeenFilter, SeenFilterParams
from rerank.rules.slots import Slots, SlotsParams
from rerank.types import Entry, ItemKind, Slate


def _drops(s: Slate) -> dict[str, str]:
    return {d.item_id: f"{d.reason.rule}: {d.reason.explanation}" for d in s.dropped}


# ------------------------------------------------------------------ filters


def test_seen_filter_drops_what_the_history_says_was_seen(rr):
    rule = SeenFilter(SeenFilterParams(type="seen_filter", window_hours=72))
    s = rr.slate(rr.cand("a", .9), rr.cand("b", .8), rr.cand("c", .7),
                 injections=(rr.cand("ad", .5, kind=ItemKind.AD),))
    out = rule.apply(s, rr.ctx(fetched={"seen_filter": {"b": rr.NOW - 2 * rr.HOUR, "ad": rr.NOW - rr.HOUR}}))
    assert rr.ids(out) == ["a", "c"]
    assert _drops(out) == {"b": "seen_filter: shown to the user 2.0h ago (window 3.0d)"}
    assert [e.item_id for e in out.injections] == ["ad"]  # ads are not seen-filtered by default
    # a layout without times (bloom) still explains; with include_injections the ad goes too
    rule2 = SeenFilter(SeenFilterParams(type="seen_filter", name="seen", window_hours=24, include_injections=True))
    out2 = rule2.apply(s, rr.ctx(fetched={"seen": {"a": None, "ad": None}}))
    assert rr.ids(out2) == ["b", "c"] and out2.injections == ()
    assert _drops(out2)["a"] == "seen: shown to the user within the last 24.0h"
    assert rule.since_ms(rr.ctx()) == rr.NOW - 72 * rr.HOUR


def test_blocked_filter_merges_request_and_block_lists(rr):
    rule = BlockedFilter(BlockedFilterParams(type="blocked_filter"))
    s = rr.slate(rr.cand("a", .9, author="x"), rr.cand("b", .8, author="y"), rr.cand("c", .7, author="z"),
                 rr.cand("d", .6, author="w"), rr.cand("e", .5),
                 injections=(rr.cand("ad", .5, kind=ItemKind.AD, author="z"),))
    c = rr.ctx(blocked_item_ids=frozenset({"a"}), blocked_authors=frozenset({"y"}),
               fetched={"blocked_filter": (frozenset({"d"}), frozenset({"z"}))})
    out = rule.apply(s, c)
    assert rr.ids(out) == ["e"]
    assert _drops(out) == {
        "a": "blocked_filter: item blocked by the user (request)",
        "b": "blocked_filter: author 'y' blocked by the user (request)",
        "c": "blocked_filter: author 'z' blocked by the user (block list)",
        "d": "blocked_filter: item blocked by the user (block list)",
        "ad": "blocked_filter: author 'z' blocked by the user (block list)",
    }
    assert out.injections == ()
    request_only = BlockedFilter(BlockedFilterParams(type="blocked_filter", use_redis=False))
    assert not request_only.needs_fetch
    assert rr.ids(request_only.apply(s, c)) == ["c", "d", "e"]


def test_availability_filter_uses_candidate_state_then_redis_state(rr):
    rule = AvailabilityFilter(AvailabilityFilterParams(type="availability_filter"))
    s = rr.slate(
        rr.cand("in_stock", .9, available=True),
        rr.cand("gone", .8, available=False),
        rr.cand("expired", .7, expires_at_ms=rr.NOW - 2 * rr.HOUR),
        rr.cand("valid", .6, expires_at_ms=rr.NOW + rr.HOUR),
        rr.cand("redis_gone", .5),
        rr.cand("redis_expired", .4),
        rr.cand("plain", .3),
        rr.cand("overrides_redis", .2, available=True),
    )
    state = {"redis_gone": (False, 0), "redis_expired": (True, rr.NOW - 1), "overrides_redis": (False, 0),
             "valid": (True, rr.NOW - 5)}
    out = rule.apply(s, rr.ctx(fetched={"availability_filter": state}))
    assert rr.ids(out) == ["in_stock", "valid", "plain", "overrides_redis"]
    d = _drops(out)
    assert d["gone"] == d["redis_gone"] == "availability_filter: out of stock (available=false)"
    assert d["expired"] == f"availability_filter: expired 2.0h ago (expires_at_ms={rr.NOW - 2 * rr.HOUR})"
    assert d["redis_expired"].startswith("availability_filter: expired 0m ago")


def test_dedup_keeps_the_best_of_each_group(rr):
    rule = DedupGroup(DedupGroupParams(type="dedup_group"))
    s = rr.slate(rr.cand("a", .5, group_id="g"), rr.cand("b", .9, group_id="h"), rr.cand("c", .7, group_id="g"),
                 rr.cand("d", .6), rr.cand("e", .4, group_id="h"), rr.cand("f", .3, group_id="solo"))
    out = rule.apply(s, rr.ctx())
    assert rr.ids(out) == ["b", "c", "d", "f"]
    assert rr.reasons(out, "c") == ["dedup_group: kept the best of 2 items in group 'g'"]
    assert rr.reasons(out, "f") == [] and rr.reasons(out, "d") == []
    assert _drops(out) == {"a": "dedup_group: near-duplicate of 'c' in group 'g' (score 0.5 <= 0.7)",
                           "e": "dedup_group: near-duplicate of 'b' in group 'h' (score 0.4 <= 0.9)"}
    no_groups = rr.slate(rr.cand("x", .1), rr.cand("y", .2))
    assert rule.apply(no_groups, rr.ctx()) is no_groups


# ------------------------------------------------------------------ freshness


def test_freshness_boost_moves_new_items_up_within_bounds(rr):
    old = rr.NOW - 500 * rr.HOUR
    items = [rr.cand("a", .9, published_at_ms=old), rr.cand("b", .8, published_at_ms=old),
             rr.cand("c", .7, published_at_ms=old), rr.cand("d", .6, published_at_ms=rr.NOW)]
    rule = FreshnessBoost(FreshnessBoostParams(type="freshness_boost", boost=0.3, tau_hours=12, max_positions=5))
    out = rule.apply(rr.slate(*items), rr.ctx())
    assert rr.ids(out) == ["a", "b", "d", "c"]  # .6 x 1.3 = .78 lands between .8 and .7
    assert out.items[2].final_score == pytest.approx(0.78)
    assert rr.reasons(out, "d") == ["freshness_boost: published 0m ago: score 0.6 -> 0.78 (x1.300), moved up from 3 to 2"]
    assert rr.reasons(out, "c") == ["freshness_boost: moved down from 2 to 3 (fresher items boosted above it)"]
    # capped: a x2 boost would take d to the top, max_positions=1 lets it pass one item only
    capped = FreshnessBoost(FreshnessBoostParams(type="freshness_boost", boost=1.0, max_positions=1))
    out = capped.apply(rr.slate(*items), rr.ctx())
    assert rr.ids(out) == ["a", "b", "d", "c"]
    assert "capped: at most 1 positions up" in rr.reasons(out, "d")[0]
    # no movement allowed: the order stands
    frozen = FreshnessBoost(FreshnessBoostParams(type="freshness_boost", boost=1.0, max_positions=0))
    assert rr.ids(frozen.apply(rr.slate(*items), rr.ctx())) == ["a", "b", "c", "d"]


def test_freshness_factor_decays_and_ignores_unknown_and_old(rr):
    rule = FreshnessBoost(FreshnessBoostParams(type="freshness_boost", boost=0.5, tau_hours=10, max_age_hours=48))
    assert rule.factor(rr.NOW, rr.NOW) == pytest.approx(1.5)
    assert rule.factor(rr.NOW - 10 * rr.HOUR, rr.NOW) == pytest.approx(1 + 0.5 / 2.718281828)
    assert rule.factor(rr.NOW + rr.HOUR, rr.NOW) == pytest.approx(1.5)  # future (clock skew) = age 0
    assert rule.factor(0, rr.NOW) == 1.0  # unknown publication time
    assert rule.factor(rr.NOW - 49 * rr.HOUR, rr.NOW) == 1.0


def test_freshness_never_moves_an_item_up_more_than_max_positions(rr):
    rng = random.Random(7)
    for _ in range(200):
        n, limit = rng.randint(1, 40), rng.randint(0, 6)
        cands = [rr.cand(f"i{i}", rng.random(), published_at_ms=rr.NOW - rng.randint(0, 100) * rr.HOUR) for i in range(n)]
        s = rr.slate(*cands)
        rule = FreshnessBoost(FreshnessBoostParams(type="freshness_boost", boost=rng.uniform(0.1, 5), tau_hours=24,
                                                   max_positions=limit))
        out = rule.apply(s, rr.ctx())
        before = {e.item_id: i for i, e in enumerate(s.items)}
        after = rr.ids(out)
        assert sorted(after) == sorted(before)
        for to, item in enumerate(after):
            assert before[item] - to <= limit, (item, before[item], to, limit)
        scores = [e.final_score for e in out.items]
        assert scores == sorted(scores, reverse=True)


# ------------------------------------------------------------------ diversity


def test_diversity_hand_checked_order(rr):
    rule = Diversity(DiversityParams(type="diversity", constraints=[{"field": "category", "window": 5, "max": 2}]))
    s = rr.slate(rr.cand("A", .9, category="sports"), rr.cand("B", .8, category="sports"),
                 rr.cand("C", .7, category="sports"), rr.cand("D", .6, category="news"),
                 rr.cand("E", .5, category="sports"), rr.cand("F", .4, category="music"),
                 rr.cand("G", .3, category="news"))
    out = rule.apply(s, rr.ctx(count=7))
    assert rr.ids(out) == ["A", "B", "D", "F", "G", "C", "E"]
    assert rr.reasons(out, "C") == ["diversity: moved down from 2 to 5 (category 'sports' already 2 in window 5)"]
    assert rr.reasons(out, "E") == ["diversity: moved down from 4 to 6 (category 'sports' already 2 in window 5)"]
    assert rr.reasons(out, "D") == ["diversity: moved up from 3 to 2 (higher-ranked items would exceed the window limits)"]
    assert rr.reasons(out, "A") == [] and rr.reasons(out, "B") == []
    # only the page is arranged: with count=3 the rest keeps its incoming order after it
    assert rr.ids(rule.apply(s, rr.ctx(count=3))) == ["A", "B", "D", "C", "E", "F", "G"]


def test_diversity_relaxes_when_nothing_fits_and_says_so(rr):
    rule = Diversity(DiversityParams(type="diversity", constraints=[{"field": "category", "window": 2, "max": 1}]))
    s = rr.slate(rr.cand("a", .9, category="x"), rr.cand("b", .8, category="x"), rr.cand("c", .7, category="y"),
                 rr.cand("d", .6, category="x"))
    out = rule.apply(s, rr.ctx(count=4))
    assert rr.ids(out) == ["a", "c", "b", "d"]
    assert rr.reasons(out, "d") == [
        "diversity: constraint relaxed at position 3: no remaining item fits the window limits (category 'x' already 1 in window 2)"]


def test_diversity_two_fields_at_once_and_empty_values_unlimited(rr):
    rule = Diversity(DiversityParams(type="diversity", constraints=[
        {"field": "category", "window": 3, "max": 2}, {"field": "author", "window": 2, "max": 1}]))
    s = rr.slate(rr.cand("a", .9, category="x", author="p"), rr.cand("b", .8, category="x", author="p"),
                 rr.cand("c", .7, category="x", author="q"), rr.cand("d", .6, category="y", author="p"),
                 rr.cand("e", .5), rr.cand("f", .4))
    out = rule.apply(s, rr.ctx(count=6))
    # a; b blocked by author p -> c (x,q); then x is full (2 in 3) and q just used -> d (y,p); then b (x,p): x 1 in last 2, p used -> e
    assert rr.ids(out) == ["a", "c", "d", "e", "b", "f"]
    assert rr.reasons(out, "b")[0] == "diversity: moved down from 1 to 4 (author 'p' already 1 in window 2)"


def _check_greedy(rule: Diversity, incoming: list[Entry], out: list[Entry], limit: int) -> None:
    """Re-simulate: each placed item is the highest-ranked one fitting the windows; relaxation only when none fits."""
    cons = rule.params.constraints
    rank = {e.item_id: i for i, e in enumerate(incoming)}
    remaining = sorted(rank, key=rank.get)

    def fits(item: Entry, placed: list[Entry]) -> bool:
        for c in cons:
            v = getattr(item.candidate, c.field)
            if v and sum(getattr(p.candidate, c.field) == v for p in placed[-(c.window - 1):]) >= c.max:
                return False
        return True

    by_id = {e.item_id: e for e in incoming}
    for p in range(limit):
        chosen = out[p]
        fitting = [i for i in remaining if fits(by_id[i], out[:p])]
        relaxed = any("constraint relaxed" in r.explanation for r in chosen.reasons)
        if fitting:
            assert chosen.item_id == fitting[0] and not relaxed, (p, chosen.item_id, fitting[:3])
        else:
            assert chosen.item_id == remaining[0] and relaxed, (p, chosen.item_id)
        remaining.remove(chosen.item_id)
    assert [e.item_id for e in out[limit:]] == remaining  # the tail keeps its order


def test_diversity_window_invariant_on_random_inputs(rr):
    rng = random.Random(42)
    relaxations = 0
    for trial in range(300):
        n = rng.randint(0, 60)
        cats = "abcdefg"[:rng.randint(1, 7)]
        authors = [f"u{i}" for i in range(rng.randint(1, 12))]
        cands = [rr.cand(f"i{i}", round(rng.random(), 3), category=rng.choice(cats) if rng.random() > .1 else "",
                         author=rng.choice(authors + [""])) for i in range(n)]
        cons = []
        for field in rng.sample(["category", "author"], rng.randint(1, 2)):
            w = rng.randint(2, 6)
            cons.append({"field": field, "window": w, "max": rng.randint(1, w - 1)})
        rule = Diversity(DiversityParams(type="diversity", constraints=cons))
        count = rng.randint(1, 40)
        s = rr.slate(*cands)
        out = rule.apply(s, rr.ctx(count=count)).items
        limit = min(n, count) if n >= 2 and count >= 2 else 0
        assert sorted(e.item_id for e in out) == sorted(c.item_id for c in cands)
        # the invariant: every window inside the arranged prefix respects every limit, unless relaxed inside it
        for c in rule.params.constraints:
            for start in range(0, max(0, limit - c.window + 1)):
                window = out[start:start + c.window]
                counts = Counter(getattr(e.candidate, c.field) for e in window if getattr(e.candidate, c.field))
                if counts and max(counts.values()) > c.max:
                    assert any(r.rule == "diversity" and "constraint relaxed" in r.explanation
                               for e in window for r in e.reasons), (trial, start, [e.item_id for e in window])
                    relaxations += 1
        if limit:
            _check_greedy(rule, list(s.items), list(out), limit)
    assert relaxations > 0  # the random inputs did exercise the relaxation path


def test_diversity_is_fast_when_everything_is_blocked(rr):
    import time

    rule = Diversity(DiversityParams(type="diversity", constraints=[
        {"field": "category", "window": 5, "max": 1}, {"field": "author", "window": 5, "max": 1}]))
    s = rr.slate(*[rr.cand(f"i{i}", 1 - i / 3000, category="same", author=f"a{i % 3}") for i in range(2000)])
    t0 = time.perf_counter()
    out = rule.apply(s, rr.ctx(count=100))
    assert time.perf_counter() - t0 < 0.5
    assert len(out.items) == 2000


# ------------------------------------------------------------------ slots and the page


def test_slots_insert_at_positions_best_first_and_honour_requests(rr):
    rule = Slots(SlotsParams(type="slots", name="ad_slot", positions=[3, 1, 20], kinds=["ad"]))
    s = rr.slate(*[rr.cand(c, .9 - i / 10) for i, c in enumerate("abcdef")],
                 injections=(rr.cand("x", .9, kind=ItemKind.AD), rr.cand("y", .5, kind=ItemKind.AD, requested_position=4),
                             rr.cand("z", .4, kind=ItemKind.AD), rr.cand("boost", .99, kind=ItemKind.BOOSTED)))
    out = rule.apply(s, rr.ctx(count=5))
    assert {p: e.item_id for p, e in out.placed.items()} == {1: "x", 3: "y"}  # 20 is past the page
    assert [r.explanation for r in out.placed[3].reasons] == ["inserted ad at slot 3, requested 4 (priority 0.5)"]
    assert [e.item_id for e in out.injections] == ["boost", "z"]  # not placed, not dropped
    page = assemble(out, 5)
    assert [(p.item_id, p.position, p.kind) for p in page] == [
        ("a", 0, ItemKind.ORGANIC), ("x", 1, ItemKind.AD), ("b", 2, ItemKind.ORGANIC), ("y", 3, ItemKind.AD),
        ("c", 4, ItemKind.ORGANIC)]
    # a boost rule afterwards takes only free positions
    boosts = Slots(SlotsParams(type="slots", name="boost_slot", positions=[1, 2], kinds=["boosted"]))
    out2 = boosts.apply(out, rr.ctx(count=5))
    assert out2.placed[2].item_id == "boost" and out2.placed[1].item_id == "x"


def test_slots_never_duplicate_an_organic_item_on_the_page(rr):
    rule = Slots(SlotsParams(type="slots", positions=[0, 1, 2]))
    s = rr.slate(rr.cand("a", .9, group_id="story"), rr.cand("b", .8), rr.cand("c", .1, group_id="late"),
                 injections=(rr.cand("ad1", .9, kind=ItemKind.AD, group_id="story"),
                             rr.cand("ad2", .8, kind=ItemKind.AD),
                             rr.cand("ad3", .7, kind=ItemKind.AD, group_id="late")))
    out = rule.apply(s, rr.ctx(count=2))
    assert _drops(out) == {"ad1": "slots: duplicates organic item 'a' (group 'story')"}
    assert {p: e.item_id for p, e in out.placed.items()} == {0: "ad2", 1: "ad3"}  # 'c' is not on the page


def test_page_closes_up_slots_past_the_organic_items(rr):
    rule = Slots(SlotsParams(type="slots", positions=[1, 3]))
    s = rr.slate(rr.cand("a", .9), injections=(rr.cand("x", .9, kind=ItemKind.AD), rr.cand("y", .8, kind=ItemKind.AD)))
    page = assemble(rule.apply(s, rr.ctx(count=5)), 5)
    assert [(p.item_id, p.position) for p in page] == [("a", 0), ("x", 1), ("y", 2)]
    assert assemble(rr.slate(), 3) == []
