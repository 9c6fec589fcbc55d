"""Feature definitions of the FTRL trainer tests (loaded with `load_repo`, like config/features.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from featurestore.definitions import (
    Entity,
    Feature,
    FeatureSet,
    FeatureView,
    ParquetSource,
    RequestFeatureView,
    ValueType,
)

user = Entity("user", join_keys=("user_id",))
item = Entity("item", join_keys=("item_id",))

st_user = FeatureView(
    "st_user",
    entities=(user,),
    source=ParquetSource("st_user.parquet"),
    features=(Feature("segment", ValueType.STRING), Feature("activity", ValueType.FLOAT64, default=0.0)),
)

st_item = FeatureView(
    "st_item",
    entities=(item,),
    source=ParquetSource("st_item.parquet"),
    features=(
        Feature("category", ValueType.STRING),
        Feature("tags", ValueType.STRING_LIST, default=[]),
        Feature("clicks_7d", ValueType.INT64, default=0),
    ),
)


def _hour(ctx: Any) -> dict[str, Any]:
    ts = ctx["event_ts"]
    if isinstance(ts, (int, float)):
        ts = datetime.fromtimestamp(ts / 1000.0, tz=UTC)
    return {"hour": ts.hour}


st_request = RequestFeatureView("st_request", inputs=("event_ts",), features=(Feature("hour", ValueType.INT64),),
                                function=_hour)

st_ftrl = FeatureSet("st_ftrl", features=("st_user:*", "st_item:*", "st_request:*"))

# the same views without the request features: another feature set (a base model over it cannot be stacked on st_ftrl)
st_ftrl_small = FeatureSet("st_ftrl_small", features=("st_user:*", "st_item:*"))
