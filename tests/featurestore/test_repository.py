"""Loading a definitions file into a validated FeatureRepo, and resolving feature sets from it."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cascade.config import REPO_ROOT
from featurestore.definitions import (
    Entity,
    Feature,
    FeatureSet,
    FeatureView,
    ParquetSource,
    RequestFeatureView,
    ValueType,
    WindowedFeatureView,
)
from featurestore.repository import DefinitionError, FeatureRepo, UnknownDefinition, column_name, load_repo

HEADER = """
from datetime import timedelta
from featurestore.definitions import *
"""

GOOD = HEADER + """
user = Entity("user", ("user_id",))
item = Entity("item", ("item_id",))
user_profile = FeatureView("user_profile", (user,), ParquetSource("users.parquet"),
                           (Feature("age", ValueType.INT64), Feature("gender", ValueType.STRING)))
item_stats = WindowedFeatureView("item_stats", (item,), ParquetSource("events.parquet"),
    (Aggregation(AggregationFunction.COUNT, (timedelta(days=1), timedelta(days=7)), name="clicks"),
     Aggregation(AggregationFunction.MEAN, (timedelta(days=7),), column="value")))
def hour(ctx):
    return {"hour": ctx["ts"].hour}
req = RequestFeatureView("req", ("ts",), (Feature("hour", ValueType.INT64),), hour)
model = FeatureSet("model", ("item_stats:value_mean_7d", "user_profile:*", "req:hour", "item_stats:clicks_1d"))
alias = model  # bound twice: collected once
not_a_definition = 42
"""


def write(tmp_path: Path, body: str, name: str = "defs.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_load_collects_module_level_definitions(tmp_path: Path) -> None:
    repo = load_repo(write(tmp_path, GOOD))
    assert list(repo.entities) == ["user", "item"]
    assert list(repo.views) == ["user_profile", "item_stats", "req"]
    assert list(repo.feature_sets) == ["model"]
    assert repo.entity("user").join_keys == ("user_id",)
    assert repo.view("item_stats").feature_names == ("clicks_1d", "clicks_7d", "value_mean_7d")
    assert repo.source == (tmp_path / "defs.py").resolve()
    assert repo.feature("user_profile:age").dtype is ValueType.INT64


def test_resolve_groups_by_view_in_first_reference_order(tmp_path: Path) -> None:
    resolved = load_repo(write(tmp_path, GOOD)).resolve("model")
    assert resolved.refs == (
        "item_stats:value_mean_7d",
        "item_stats:clicks_1d",  # grouped with its view, in listed order
        "user_profile:age",  # "*" expands in definition order
        "user_profile:gender",
        "req:hour",
    )
    assert resolved.schema() == {
        "item_stats:value_mean_7d": ValueType.FLOAT64,
        "item_stats:clicks_1d": ValueType.INT64,
        "user_profile:age": ValueType.INT64,
        "user_profile:gender": ValueType.STRING,
        "req:hour": ValueType.INT64,
    }
    assert list(resolved.schema()) == list(resolved.refs)
    assert resolved.columns[0] == "item_stats__value_mean_7d" == column_name("item_stats", "value_mean_7d")
    assert [v.name for v in resolved.views] == ["item_stats", "user_profile", "req"]
    assert resolved.join_keys == ("item_id", "user_id")
    assert [e.name for e in resolved.entities] == ["item", "user"]
    assert resolved.request_inputs == ("ts",)
    assert list(resolved.by_view()) == ["item_stats", "user_profile", "req"]
    assert [f.ref for f in resolved.for_entity("user")] == ["user_profile:age", "user_profile:gender"]
    first = resolved.features[0]
    assert (first.view, first.name, first.join_keys, first.is_request) == ("item_stats", "value_mean_7d", ("item_id",), False)
    assert resolved.features[-1].is_request and resolved.features[-1].join_keys == ()
    assert resolved.features[1].default == 0  # window counts default to 0


def test_unknown_names_say_what_exists(tmp_path: Path) -> None:
    repo = load_repo(write(tmp_path, GOOD))
    with pytest.raises(UnknownDefinition, match=r"no feature set named 'nope' \(defined: model\)"):
        repo.resolve("nope")
    with pytest.raises(UnknownDefinition, match="no feature view named 'x'"):
        repo.view("x")
    with pytest.raises(UnknownDefinition, match="no entity named 'x'"):
        repo.entity("x")
    with pytest.raises(KeyError):
        repo.feature_set("x")


def _problems(objects: list) -> str:
    with pytest.raises(DefinitionError) as info:
        FeatureRepo(objects)
    return str(info.value)


USER = Entity("user", ("user_id",))
PROFILE = FeatureView("user_profile", (USER,), ParquetSource("u.parquet"), (Feature("age", ValueType.INT64),))


def test_cross_reference_errors_name_the_offending_object() -> None:
    assert "feature view 'user_profile': entity 'user' is not declared" in _problems([PROFILE])
    other_user = Entity("user", ("uid",))
    msg = _problems([other_user, PROFILE])
    assert "feature view 'user_profile': entity 'user' differs from the declared entity" in msg
    assert "feature set 'm': reference 'nope:age' names an unknown feature view 'nope'" in _problems([USER, PROFILE, FeatureSet("m", ("nope:age",))])
    assert "reference 'user_profile:height': view 'user_profile' has no feature 'height' (it has age)" in _problems(
        [USER, PROFILE, FeatureSet("m", ("user_profile:height",))]
    )
    twin = FeatureView("user_profile", (USER,), ParquetSource("other.parquet"), (Feature("age", ValueType.INT64),))
    assert "feature view 'user_profile' is defined twice, differently" in _problems([USER, PROFILE, twin])
    assert "entity 'user' is defined twice" in _problems([USER, Entity("user", ("x",)), PROFILE])
    empty_inputs = RequestFeatureView("req", (), (Feature("h", ValueType.INT64),), lambda c: {"h": 0})
    assert "feature view 'req': a request feature view needs at least one input" in _problems([empty_inputs])
    dup = FeatureSet("m", ("user_profile:*", "user_profile:age"))
    assert "feature set 'm': feature 'user_profile:age' is listed twice" in _problems([USER, PROFILE, dup])
    keyed = FeatureView("p2", (USER,), ParquetSource("u.parquet"), (Feature("user_id", ValueType.INT64),))
    assert "feature 'user_id' has the name of a join key" in _problems([USER, keyed])
    bad_default = FeatureView("p3", (USER,), ParquetSource("u.parquet"), (Feature("age", ValueType.INT64, default="old"),))
    assert "feature 'age': default 'old' does not match dtype int64" in _problems([USER, bad_default])
    untyped = FeatureView("p4", (USER,), ParquetSource("u.parquet"), (Feature("age", "int64"),))
    assert "dtype 'int64' is not a ValueType" in _problems([USER, untyped])
    no_entities = FeatureView("p5", (), ParquetSource("u.parquet"), (Feature("age", ValueType.INT64),))
    assert "feature view 'p5': needs at least one entity" in _problems([no_entities])
    assert "feature set 'm': lists no features" in _problems([USER, PROFILE, FeatureSet("m", ())])


def test_all_problems_are_reported_at_once() -> None:
    msg = _problems([PROFILE, FeatureSet("m", ("nope:x",))])
    assert msg.startswith("2 problems in the feature definitions")
    assert "entity 'user' is not declared" in msg and "unknown feature view 'nope'" in msg


def test_errors_while_importing_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + 'user = Entity("User", ("user_id",))\n')
    with pytest.raises(DefinitionError, match=r"defs\.py: ValueError: entity name 'User' must be lower_snake_case"):
        load_repo(path)
    with pytest.raises(DefinitionError, match="SyntaxError"):
        load_repo(write(tmp_path, "def (:\n", "broken.py"))
    with pytest.raises(DefinitionError, match="entity 'user' is not declared"):
        load_repo(write(tmp_path, GOOD.replace('user = Entity("user", ("user_id",))', 'u = 1').replace("(user,)", '(Entity("user", ("user_id",)),)'), "undeclared.py"))
    with pytest.raises(FileNotFoundError):
        load_repo(tmp_path / "missing.py")


def test_loading_is_isolated_and_fresh(tmp_path: Path) -> None:
    a = write(tmp_path, GOOD, "a.py")
    b = write(tmp_path, GOOD.replace('"gender", ValueType.STRING', '"sex", ValueType.STRING'), "b.py")
    ra, rb = load_repo(a), load_repo(b)
    assert "gender" in ra.view("user_profile").feature_names and "sex" in rb.view("user_profile").feature_names
    assert ra.fingerprint() != rb.fingerprint()
    assert load_repo(a).fingerprint() == ra.fingerprint()
    a.write_text(a.read_text().replace('"gender"', '"sex"'))
    assert load_repo(a).fingerprint() == rb.fingerprint()  # re-read, not cached


def test_fingerprint_sees_request_function_changes(tmp_path: Path) -> None:
    hour = load_repo(write(tmp_path, GOOD, "h.py"))
    minute = load_repo(write(tmp_path, GOOD.replace('ctx["ts"].hour', 'ctx["ts"].minute'), "m.py"))
    assert hour.fingerprint() != minute.fingerprint()


def test_repo_from_objects_skips_repeats() -> None:
    repo = FeatureRepo([USER, PROFILE, USER, PROFILE, FeatureSet("m", ("user_profile:age",))])
    assert len(repo.entities) == 1 and repo.resolve("m").refs == ("user_profile:age",)


# ----------------------------------------------------------------------------- the project's definitions


@pytest.fixture(scope="module")
def project_repo() -> FeatureRepo:
    return load_repo(REPO_ROOT / "config" / "features.py")


def test_project_definitions_load_and_every_set_resolves(project_repo: FeatureRepo) -> None:
    assert {"deepfm_movielens", "din_movielens", "deepfm_synthetic", "din_synthetic"} <= set(project_repo.feature_sets)
    for name in project_repo.feature_sets:
        resolved = project_repo.resolve(name)
        assert len(resolved) > 0 and resolved.join_keys == ("user_id", "item_id")
        assert resolved.request_inputs == ("event_ts",)
        assert all(isinstance(t, ValueType) for t in resolved.schema().values())


def test_project_feature_sets_have_the_documented_contents(project_repo: FeatureRepo) -> None:
    deepfm = project_repo.resolve("deepfm_movielens").schema()
    din = project_repo.resolve("din_movielens").schema()
    assert set(din) - set(deepfm) == {"user_activity:item_id_last20_30d"}
    assert din["user_activity:item_id_last20_30d"] is ValueType.INT64_LIST
    for ref in ("user_profile:zip_prefix", "item_profile:genres", "user_activity:rating_mean_7d", "item_popularity:rating_count_30d", "request_time:hour_of_day"):
        assert ref in deepfm
    assert deepfm["item_profile:genres"] is ValueType.STRING_LIST
    syn = project_repo.resolve("din_synthetic").schema()
    assert set(syn) - set(project_repo.resolve("deepfm_synthetic").schema()) == {"syn_user_activity:item_id_last50_30d"}
    activity = project_repo.view("user_activity")
    assert isinstance(activity, WindowedFeatureView) and activity.tile is None
    assert [activity.hop(timedelta(days=d)) for d in (1, 7, 30)] == [timedelta(hours=1), timedelta(hours=6), timedelta(days=1)]
    assert activity.stream is not None and activity.stream.topic == "events"
    assert activity.stream.fields["rating"] == "value" and activity.stream.fields["event_ts"] == "timestamp_ms"


def test_project_request_time_function(project_repo: FeatureRepo) -> None:
    fn = project_repo.view("request_time").function
    wednesday_1430 = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    expected = {"hour_of_day": 14, "day_of_week": 2}
    assert fn({"event_ts": wednesday_1430}) == expected
    assert fn({"event_ts": wednesday_1430.replace(tzinfo=None)}) == expected  # naive = UTC
    assert fn({"event_ts": int(wednesday_1430.timestamp() * 1000)}) == expected  # epoch ms
    assert fn({"event_ts": np.datetime64("2024-05-01T14:30:00")}) == expected
    assert fn({"event_ts": None}) == {"hour_of_day": None, "day_of_week": None}
