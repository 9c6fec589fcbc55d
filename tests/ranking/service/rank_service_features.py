"""Feature definitions of the ranking service tests (loaded with `load_repo`, like config/features.py)."""

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

rs_user = FeatureView(
    "rs_user",
    entities=(user,),
    source=ParquetSource("rs_user.parquet"),
    features=(Feature("age", ValueType.INT64), Feature("activity", ValueType.FLOAT64, default=0.0)),
)

rs_item = FeatureView(
    "rs_item",
    entities=(item,),
    source=ParquetSource("rs_item.parquet"),
    features=(Feature("quality", ValueType.FLOAT64, default=0.0), Feature("rating_count_7d", ValueType.INT64, default=0)),
)


def _hour(ctx: Any) -> dict[str, Any]:
    ts = ctx["event_ts"]
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts / 1000.0, tz=UTC)
    return {"hour": ts.hour}


rs_request = RequestFeatureView("rs_request", inputs=("event_ts",), features=(Feature("hour", ValueType.INT64),), function=_hour)

# No test writes window state: every entity reads as an empty window (count 0), which is not degradation.
rs_clicks = WindowedFeatureView(
    "rs_clicks",
    entities=(item,),
    source=ParquetSource("rs_clicks.parquet"),
    aggregations=(Aggregation(AggregationFunction.COUNT, (timedelta(days=1),), name="click_count"),),
    tile=timedelta(hours=1),
)

rs_ranker = FeatureSet("rs_ranker", features=("rs_user:*", "rs_item:*", "rs_clicks:*", "rs_request:*"))
