"""Definition objects check themselves: bad names, windows, duplicates and references fail at construction."""

from __future__ import annotations

from datetime import timedelta

import pytest

from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    Feature,
    FeatureSet,
    FeatureView,
    ParquetSource,
    RequestFeatureView,
    ValueType,
    WindowedFeatureView,
    fingerprint,
    parse_ref,
    spec,
    window_label,
)

H = timedelta(hours=1)
D = timedelta(days=1)
USER = Entity("user", ("user_id",))
SRC = ParquetSource("events.parquet")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Entity("User", ("user_id",)),
        lambda: Entity("user", ("User-Id",)),
        lambda: Feature("1st", ValueType.INT64),
        lambda: Feature("has space", ValueType.INT64),
        lambda: FeatureView("user-profile", (USER,), SRC, (Feature("age", ValueType.INT64),)),
        lambda: FeatureSet("Set", ("v:f",)),
        lambda: RequestFeatureView("_req", ("ts",), (Feature("h", ValueType.INT64),), lambda c: {}),
        lambda: Entity("x" * 64, ("k",)),
    ],
)
def test_bad_names_are_refused(make) -> None:
    with pytest.raises(ValueError, match="lower_snake_case"):
        make()


def test_entity_needs_a_join_key() -> None:
    with pytest.raises(ValueError, match="at least one join key"):
        Entity("user", ())


def test_window_must_be_a_multiple_of_the_tile() -> None:
    agg = Aggregation(AggregationFunction.COUNT, (timedelta(minutes=90),))
    with pytest.raises(ValueError, match="window 90m is not a multiple of tile 1h"):
        WindowedFeatureView("clicks", (USER,), SRC, (agg,), tile=H)
    WindowedFeatureView("clicks", (USER,), SRC, (agg,), tile=timedelta(minutes=30))  # fine
    with pytest.raises(ValueError, match="tile must be positive"):
        WindowedFeatureView("clicks", (USER,), SRC, (agg,), tile=timedelta(0))


def test_each_window_gets_its_own_hop_unless_tile_pins_one() -> None:
    aggs = (Aggregation(AggregationFunction.COUNT, (D, 7 * D, 30 * D)),
            Aggregation(AggregationFunction.LAST_N, (timedelta(hours=2),), column="item", n=5))
    view = WindowedFeatureView("clicks", (USER,), SRC, aggs)
    assert [view.hop(w) for w in (D, 7 * D, 30 * D, timedelta(hours=2))] == [H, 6 * H, D, timedelta(minutes=5)]
    assert view.hops == (timedelta(minutes=5), H, 6 * H, D)
    assert view.hop_windows() == {H: D, 6 * H: 7 * D, D: 30 * D}  # last-n lists are not tiled
    pinned = WindowedFeatureView("clicks", (USER,), SRC, aggs, tile=H)
    assert pinned.hops == (H,) and pinned.hop(30 * D) == H
    with pytest.raises(ValueError, match="window 7m is not a multiple of any default hop"):
        WindowedFeatureView("clicks", (USER,), SRC, (Aggregation(AggregationFunction.COUNT, (timedelta(minutes=7),)),))


def test_duplicate_features_are_refused() -> None:
    with pytest.raises(ValueError, match="'age' is defined twice"):
        FeatureView("p", (USER,), SRC, (Feature("age", ValueType.INT64), Feature("age", ValueType.FLOAT64)))
    same_outputs = (
        Aggregation(AggregationFunction.COUNT, (D,), name="n"),
        Aggregation(AggregationFunction.SUM, (D,), column="value", name="n"),
    )
    with pytest.raises(ValueError, match="'n_1d' is defined twice"):
        WindowedFeatureView("w", (USER,), SRC, same_outputs)


def test_aggregation_checks() -> None:
    with pytest.raises(ValueError, match="needs a column"):
        Aggregation(AggregationFunction.MEAN, (D,))
    with pytest.raises(ValueError, match="n > 0"):
        Aggregation(AggregationFunction.LAST_N, (D,), column="item_id")
    with pytest.raises(ValueError, match="at least one window"):
        Aggregation(AggregationFunction.COUNT, ())


def test_aggregation_output_names_and_types() -> None:
    assert Aggregation(AggregationFunction.COUNT, (D, 7 * D)).output_names() == ("count_1d", "count_7d")
    assert Aggregation(AggregationFunction.MEAN, (7 * D,), column="rating").output_names() == ("rating_mean_7d",)
    last = Aggregation(AggregationFunction.LAST_N, (30 * D,), column="item_id", n=20)
    assert last.output_names() == ("item_id_last20_30d",) and last.output_type() is ValueType.INT64_LIST
    assert Aggregation(AggregationFunction.COUNT, (D,), name="clicks").output_names() == ("clicks_1d",)
    assert Aggregation(AggregationFunction.COUNT, (D,)).output_type() is ValueType.INT64
    assert Aggregation(AggregationFunction.SUM, (D,), column="v").output_type() is ValueType.FLOAT64
    assert [window_label(w) for w in (D, 24 * H, timedelta(minutes=90), timedelta(seconds=5))] == ["1d", "1d", "90m", "5s"]


@pytest.mark.parametrize("ref", ["user_profile", ":age", "user_profile:", ""])
def test_bad_feature_references_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="must look like 'view:feature'"):
        FeatureSet("model", ("user_profile:age", ref))
    with pytest.raises(ValueError):
        parse_ref(ref)
    assert parse_ref("user_profile:*") == ("user_profile", "*")


def test_spec_and_fingerprint_follow_content() -> None:
    a = FeatureView("p", (USER,), SRC, (Feature("age", ValueType.INT64),), ttl=D)
    b = FeatureView("p", (USER,), SRC, (Feature("age", ValueType.INT64),), ttl=D)
    c = FeatureView("p", (USER,), SRC, (Feature("age", ValueType.FLOAT64),), ttl=D)
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    s = spec(a)
    assert s["kind"] == "FeatureView" and s["ttl"] == {"seconds": 86400.0} and s["features"][0]["dtype"] == "int64"
