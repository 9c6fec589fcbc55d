"""OnlineStore rows: typed round trips, statuses, TTL, idempotent writes, composite keys, batched reads.

Every test runs against the real embedded server and a real 3-master cluster (`client` is parametrized).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
import redis as redis_py

from featurestore.definitions import Entity, Feature, FeatureSet, FeatureView, ParquetSource, ValueType
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.online.layout import arrow_entity_keys, entity_keys

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
USER = Entity("user", ("user_id",))
SRC = ParquetSource("users.parquet")

ALL_TYPES = FeatureView("all_types", (USER,), SRC, (
    Feature("f64", ValueType.FLOAT64, default=-1.0),
    Feature("i64", ValueType.INT64, default=-7),
    Feature("s", ValueType.STRING, default="none"),
    Feature("b", ValueType.BOOL, default=False),
    Feature("emb", ValueType.FLOAT_LIST, dim=4),
    Feature("fl", ValueType.FLOAT_LIST, default=[]),
    Feature("il", ValueType.INT64_LIST),
    Feature("sl", ValueType.STRING_LIST),
), ttl=timedelta(days=1))

ROWS = {
    "user_id": [1, 2, 3],
    "f64": [1.25, -0.0, float("inf")],
    "i64": [2**62, -5, 0],
    "s": ["héllo", "", "a|b%c"],
    "b": [True, False, True],
    "emb": [[0.1, 0.2, 0.3, 0.4], [1e-300, -2.5, 3.0, 1e300], [0.0, 0.0, 0.0, 1.0]],
    "fl": [[1.5, 2.5], [], [3.0] * 100],
    "il": [[1, -2, 2**40], [], [7]],
    "sl": [["a", "", "ç"], [], ["x" * 1000]],
}


def table(rows: dict, ts: datetime = T0) -> pa.Table:
    n = len(rows["user_id"])
    return pa.table({**rows, "event_ts": pa.array([ts] * n, type=pa.timestamp("us", "UTC"))})


def test_round_trip_every_value_type(store: OnlineStore) -> None:
    assert store.write_rows(ALL_TYPES, table(ROWS)) == 3
    res = store.read(ALL_TYPES, [1, 2, 3], now=T0 + timedelta(minutes=1))
    assert (res.status == FeatureStatus.PRESENT).all()
    rows = res.to_rows()
    for i in range(3):
        for name in ("f64", "i64", "s", "b", "emb", "fl", "il", "sl"):
            assert rows[i][f"all_types:{name}"] == ROWS[name][i], (i, name)
    # typed columns
    assert res.column("f64").dtype == np.float64 and res.column("i64").dtype == np.int64
    assert res.column("b").dtype == np.bool_
    emb = res.column("all_types:emb")
    assert emb.shape == (3, 4) and emb[1, 3] == 1e300
    assert res.column("s") == ["héllo", "", "a|b%c"]
    assert [a.tolist() for a in res.column("il")] == ROWS["il"]
    assert res.event_ts["all_types"][0] == np.datetime64(T0.replace(tzinfo=None), "us")


def test_explicit_null_is_not_the_default_and_missing_entity_is(store: OnlineStore) -> None:
    nulls = {"user_id": [10], **{k: [None] for k in ROWS if k != "user_id"}}
    store.write_rows(ALL_TYPES, table(nulls))
    res = store.read(ALL_TYPES, [10, 11], now=T0)
    assert (res.status[0] == FeatureStatus.NULL_VALUE).all()
    assert (res.status[1] == FeatureStatus.NOT_FOUND).all()
    rows = res.to_rows()
    assert all(v is None for v in rows[0].values())
    assert rows[1] == {
        "all_types:f64": -1.0, "all_types:i64": -7, "all_types:s": "none", "all_types:b": False,
        "all_types:emb": None, "all_types:fl": [], "all_types:il": None, "all_types:sl": None,
    }
    assert np.isnan(res.column("f64")[0]) and res.column("f64")[1] == -1.0
    assert res.valid("f64").tolist() == [False, True]
    assert res.valid("emb").tolist() == [False, False]
    assert np.isnat(res.event_ts["all_types"][1])


def test_ttl_serves_default_outside_max_age(store: OnlineStore) -> None:
    store.write_rows(ALL_TYPES, table({k: v[:1] for k, v in ROWS.items()}))
    fresh = store.read(ALL_TYPES, [1], now=T0 + timedelta(hours=23, minutes=59))
    assert (fresh.status == FeatureStatus.PRESENT).all()
    stale = store.read(ALL_TYPES, [1], now=T0 + timedelta(days=1, seconds=1))
    assert (stale.status == FeatureStatus.OUTSIDE_MAX_AGE).all()
    row = stale.to_rows()[0]
    assert row["all_types:f64"] == -1.0 and row["all_types:s"] == "none" and row["all_types:fl"] == []
    assert row["all_types:il"] is None


SCORES = FeatureView("scores", (USER,), SRC, (Feature("score", ValueType.FLOAT64), Feature("n", ValueType.INT64)))


def scores(ids, score, n, ts) -> pa.Table:
    return pa.table({"user_id": ids, "score": score, "n": n,
                     "event_ts": pa.array(ts, type=pa.timestamp("us", "UTC"))})


def test_older_write_is_skipped_and_rewrites_are_idempotent(store: OnlineStore) -> None:
    t1 = T0 + timedelta(hours=1)
    assert store.write_rows(SCORES, scores([1, 2], [1.0, 2.0], [1, 2], [t1, t1])) == 2
    assert store.write_rows(SCORES, scores([1, 2], [1.0, 2.0], [1, 2], [t1, t1])) == 0  # same rows again
    assert store.write_rows(SCORES, scores([1, 2], [9.0, 9.0], [9, 9], [T0, T0])) == 0  # older: skipped
    assert store.write_rows(SCORES, scores([1], [5.0], [5], [t1])) == 1  # same time, new value: a correction
    assert store.write_rows(SCORES, scores([2], [3.0], [3], [t1 + timedelta(seconds=1)])) == 1
    res = store.read(SCORES, [1, 2], now=t1)
    assert res.column("score").tolist() == [5.0, 3.0]
    assert res.column("n").tolist() == [5, 3]


def test_duplicate_keys_in_one_batch_newest_wins(store: OnlineStore) -> None:
    ts = [T0 + timedelta(seconds=s) for s in (5, 9, 1, 9)]
    written = store.write_rows(SCORES, scores([7, 7, 7, 8], [5.0, 9.0, 1.0, 1.0], [5, 9, 1, 1], ts))
    assert written == 3  # 7@5s, 7@9s, 8@9s; 7@1s is older than 7@9s
    res = store.read(SCORES, [7, 8], now=T0)
    assert res.column("score").tolist() == [9.0, 1.0]


PAIR = Entity("user_category", ("user_id", "category"))
AFFINITY = FeatureView("affinity", (PAIR,), SRC, (Feature("clicks", ValueType.INT64, default=0),))


def test_composite_keys(store: OnlineStore) -> None:
    cats = ["shoes", "a|b", "100%", "shoes"]
    users = [1, 1, 1, 2]
    batch = pa.table({"user_id": users, "category": cats, "clicks": [10, 20, 30, 40],
                      "event_ts": pa.array([T0] * 4, type=pa.timestamp("us", "UTC"))})
    assert store.write_rows(AFFINITY, batch) == 4
    res = store.read(AFFINITY, [(1, "shoes"), (1, "a|b"), (1, "100%"), (2, "shoes"), (2, "a|b")], now=T0)
    assert res.column("clicks").tolist() == [10, 20, 30, 40, 0]
    assert res.statuses("clicks").tolist()[-1] == FeatureStatus.NOT_FOUND
    # columnar entity keys, as Feast's entity rows
    res2 = store.read(AFFINITY, {"user_id": [2, 1], "category": ["shoes", "a|b"]}, now=T0)
    assert res2.column("clicks").tolist() == [40, 20]
    with pytest.raises(ValueError):
        store.read(AFFINITY, [1], now=T0)


def test_arrow_and_python_key_encodings_agree() -> None:
    ids, cats, flags = [0, -3, 2**62], ["", "x|%y", "é"], [True, False, True]
    arrow = arrow_entity_keys("p:", [pa.array(ids), pa.array(cats), pa.array(flags)])
    python = entity_keys("p:", list(zip(ids, cats, flags)), 3)
    assert arrow == python
    assert len(set(python)) == 3
    # injective: the separator inside a value cannot fake a second component
    assert entity_keys("p:", [("a|b", "c")], 2) != entity_keys("p:", [("a", "b|c")], 2)
    assert entity_keys("p:", [np.int64(5)]) == entity_keys("p:", [5]) == ["p:5"]


def test_result_selection_and_feature_sets(store: OnlineStore) -> None:
    store.write_rows(SCORES, scores([1], [0.5], [3], [T0]))
    store.write_rows(ALL_TYPES, table({k: v[:1] for k, v in ROWS.items()}))
    fs = FeatureSet("ranker", ("scores:score", "all_types:s", "all_types:emb"))
    plan = store.plan_feature_set(fs, {"scores": SCORES, "all_types": ALL_TYPES})
    res = store.read(plan, [1, 2], now=T0)
    assert res.refs == ("scores:score", "all_types:s", "all_types:emb")
    assert res.to_rows()[0] == {"scores:score": 0.5, "all_types:s": "héllo", "all_types:emb": [0.1, 0.2, 0.3, 0.4]}
    assert res.status.shape == (2, 3)
    assert res.status_names()[1]["scores:score"] == "NOT_FOUND"
    with pytest.raises(KeyError):
        store.read([(SCORES, ["nope"])], [1])


def test_thousand_entities_one_round_trip_per_view(store: OnlineStore, client, monkeypatch) -> None:
    n = 1000
    rng = np.random.default_rng(0)
    data = rng.standard_normal(n)
    store.write_rows(SCORES, scores(list(range(n)), data, list(range(n)), [T0] * n))
    store.write_rows(AFFINITY, pa.table({"user_id": list(range(n)), "category": ["c"] * n, "clicks": list(range(n)),
                                         "event_ts": pa.array([T0] * n, type=pa.timestamp("us", "UTC"))}))
    ids = list(range(n))
    plan = store.plan([SCORES, (AFFINITY, ["clicks"])])
    store.read(plan, {"user_id": ids, "category": ["c"] * n}, now=T0)  # warm: connections, cluster slots

    sends = []
    conn_cls = redis_py.connection.AbstractConnection
    original = conn_cls.send_packed_command

    def spy(self, command, check_health=True):
        sends.append(self.port)
        return original(self, command, check_health)

    nodes = client.get_primaries() if isinstance(client, redis_py.RedisCluster) else [None]
    before = [_calls(client, node) for node in nodes]
    monkeypatch.setattr(conn_cls, "send_packed_command", spy)
    res = store.read(plan, {"user_id": ids, "category": ["c"] * n}, now=T0)
    monkeypatch.setattr(conn_cls, "send_packed_command", original)
    after = [_calls(client, node) for node in nodes]

    assert np.array_equal(res.column("score"), data)
    assert res.column("clicks").tolist() == ids
    assert (res.status == FeatureStatus.PRESENT).all()
    mget = sum(a.get("mget", 0) - b.get("mget", 0) for a, b in zip(after, before))
    other = sum(a[c] - b.get(c, 0) for a, b in zip(after, before) for c in a if c not in ("mget", "info"))
    if isinstance(client, redis_py.RedisCluster):
        assert len(sends) <= len(nodes)  # one pipeline for both views: one send per node
        assert mget >= 2 and other == 0
    else:
        assert len(sends) == 1  # both views' MGETs in one pipeline: one round trip
        assert mget == 2 and other == 0


def test_a_key_repeated_across_rows_is_fetched_once(store: OnlineStore, monkeypatch) -> None:
    """Ranking reads one user's row beside 1,000 candidates: the user's key goes to Redis once."""
    store.write_rows(SCORES, scores([7, 8], [0.25, 0.5], [1, 2], [T0, T0]))
    asked: list[list[str]] = []
    original = store._mget_many

    def spy(keys_per_view, *args):
        asked.extend(keys_per_view)
        return original(keys_per_view, *args)

    monkeypatch.setattr(store, "_mget_many", spy)
    res = store.read(SCORES, [7] * 500 + [8] + [7] * 499 + [9], now=T0)
    assert [len(keys) for keys in asked] == [3]
    assert res.column("score")[:500].tolist() == [0.25] * 500 and res.column("score")[500] == 0.5
    assert res.status_names()[1001 - 1]["scores:score"] == "NOT_FOUND"
    assert len(res) == 1001


def _calls(client, node) -> dict[str, int]:
    stats = client.info("commandstats", target_nodes=node) if node is not None else client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def test_plans_are_cached_and_views_versioned(store: OnlineStore) -> None:
    assert store.plan(SCORES) is store.plan(SCORES)
    renamed = FeatureView("scores", (USER,), SRC, (Feature("score", ValueType.FLOAT64), Feature("n", ValueType.FLOAT64)))
    retitled = FeatureView("scores", (USER,), SRC, SCORES.features, description="other words", ttl=timedelta(hours=1))
    assert store.version(renamed) != store.version(SCORES)  # a type change moves the view to new keys
    assert store.version(retitled) == store.version(SCORES)  # description / ttl keep the data
    store.write_rows(SCORES, scores([1], [1.0], [1], [T0]))
    assert store.read(renamed, [1], now=T0).status[0, 0] == FeatureStatus.NOT_FOUND


def test_scripts_reload_after_script_flush(store: OnlineStore, client) -> None:
    assert store.write_rows(SCORES, scores([1], [1.0], [1], [T0])) == 1
    client.script_flush()  # as after a server restart: the cached sha is gone
    assert store.write_rows(SCORES, scores([1, 2], [2.0, 2.0], [2, 2], [T0 + timedelta(seconds=1)] * 2)) == 2
    assert store.read(SCORES, [1, 2], now=T0).column("n").tolist() == [2, 2]


def test_text_clients_are_refused(stack, config) -> None:
    text = redis_py.Redis.from_url(stack.redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        OnlineStore(text, "p")
    text.close()
