"""FeatureClient: the in-process serving API over the real embedded valkey."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from featurestore.client import (
    FeatureRequestError,
    InvalidEntityKey,
    InvalidFeatureReference,
    InvalidRequestContext,
    UnknownEntity,
    UnknownFeature,
    UnknownFeatureSet,
    request_feature_values,
    serving_time,
)
from featurestore.online import FeatureStatus

P, N, NF, OLD, D = (FeatureStatus.PRESENT, FeatureStatus.NULL_VALUE, FeatureStatus.NOT_FOUND,
                    FeatureStatus.OUTSIDE_MAX_AGE, FeatureStatus.DEFAULTED)


def test_values_statuses_and_defaults(seeded):
    res = seeded.client.get_online_features("user", [1, 2, 3, 4], ["profile:*", "clicks:*"], now=seeded.now)
    assert res.refs == ("profile:age", "profile:score", "profile:city", "profile:vip", "profile:emb", "profile:tags",
                        "clicks:click_count_6h", "clicks:dwell_mean_6h")
    assert res.status[:, 0].tolist() == [P, OLD, NF, N]
    assert res.statuses("clicks:click_count_6h").tolist() == [P, D, NF, NF]
    rows = res.to_rows()
    assert rows[0] == {"profile:age": 30, "profile:score": 0.9, "profile:city": "Paris", "profile:vip": True,
                       "profile:emb": [1.0, 2.0, 3.0], "profile:tags": ["a", "é"],
                       "clicks:click_count_6h": 2, "clicks:dwell_mean_6h": 4.0}
    # a missing entity gets the defaults, flagged as missing
    assert rows[2]["profile:score"] == 0.5 and rows[2]["profile:city"] == "unknown" and rows[2]["profile:tags"] == []
    assert rows[2]["profile:age"] is None and rows[2]["clicks:click_count_6h"] == 0
    assert res.missing[2].all() and not res.missing[0].any()
    assert res.missing[1, :6].all()  # stale: OUTSIDE_MAX_AGE, defaults served
    assert not res.missing[3, :6].any()  # stored NULLs are values, not missing
    # typed columns, as the store gives them
    assert res.column("profile:score").dtype == np.float64 and res.column("profile:emb").shape == (4, 3)
    assert res.key_columns == {"user_id": [1, 2, 3, 4]} and res.entity_type == "user"
    assert res.served_at == seeded.now and res.feature_set is None
    assert res.event_ts_ms(0).tolist()[:3] == [int(seeded.fresh.timestamp() * 1000), int(seeded.stale.timestamp() * 1000), 0]


def test_string_keys_address_the_same_rows_and_order_follows_the_request(seeded):
    ints = seeded.client.get_online_features("user", [4, 1], ["clicks:click_count_6h", "profile:age"], now=seeded.now)
    strs = seeded.client.get_online_features("user", ["4", "1"], ["clicks:click_count_6h", "profile:age"], now=seeded.now)
    assert ints.refs == ("clicks:click_count_6h", "profile:age")
    assert ints.to_rows() == strs.to_rows() == [
        {"clicks:click_count_6h": 0, "profile:age": None}, {"clicks:click_count_6h": 2, "profile:age": 30}]


def test_request_features_use_the_views_own_function(seeded):
    at = datetime(2024, 6, 1, 22, 5, tzinfo=UTC)
    res = seeded.client.get_online_features("user", [1, 2], ["context:hour", "profile:age", "context:is_us"],
                                            {"event_ts": at, "country": "US"}, now=seeded.now)
    assert res.to_rows() == [{"context:hour": 22, "profile:age": 30, "context:is_us": True},
                             {"context:hour": 22, "profile:age": None, "context:is_us": True}]
    view = seeded.repo.view("context")
    assert request_feature_values(view, {"event_ts": at, "country": "US"}) == view.function({"event_ts": at, "country": "US"})
    # no event_ts in the context: the serving time is the request time
    res = seeded.client.get_online_features("user", [1], ["context:hour"], {"country": None}, now=seeded.now)
    assert res.column("context:hour").tolist() == [seeded.now.hour]
    assert res.request_context["event_ts"] == seeded.now
    assert res.statuses("context:hour").tolist() == [P]
    # a None output is a NULL_VALUE, not a default
    assert res.values("context:hour") == [seeded.now.hour]
    res = seeded.client.get_online_features("user", [1], ["context:is_us"], {"country": None}, now=seeded.now)
    assert res.statuses("context:is_us").tolist() == [N] and res.values("context:is_us") == [None]


def test_whole_feature_set_with_join_key_columns(seeded):
    res = seeded.client.get_online_features(None, {"user_id": [1, 1, 3], "item_id": [5, 6, 5]}, "ranker",
                                            {"country": "FR"}, now=seeded.now)
    assert res.refs == seeded.repo.resolve("ranker").refs
    assert (res.feature_set, res.feature_set_version) == ("ranker", 1)
    assert res.values("item_stats:ctr") == [0.25, None, 0.25]
    assert res.values("profile:age") == [30, 30, None]
    assert res.values("context:is_us") == [False] * 3
    assert res.entity_keys == [(1, 5), (1, 6), (3, 5)]
    # with an entity type, only the set's features keyed by it (as the gRPC selector)
    by_user = seeded.client.get_online_features("user", [1], "ranker", now=seeded.now)
    assert by_user.refs == ("profile:age", "profile:score", "clicks:click_count_6h", "clicks:dwell_mean_6h")


def test_composite_keys(seeded):
    res = seeded.client.get_online_features("user_item", [(1, 5), (1, 6)], ["affinity:strength", "item_stats:ctr", "profile:age"],
                                            now=seeded.now)
    assert res.to_rows() == [{"affinity:strength": 0.7, "item_stats:ctr": 0.25, "profile:age": 30},
                             {"affinity:strength": 0.0, "item_stats:ctr": None, "profile:age": 30}]
    assert res.key_columns == {"user_id": [1, 1], "item_id": [5, 6]}


def test_plans_are_resolved_once(seeded):
    c = seeded.client
    assert c.plan(["profile:age", "clicks:*"], "user") is c.plan(("profile:age", "clicks:*"), "user")
    assert c.plan("ranker") is c.plan(seeded.repo.feature_set("ranker"))


@pytest.mark.parametrize("entity_type, keys, features, context, error, fragment", [
    ("user", [1], ["profile:nope"], None, UnknownFeature, "view 'profile' has no feature 'nope' (it has age, score"),
    ("user", [1], ["nope:age"], None, UnknownFeature, "no feature view named 'nope'"),
    ("user", [1], "nope", None, UnknownFeatureSet, "no feature set named 'nope' (defined: ranker)"),
    ("person", [1], ["profile:age"], None, UnknownEntity, "unknown entity type 'person' (defined: item, user, user_item)"),
    ("user", [1], ["profile"], None, InvalidFeatureReference, "must look like 'view:feature'"),
    ("user", [1], ["profile:age", "profile:*"], None, InvalidFeatureReference, "'profile:age' is requested twice"),
    ("user", [1], {"profile:age"}, None, InvalidFeatureReference, "not set"),
    ("user", [1], ["item_stats:ctr"], None, InvalidFeatureReference, "keyed by 'item'"),
    ("user", [1.5], ["profile:age"], None, InvalidEntityKey, "key #0 1.5 has type float"),
    ("user", [1, None], ["profile:age"], None, InvalidEntityKey, "key #1 None has type NoneType"),
    ("user", [b"1"], ["profile:age"], None, InvalidEntityKey, "type bytes"),
    ("user", [""], ["profile:age"], None, InvalidEntityKey, "key #0 is an empty string"),
    ("user", [(1, 5)], ["profile:age"], None, InvalidEntityKey, "pass entity_type for the combination"),
    ("user_item", [1], ["affinity:strength"], None, InvalidEntityKey, "composite key of 2 parts (user_id, item_id)"),
    (None, {"user_id": [1]}, "ranker", None, InvalidEntityKey, "lack join key column(s) 'item_id'"),
    (None, {"user_id": [1], "item_id": [1, 2]}, ["profile:age"], None, InvalidEntityKey, "differ in length"),
    (None, [1], ["profile:age", "item_stats:ctr"], None, InvalidEntityKey, "give an entity_type"),
    ("user", [1], ["context:hour"], None, InvalidRequestContext, "needs request-context input(s) 'country'"),
    ("user", [1], ["context:hour"], {"country": "US", "event_ts": object()}, InvalidRequestContext, "cannot compute its features"),
])
def test_request_errors(seeded, entity_type, keys, features, context, error, fragment):
    with pytest.raises(error) as info:
        seeded.client.get_online_features(entity_type, keys, features, context, now=seeded.now)
    assert isinstance(info.value, FeatureRequestError) and isinstance(info.value, ValueError)
    assert fragment in str(info.value), str(info.value)
    assert info.value.not_found is (error in (UnknownFeature, UnknownFeatureSet, UnknownEntity))


def test_async_variant_and_serving_time(seeded):
    async def main():
        return await asyncio.gather(*(seeded.client.get_online_features_async("user", [1, 3], ["profile:age"]) for _ in range(8)))

    results = asyncio.run(main())
    assert all(r.values("profile:age") == [30, None] for r in results)
    t = serving_time(datetime(2024, 1, 1, 12, 0, 0, 123456))
    assert t == datetime(2024, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    res = seeded.client.get_online_features("user", [], ["profile:age", "context:hour"], {"country": "US"}, now=seeded.now)
    assert len(res) == 0 and res.refs == ("profile:age", "context:hour") and res.status.shape == (0, 2)
    stale_later = seeded.client.get_online_features("user", [1], ["profile:age"], now=seeded.now + timedelta(days=2))
    assert stale_later.statuses("profile:age").tolist() == [OLD]
