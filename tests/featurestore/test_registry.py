"""The registry: plan/apply/versions, breaking changes refused with nothing written, atomic pointer updates."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from featurestore import cli, registry as registry_mod
from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    Feature,
    FeatureSet,
    FeatureView,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
    fingerprint,
)
from featurestore.registry import BreakingChangeError, Registry, RegistryError
from featurestore.repository import FeatureRepo

D = timedelta(days=1)
USER = Entity("user", ("user_id",))
ITEM = Entity("item", ("item_id",))
PROFILE = FeatureView(
    "user_profile",
    (USER,),
    ParquetSource("users.parquet"),
    (Feature("age", ValueType.INT64), Feature("gender", ValueType.STRING)),
)
STATS = WindowedFeatureView(
    "item_stats",
    (ITEM,),
    ParquetSource("events.parquet"),
    (Aggregation(AggregationFunction.COUNT, (D, 7 * D), name="clicks"),),
)
MODEL = FeatureSet("model", ("user_profile:age", "item_stats:*"))


def make_repo(*, profile: FeatureView = PROFILE, stats: WindowedFeatureView = STATS, model: FeatureSet = MODEL, extra: tuple = ()) -> FeatureRepo:
    entities = {e.name: e for v in (profile, stats) for e in v.entities}
    return FeatureRepo([*entities.values(), profile, stats, model, *extra])


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture()
def applied(reg: Registry) -> Registry:
    reg.apply(make_repo())
    return reg


def test_empty_registry(reg: Registry) -> None:
    assert reg.live() is None and reg.versions() == []
    plan = reg.plan(make_repo())
    assert plan.base_version is None and not plan.is_breaking
    assert {(c.kind, c.name) for c in plan.added} == {
        ("Entity", "user"), ("Entity", "item"), ("FeatureView", "user_profile"), ("WindowedFeatureView", "item_stats"), ("FeatureSet", "model")
    }
    assert not reg.path.exists()  # planning writes nothing


def test_apply_records_specs_and_versions(reg: Registry) -> None:
    repo = make_repo()
    v1 = reg.apply(repo)
    assert v1.version == 1 and v1.parent is None and not v1.forced
    assert reg.live().version == 1 and [v.version for v in reg.versions()] == [1]
    assert v1.fingerprint == repo.fingerprint()
    assert v1.view_version("user_profile") == fingerprint(PROFILE)  # a new view's version is its fingerprint
    assert v1.feature_set_version("model") == 1
    assert [c["ref"] for c in v1.feature_set_schema("model")] == ["user_profile:age", "item_stats:clicks_1d", "item_stats:clicks_7d"]
    assert reg.get(1).spec("user_profile")["features"][0]["name"] == "age"
    live = json.loads((reg.path / "live.json").read_text())
    assert live["version"] == 1 and live["file"] == "versions/v000001.json" and live["history"] == [1]
    assert reg.check_applied(repo).version == 1
    with pytest.raises(KeyError):
        reg.get(2)


def test_applying_the_same_repo_is_a_no_op(applied: Registry) -> None:
    before = snapshot(applied.path)
    again = applied.apply(make_repo())
    assert again.version == 1 and not applied.plan(make_repo()).has_changes
    assert snapshot(applied.path) == before
    assert "No changes" in applied.plan(make_repo()).format()


def test_compatible_changes_apply_and_keep_view_versions(applied: Registry) -> None:
    v1 = applied.live()
    profile = replace(
        PROFILE,
        description="demographics",
        ttl=timedelta(days=30),
        features=(*PROFILE.features, Feature("country", ValueType.STRING)),
    )
    plan = applied.plan(make_repo(profile=profile))
    assert not plan.is_breaking
    (change,) = plan.changed
    paths = {f.path for f in change.fields}
    assert {"description", "ttl", "features[country]"} <= paths
    assert any("ttl changes None -> 30d" in w for w in plan.warnings)
    assert any("country" in w and "materialize" in w for w in plan.warnings)
    v2 = applied.apply(make_repo(profile=profile))
    assert v2.version == 2 and v2.parent == 1
    assert v2.view_version("user_profile") == v1.view_version("user_profile")  # online keys stay valid
    assert v2.views["user_profile"]["fingerprint"] != v1.views["user_profile"]["fingerprint"]
    assert v2.feature_set_version("model") == 1  # its schema did not change
    assert [v.version for v in applied.versions()] == [1, 2]


def test_feature_set_changes_bump_its_version(applied: Registry) -> None:
    wider = make_repo(model=replace(MODEL, features=(*MODEL.features, "user_profile:gender")))
    plan = applied.plan(wider)
    assert any("model: schema changes (version 1 -> 2); models trained on version 1 must be retrained" in w for w in plan.warnings)
    assert "schema (dropped -> added): [] -> [\"user_profile:gender string\"]" in plan.format()
    v2 = applied.apply(wider)
    assert v2.feature_set_version("model") == 2
    v3 = applied.apply(make_repo())  # back to the original list: a new number, never a reused one
    assert v3.feature_set_version("model") == 3
    assert [c["ref"] for c in applied.find_feature_set("model", 1)] == [c["ref"] for c in applied.find_feature_set("model", 3)]


def test_pinning_the_hop_the_ladder_chose_is_compatible(applied: Registry) -> None:
    """Only a window's hop matters: `tile` set to what the default ladder gives a 1d-only view changes nothing stored."""
    one_day = replace(STATS, aggregations=(Aggregation(AggregationFunction.COUNT, (D,), name="clicks"),))
    v1 = applied.apply(make_repo(stats=one_day), allow_breaking=True)  # drops clicks_7d (a live set reads it)
    plan = applied.plan(make_repo(stats=replace(one_day, tile=timedelta(hours=1))))
    assert plan.has_changes and not plan.is_breaking
    v2 = applied.apply(make_repo(stats=replace(one_day, tile=timedelta(hours=1))))
    assert v2.view_version("item_stats") == v1.view_version("item_stats")


