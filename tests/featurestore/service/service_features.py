"""Feature definitions of the feature-service tests (loaded with `load_repo`, like config/features.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
item = Entity("item", join_keys=("item_id",))

profile = FeatureView(
    "profile",
    entities=(user,),
    source=ParquetSource("profile.parquet"),
    features=(
        Feature("age", ValueType.INT64),
        Feature("score", ValueType.FLOAT64, default=0.5),
        Feature("city", ValueType.STRING, default="unknown"),
        Feature("vip", ValueType.BOOL),
        Feature("emb", ValueType.FLOAT_LIST, dim=3),
        Feature("tags", ValueType.STRING_LIST, default=[]),
    ),
    ttl=timedelta(days=1),
)

item_stats = FeatureView(
    "item_stats",
    entities=(item,),
    source=ParquetSource("items.parquet"),
    features=(
        Feature("ctr", ValueType.FLOAT64),
        Feature("recent", ValueType.INT64_LIST),
        Feature("weights", ValueType.FLOAT_LIST, default=[]),
    ),
)

affinity = FeatureView(
    "affinity",
    entities=(user, item),
    source=ParquetSource("affinity.parquet"),
    features=(Feature("strength", ValueType.FLOAT64, default=0.0),),
)

clicks = WindowedFeatureView(
    "clicks",
    entities=(user,),
    source=ParquetSource("clicks.parquet"),
    aggregations=(
        Aggregation(AggregationFunction.COUNT, (timedelta(hours=6),), name="click_count"),
        Aggregation(AggregationFunction.MEAN, (timedelta(hours=6),), column="dwell"),
    ),
    tile=timedelta(hours=1),
)


def _context_features(ctx: Any) -> dict[str, Any]:
    ts = ctx["event_ts"]
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts / 1000.0, tz=UTC)
    elif isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    country = ctx["country"]
    return {"hour": ts.hour, "is_us": None if country is None else country == "US"}


context = RequestFeatureView(
    "context",
    inputs=("event_ts", "country"),
    features=(Feature("hour", ValueType.INT64), Feature("is_us", ValueType.BOOL)),
    function=_context_features,
)

ranker = FeatureSet("ranker", features=("profile:age", "profile:score", "context:*", "item_stats:ctr", "clicks:*"))
