"""Cascade's feature definitions: the one place features are written down.

Training (offline store), serving (online store), materialization and the
streaming updater all read these objects, so a feature means the same thing
everywhere. Copy a block, rename it, then check and publish it:

    cascade features plan                 # what would change, and whether it is safe
    cascade features apply                # publish a new registry version
    cascade features show deepfm_movielens  # the input schema a model gets

Conventions
-----------
* Source paths are relative to the offline store's root (``paths.data_dir /
  features.offline_subdir``); in a ``SqlSource`` query, ``{root}`` is that root.
* A feature is referenced as ``"view:feature"``; ``"view:*"`` means every
  feature of the view. Window aggregations are named
  ``<name or column_function>_<window>``, e.g. ``rating_mean_7d``.
* Every view reads ``event_ts`` (UTC) as its event time.
* Window aggregations hop by a hop that grows with the window (1d by 1 h, 7d
  by 6 h, 30d by 1 d: `featurestore.definitions.default_hop`); set a view's
  ``tile`` only to force one hop for every window. Changing a window's hop is
  a breaking change (stored tiles no longer line up).
"""

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
    SqlSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)

DAY = timedelta(days=1)
# 1d, 7d, 30d. Each window hops by its default hop (featurestore.definitions.default_hop): 1d by 1 hour,
# 7d by 6 hours, 30d by 1 day -- 24, 28 and 30 tiles online instead of 720 one-hour tiles for 30 days.
WINDOWS = (1 * DAY, 7 * DAY, 30 * DAY)

# --------------------------------------------------------------------------- entities

user = Entity("user", join_keys=("user_id",), description="A user (MovieLens or synthetic).")
item = Entity("item", join_keys=("item_id",), description="An item: a movie or a synthetic catalogue item.")

# --------------------------------------------------------------------------- request-time features