BREAKING = {
    "dtype": lambda: make_repo(profile=replace(PROFILE, features=(Feature("age", ValueType.FLOAT64), PROFILE.features[1]))),
    "removed feature used by a live set": lambda: make_repo(
        profile=replace(PROFILE, features=(PROFILE.features[1],)), model=FeatureSet("model", ("item_stats:*",))
    ),
    "join keys": lambda: make_repo(profile=replace(PROFILE, entities=(Entity("user", ("uid",)),))),
    "timestamp field": lambda: make_repo(profile=replace(PROFILE, source=ParquetSource("users.parquet", timestamp_field="ts"))),
    "tile": lambda: make_repo(stats=replace(STATS, tile=timedelta(hours=2))),
    "ladder hop": lambda: make_repo(stats=replace(STATS, aggregations=(
        Aggregation(AggregationFunction.COUNT, (D, 7 * D), name="clicks"),
        Aggregation(AggregationFunction.COUNT, (D,), name="views")), tile=timedelta(hours=1))),
}
EXPECTED_REASON = {
    "dtype": "user_profile: feature 'age' changes type int64 -> float64",
    "removed feature used by a live set": "user_profile: removes feature 'age', which live feature set(s) model use",
    "join keys": "entity user: join keys change ('user_id',) -> ('uid',)",
    "timestamp field": "user_profile: source timestamp field changes 'event_ts' -> 'ts'",
    "tile": "item_stats: hops change (1d: 1h -> 2h, 7d: 6h -> 2h)",
    "ladder hop": "item_stats: hops change (7d: 6h -> 1h)",  # pinning every window to 1h moves 7d
}


@pytest.mark.parametrize("case", list(BREAKING))
def test_breaking_changes_are_refused_and_nothing_is_written(applied: Registry, case: str) -> None:
    repo = BREAKING[case]()
    before = snapshot(applied.path)
    plan = applied.plan(repo)
    assert plan.is_breaking and any(EXPECTED_REASON[case] in r for r in plan.breaking), plan.breaking
    with pytest.raises(BreakingChangeError, match="refusing to apply") as info:
        applied.apply(repo)
    assert "--allow-breaking" in str(info.value) and EXPECTED_REASON[case] in str(info.value)
    assert snapshot(applied.path) == before
    assert applied.live().version == 1


def test_breaking_change_applies_when_forced_and_rekeys_the_view(applied: Registry) -> None:
    v1 = applied.live()
    v2 = applied.apply(BREAKING["dtype"](), allow_breaking=True)
    assert v2.version == 2 and v2.forced and v2.data["breaking"]
    assert v2.view_version("user_profile") != v1.view_version("user_profile")
    assert v2.view_version("user_profile") == v2.views["user_profile"]["fingerprint"]
    assert v2.view_version("item_stats") == v1.view_version("item_stats")
    assert v2.feature_set_version("model") == 2  # schema dtype changed


def test_removing_an_unused_feature_is_compatible(applied: Registry) -> None:
    repo = make_repo(profile=replace(PROFILE, features=(PROFILE.features[0],)))
    plan = applied.plan(repo)
    assert not plan.is_breaking and any("feature 'gender' removed" in w for w in plan.warnings)
    assert "features[gender]: 'present' -> 'removed'" in plan.format()
    assert applied.apply(repo).version == 2


