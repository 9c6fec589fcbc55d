"""The declarative rule chain: the shipped file, order from the file, defaults, and errors that name the bad key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from cascade.config import REPO_ROOT, RerankConfig
from rerank.cli import main as rerank_cli
from rerank.engine import RerankEngine
from rerank.rules_config import DEFAULT_RULES, RulesConfigError, load_rules, parse_rules
from rerank.types import RerankInput


def test_shipped_file_is_the_documented_default():
    shipped = load_rules(REPO_ROOT / "config" / "rerank.toml")
    default = parse_rules({})
    assert shipped.names == ["seen_filter", "blocked_filter", "availability_filter", "dedup_group", "freshness_boost",
                             "diversity", "ad_slot", "boost_slot"]
    assert shipped.rules == default.rules and shipped.version == default.version
    assert len(DEFAULT_RULES) == len(shipped.rules)


def test_engine_applies_rules_in_file_order(tmp_path: Path, rr):
    def engine(order: list[str]) -> RerankEngine:
        blocks = {
            "dedup": '[[rules]]\ntype = "dedup_group"\n',
            "fresh": '[[rules]]\ntype = "freshness_boost"\nboost = 0.5\nmax_positions = 10\n',
        }
        f = tmp_path / f"{'_'.join(order)}.toml"
        f.write_text("\n".join(blocks[o] for o in order))
        rules = load_rules(f)
        assert rules.names == [{"dedup": "dedup_group", "fresh": "freshness_boost"}[o] for o in order]
        return RerankEngine(rules)

    old, new = rr.NOW - 400 * rr.HOUR, rr.NOW
    inp = RerankInput("u1", 5, [rr.cand("a", .8, group_id="g", published_at_ms=old),
                                rr.cand("b", .7, group_id="g", published_at_ms=new),
                                rr.cand("c", .75, published_at_ms=old)], now_ms=rr.NOW)
    # dedup first: the better raw score wins; freshness first: the fresh duplicate (0.7 x 1.5) wins
    assert engine(["dedup", "fresh"]).apply(inp).item_ids == ["a", "c"]
    fresh_first = engine(["fresh", "dedup"]).apply(inp)
    assert fresh_first.item_ids == ["b", "c"]
    assert [r.rule for r in fresh_first.items[0].reasons] == ["freshness_boost", "dedup_group"]  # application order
    assert fresh_first.dropped[0].reason.rule == "dedup_group"


def test_enabled_false_and_names(tmp_path: Path):
    f = tmp_path / "r.toml"
    f.write_text('policy = "exp7"\n[[rules]]\ntype = "dedup_group"\nenabled = false\n'
                 '[[rules]]\ntype = "slots"\nname = "ads_top"\npositions = [0]\n')
    rules = load_rules(f)
    assert rules.version.startswith("exp7-")
    assert [r.name for r in RerankEngine(rules).rules] == ["ads_top"]


def test_policy_version_follows_every_parameter():
    a = parse_rules({"rules": [{"type": "freshness_boost", "boost": 0.3}]})
    b = parse_rules({"rules": [{"type": "freshness_boost", "boost": 0.31}]})
    c = parse_rules({"rules": [{"type": "freshness_boost", "boost": 0.3}]})
    assert a.version != b.version and a.version == c.version


@pytest.mark.parametrize(("tree", "message"), [
    ({"rules": [{"type": "seen_filter", "windw_hours": 3}]}, "rules[0] ('seen_filter').windw_hours: unknown key"),
    ({"rules": [{"type": "dedup_group"}, {"type": "sorter"}]},
     "rules[1] ('sorter'): unknown rule type 'sorter'; known types: availability_filter, blocked_filter"),
    ({"rules": [{"name": "x"}]}, "rules[0] ('x'): missing key 'type'"),
    ({"rules": [{"type": "diversity", "name": "cat_div", "constraints": [{"field": "category", "window": 1, "max": 1}]}]},
     "rules[0] ('cat_div').constraints[0].window: Input should be greater than or equal to 2"),
    ({"rules": [{"type": "diversity", "constraints": [{"field": "category", "window": 3, "max": 3}]}]},
     "rules[0] ('diversity').constraints[0]: max (3) must be smaller than window (3)"),
    ({"rules": [{"type": "diversity", "constraints": [{"field": "colour", "window": 3, "max": 1}]}]},
     "rules[0] ('diversity').constraints[0].field: Input should be 'category' or 'author'"),
    ({"rules": [{"type": "freshness_boost", "boost": -1}]}, "rules[0] ('freshness_boost').boost: Input should be greater than 0"),
    ({"rules": [{"type": "slots", "positions": [3, 3]}]}, "rules[0] ('slots').positions: positions must be unique, got [3, 3]"),
    ({"rules": [{"type": "slots", "positions": [1], "kinds": ["promo"]}]}, "rules[0] ('slots').kinds[0]: Input should be 'ad' or 'boosted'"),
    ({"rules": [{"type": "dedup_group"}, {"type": "dedup_group"}]},
     "rules[1]: rule name 'dedup_group' already used by rules[0]"),
    ({"rules": [{"type": "dedup_group", "name": "Bad-Name"}]}, "rules[0] ('Bad-Name').name: String should match pattern"),
    ({"rulez": []}, "rulez: unknown key"),
    ({"rules": [{"type": "seen_filter", "window_hours": 500}]},
     "rules[0] ('seen_filter').window_hours: 500 exceeds rerank.impressions_retention_hours (168)"),
])
def test_errors_name_the_file_rule_and_key(tree, message):
    with pytest.raises(RulesConfigError) as err:
        parse_rules(tree, "my.toml", RerankConfig())
    assert f"my.toml: {message}" in str(err.value)


def test_file_errors(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\n")
    with pytest.raises(RulesConfigError, match="bad.toml: not valid TOML"):
        load_rules(bad)
    with pytest.raises(FileNotFoundError):
        load_rules(tmp_path / "missing.toml")
    # no file at the configured default path: the documented default chain
    assert load_rules(None, RerankConfig(rules_file=tmp_path / "none.toml")).names == parse_rules({}).names
    # a file without `rules` gets the defaults too
    only_policy = tmp_path / "p.toml"
    only_policy.write_text('policy = "p"\n')
    assert load_rules(only_policy).names == parse_rules({}).names


def test_cli_check(tmp_path: Path, capsys):
    assert rerank_cli(["check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["type"] for r in out["rules"]][:2] == ["seen_filter", "blocked_filter"]
    with (REPO_ROOT / "config" / "rerank.toml").open("rb") as fh:
        assert len(out["rules"]) == len(tomllib.load(fh)["rules"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\ntype = "diversity"\nconstraints = []\n')
    assert rerank_cli(["check", "--rules", str(bad)]) == 1
    assert "rules[0] ('diversity').constraints" in capsys.readouterr().err