def _utc(value: Any) -> datetime | None:
    """A request or label timestamp as an aware UTC datetime.

    Accepts a datetime (naive means UTC; pandas Timestamps are datetimes), a
    numpy datetime64, an ISO-8601 string, or a number of epoch milliseconds.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    if isinstance(value, str):
        return _utc(datetime.fromisoformat(value))
    if hasattr(value, "astype"):  # numpy.datetime64
        return datetime.fromtimestamp(int(value.astype("datetime64[ms]").astype("int64")) / 1000.0, tz=UTC)
    raise TypeError(f"cannot read a timestamp from {value!r}")


def request_time_features(ctx: Any) -> dict[str, int | None]:
    """Hour of day (0-23) and day of week (Monday = 0), in UTC, of the request time."""
    ts = _utc(ctx["event_ts"])
    if ts is None:
        return {"hour_of_day": None, "day_of_week": None}
    return {"hour_of_day": ts.hour, "day_of_week": ts.weekday()}


request_time = RequestFeatureView(
    "request_time",
    inputs=("event_ts",),  # the request's timestamp online; the label row's event_ts offline
    features=(
        Feature("hour_of_day", ValueType.INT64, description="UTC hour of the request, 0-23"),
        Feature("day_of_week", ValueType.INT64, description="UTC weekday of the request, Monday = 0"),
    ),
    function=request_time_features,
    description="Calendar features of the request time.",
)

# --------------------------------------------------------------------------- MovieLens-100K

user_profile = FeatureView(
    "user_profile",
    entities=(user,),
    source=SqlSource(
        "SELECT user_id, age, gender, occupation, substr(zip_code, 1, 1) AS zip_prefix, event_ts "
        "FROM read_parquet('{root}/movielens/users.parquet')"
    ),
    features=(
        Feature("age", ValueType.INT64),
        Feature("gender", ValueType.STRING),
        Feature("occupation", ValueType.STRING),
        Feature("zip_prefix", ValueType.STRING, description="First digit of the ZIP code (a coarse region)"),
    ),
    description="MovieLens user demographics.",
)

item_profile = FeatureView(
    "item_profile",
    entities=(item,),
    source=ParquetSource("movielens/items.parquet"),
    features=(
        Feature("release_year", ValueType.INT64, description="Null when unknown"),
        Feature("genres", ValueType.STRING_LIST, default=[]),
    ),
    description="MovieLens movie metadata.",
)

# Live rating events arrive on the `events` topic as decoded records with
# user_id, item_id, type, value (the rating) and timestamp_ms; `fields` maps the
# batch columns onto those keys so both paths aggregate the same values, and
# `where` keeps only ratings (the batch file holds nothing else: event_type "rating").
rating_events = StreamSource(
    topic="events",
    fields={"user_id": "user_id", "item_id": "item_id", "rating": "value", "event_ts": "timestamp_ms", "event_type": "type"},
    where={"event_type": "rating"},
)
ratings = ParquetSource("movielens/ratings.parquet")

user_activity = WindowedFeatureView(
    "user_activity",
    entities=(user,),
    source=ratings,
    aggregations=(
        Aggregation(AggregationFunction.COUNT, WINDOWS, name="rating_count"),  # rating_count_1d, _7d, _30d
        Aggregation(AggregationFunction.MEAN, WINDOWS, column="rating"),  # rating_mean_1d, _7d, _30d
        Aggregation(AggregationFunction.LAST_N, (30 * DAY,), column="item_id", n=20, dtype=ValueType.INT64_LIST),  # item_id_last20_30d
    ),
    stream=rating_events,
    description="What a user rated recently: how much, how well, and which movies.",
)

item_popularity = WindowedFeatureView(
    "item_popularity",
    entities=(item,),
    source=ratings,
    aggregations=(
        Aggregation(AggregationFunction.COUNT, WINDOWS, name="rating_count"),
        Aggregation(AggregationFunction.MEAN, WINDOWS, column="rating"),
    ),
    stream=rating_events,
    description="How often and how well a movie was rated recently.",
)

_MOVIELENS_ACTIVITY = tuple(f"user_activity:rating_{fn}_{w}" for fn in ("count", "mean") for w in ("1d", "7d", "30d"))

deepfm_movielens = FeatureSet(
    "deepfm_movielens",
    features=(
        "user_profile:*",
        "item_profile:*",
        *_MOVIELENS_ACTIVITY,
        "item_popularity:*",
        "request_time:*",
    ),
    description="DeepFM ranking model on MovieLens.",
)

din_movielens = FeatureSet(
    "din_movielens",
    features=(*deepfm_movielens.features, "user_activity:item_id_last20_30d"),
    description="DIN ranking model on MovieLens: DeepFM's features plus the last 20 rated movies.",
)

# --------------------------------------------------------------------------- synthetic catalogue

syn_user_profile = FeatureView(
    "syn_user_profile",
    entities=(user,),
    source=ParquetSource("synthetic/users.parquet"),
    features=(Feature("home_category", ValueType.STRING, description="The category the user mostly reads"),),
    description="Synthetic users.",
)

syn_item_profile = FeatureView(
    "syn_item_profile",
    entities=(item,),
    source=SqlSource(
        "SELECT item_id, category, author, group_id, epoch_ms(published_ts) AS published_at_ms, event_ts "
        "FROM read_parquet('{root}/synthetic/items.parquet')"
    ),
    features=(
        Feature("category", ValueType.STRING),
        Feature("author", ValueType.STRING),
        Feature("group_id", ValueType.STRING, description="Near-duplicate group (rerank de-duplicates on it)"),
        Feature("published_at_ms", ValueType.INT64, description="Publication time, Unix epoch ms"),
    ),
    description="Synthetic catalogue items.",
)

# Clicks only, in batch (the query's WHERE) and in streaming (`where`) alike.
clicks = SqlSource(
    "SELECT user_id, item_id, value, event_ts "
    "FROM read_parquet('{root}/synthetic/events.parquet') WHERE event_type = 'click'"
)
click_events = StreamSource(
    topic="events",
    fields={"user_id": "user_id", "item_id": "item_id", "value": "value", "event_ts": "timestamp_ms", "event_type": "type"},
    where={"event_type": "click"},
)

syn_user_activity = WindowedFeatureView(
    "syn_user_activity",
    entities=(user,),
    source=clicks,
    aggregations=(
        Aggregation(AggregationFunction.COUNT, WINDOWS, name="click_count"),  # click_count_1d, _7d, _30d
        Aggregation(AggregationFunction.LAST_N, (30 * DAY,), column="item_id", n=50, dtype=ValueType.INT64_LIST),  # item_id_last50_30d
    ),
    stream=click_events,
    description="What a synthetic user clicked recently.",
)

syn_item_popularity = WindowedFeatureView(
    "syn_item_popularity",
    entities=(item,),
    source=clicks,
    aggregations=(Aggregation(AggregationFunction.COUNT, WINDOWS, name="click_count"),),
    stream=click_events,
    description="How often a synthetic item was clicked recently.",
)

deepfm_synthetic = FeatureSet(
    "deepfm_synthetic",
    features=(
        "syn_user_profile:*",
        "syn_item_profile:category",
        "syn_item_profile:author",
        "syn_user_activity:click_count_1d",
        "syn_user_activity:click_count_7d",
        "syn_user_activity:click_count_30d",
        "syn_item_popularity:*",
        "request_time:*",
    ),
    description="DeepFM ranking model on the synthetic catalogue.",
)

din_synthetic = FeatureSet(
    "din_synthetic",
    features=(*deepfm_synthetic.features, "syn_user_activity:item_id_last50_30d"),
    description="DIN ranking model on the synthetic catalogue: DeepFM's features plus the last 50 clicked items.",
)