def test_removing_a_view_a_live_set_reads_is_breaking(applied: Registry) -> None:
    other = FeatureView("other", (USER,), ParquetSource("u.parquet"), (Feature("x", ValueType.INT64),))
    applied.apply(make_repo(extra=(other,)))
    assert not applied.plan(make_repo()).is_breaking  # `other` is read by no set
    repo = FeatureRepo([USER, PROFILE, FeatureSet("model", ("user_profile:age",))])
    plan = applied.plan(repo)
    assert any("item_stats: removing the view removes 'item_stats:clicks_1d'" in r for r in plan.breaking)


def test_a_crash_between_version_file_and_pointer_leaves_the_old_version_live(applied: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = registry_mod._atomic_write_json

    def crash_on_pointer(path: Path, data) -> None:
        if path.name == "live.json":
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(registry_mod, "_atomic_write_json", crash_on_pointer)
    repo = make_repo(profile=replace(PROFILE, description="new"))
    with pytest.raises(OSError, match="disk full"):
        applied.apply(repo)
    assert applied.live().version == 1 and [v.version for v in applied.versions()] == [1]
    assert (applied.path / "versions" / "v000002.json").exists()  # orphan: never listed
    with pytest.raises(KeyError):
        applied.get(2)
    monkeypatch.setattr(registry_mod, "_atomic_write_json", real_write)
    assert applied.apply(repo).version == 2 and applied.live().spec("user_profile")["description"] == "new"


def test_a_failed_rename_leaves_no_temporary_files(applied: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot(applied.path)

    def failing_replace(src, dst) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(registry_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        applied.apply(make_repo(profile=replace(PROFILE, description="x")))
    assert snapshot(applied.path) == before


def test_check_applied_detects_unapplied_definitions(applied: Registry) -> None:
    with pytest.raises(RegistryError, match="differ from live registry version 1"):
        applied.check_applied(make_repo(profile=replace(PROFILE, description="x")))
    with pytest.raises(RegistryError, match="no feature definitions applied"):
        Registry(applied.path / "nowhere").check_applied(make_repo())


def test_corrupt_pointer_is_reported(applied: Registry) -> None:
    (applied.path / "live.json").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable"):
        applied.live()


# ----------------------------------------------------------------------------- the CLI

DEFS = """
from featurestore.definitions import *
user = Entity("user", ("user_id",))
user_profile = FeatureView("user_profile", (user,), ParquetSource("users.parquet"), (Feature("age", ValueType.INT64),))
model = FeatureSet("model", ("user_profile:*",))
"""


def test_cli_plan_apply_versions_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defs = tmp_path / "defs.py"
    defs.write_text(DEFS)
    common = ["--definitions", str(defs), "--registry", str(tmp_path / "reg")]
    assert cli.main(["plan", *common]) == 0
    assert "+ FeatureView user_profile" in capsys.readouterr().out
    assert cli.main(["apply", *common]) == 0
    assert "Applied version 1" in capsys.readouterr().out
    assert cli.main(["apply", *common]) == 0
    assert "No changes" in capsys.readouterr().out
    defs.write_text(DEFS.replace("ValueType.INT64", "ValueType.FLOAT64"))
    assert cli.main(["apply", *common]) == 1
    captured = capsys.readouterr()
    assert "feature 'age' changes type int64 -> float64" in captured.err and "--allow-breaking" in captured.err
    assert cli.main(["apply", "--allow-breaking", *common]) == 0
    capsys.readouterr()
    assert cli.main(["versions", *common]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and "[live forced]" in out
    assert cli.main(["show", "model", *common]) == 0
    assert "user_profile:age" in capsys.readouterr().out
    assert cli.main(["show", "model", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["features"][0] == {
        "ref": "user_profile:age", "column": "user_profile__age", "view": "user_profile", "dtype": "float64", "default": None, "join_keys": ["user_id"]
    }
    assert cli.main(["show", "nope", *common]) == 1
    assert "no feature set named 'nope'" in capsys.readouterr().err
    defs.write_text(DEFS.replace('"user_profile:*"', '"missing:*"'))
    assert cli.main(["plan", *common]) == 1
    assert "unknown feature view 'missing'" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2


def test_cli_delegates_materialize_and_skew(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.DELEGATED, "materialize", ("featurestore._no_such_module", "cli_main"))
    assert cli.main(["materialize", "--since", "x"]) == 2
    assert "`cascade features materialize` is not available" in capsys.readouterr().err
    seen = []
    fake = types.ModuleType("featurestore._fake_skew")
    fake.cli_main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "featurestore._fake_skew", fake)
    monkeypatch.setitem(cli.DELEGATED, "skew", ("featurestore._fake_skew", "cli_main"))
    assert cli.main(["skew", "--set", "model"]) == 7 and seen == [["--set", "model"]]


def test_cli_is_registered_with_the_cascade_command() -> None:
    from cascade import cli as cascade_cli

    cascade_cli._optional_stage_commands()
    assert cascade_cli.COMMANDS["features"][:2] == ("featurestore.cli", "main")
