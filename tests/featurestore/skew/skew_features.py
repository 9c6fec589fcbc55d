"""Feature definitions of the skew tests; sources are relative to the offline store's root (the test's tmp_path)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

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
)

user = Entity("user", join_keys=("user_id",))

profile = FeatureView(
    "profile",
    entities=(user,),
    source=ParquetSource("profile.parquet"),
    features=(
        Feature("age", ValueType.INT64),
        Feature("score", ValueType.FLOAT64, default=0.5),
        Feature("city", ValueType.STRING, default="unknown"),
        Feature("tags", ValueType.STRING_LIST, default=[]),
    ),
    ttl=timedelta(days=1),
)

clicks = WindowedFeatureView(
    "clicks",
    entities=(user,),
    source=ParquetSource("clicks.parquet"),
    aggregations=(
        Aggregation(AggregationFunction.COUNT, (timedelta(hours=6),), name="click_count"),
        Aggregation(AggregationFunction.MEAN, (timedelta(hours=6),), column="dwell"),
        Aggregation(AggregationFunction.LAST_N, (timedelta(hours=6),), column="item_id", n=3, dtype=ValueType.INT64_LIST),
    ),
    tile=timedelta(hours=1),
)


def _context(ctx: Any) -> dict[str, Any]:
    country = ctx["country"]
    return {"hour": ctx["event_ts"].hour, "is_us": None if country is None else country == "US"}


context = RequestFeatureView(
    "context",
    inputs=("event_ts", "country"),
    features=(Feature("hour", ValueType.INT64), Feature("is_us", ValueType.BOOL)),
    function=_context,
)

skewset = FeatureSet("skewset", features=("profile:*", "clicks:*", "context:*"))
