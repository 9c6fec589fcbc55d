"""Undecodable records are counted, logged and skipped (never a crash, never silent); `where` is respected.

Real Kafka and Redis; the `where` test also checks the offline store selects the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY
from stream_helpers import event, json_value, ms, produce, utc

from cascade.config import Config
from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    ParquetSource,
    SqlSource,
    StreamSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.offline import OfflineStore
from featurestore.online import OnlineStore
from featurestore.streaming import StreamingUpdater

H = timedelta(hours=1)
T0 = utc(2024, 6, 1, 12)
NOW = T0 + 2 * H
USER = Entity("user", ("user_id",))


def rating_view(topic: str) -> WindowedFeatureView:
    return WindowedFeatureView(
        "b_user", (USER,), ParquetSource("events.parquet"),
        aggregations=(Aggregation(AggregationFunction.COUNT, (24 * H,), name="n"),
                      Aggregation(AggregationFunction.MEAN, (24 * H,), column="rating"),
                      Aggregation(AggregationFunction.LAST_N, (24 * H,), column="item_id", n=10,
                                  dtype=ValueType.INT64_LIST)),
        stream=StreamSource(topic, fields={"rating": "value", "event_ts": "timestamp_ms"}))


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_undecodable_records_are_counted_logged_and_skipped(new_topic: Callable[..., str], bootstrap: str,
                                                             config: Config, online: OnlineStore, unique_prefix: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    topic = new_topic()
    v = rating_view(topic)
    t = ms(T0)
    values = [
        event(1, 10, T0, value=4.0),
        b"\xff\xfe definitely not protobuf",  # corrupt wire format
        b"",  # empty value
        b'{"user_id": 1, "item_id": 11',  # truncated JSON
        b"[1, 2, 3]",  # JSON, but not an object (read as protobuf: corrupt)
        json_value({"item_id": 12, "value": 1.0, "timestamp_ms": t}),  # no user_id
        json_value({"user_id": 1, "item_id": 13, "value": "lots", "timestamp_ms": t}),  # rating not a number
        json_value({"user_id": 1.5, "item_id": 14, "value": 1.0, "timestamp_ms": t}),  # key of no key type
        json_value({"user_id": 1, "item_id": "x", "value": 1.0, "timestamp_ms": t}),  # item id not an int64
        json_value({"user_id": 1, "item_id": 15, "value": 1.0}),  # no event time
        b"\x1a\x05ab",  # protobuf cut short: user_id says 5 bytes, 2 follow
        json_value({"user_id": 1, "item_id": 17, "value": 2.0, "timestamp_ms": t + 1}),  # fine (JSON)
        event(1, 18, T0 + timedelta(seconds=2), value=3.0),  # fine
    ]
    bad = len(values) - 3
    produce(bootstrap, config, topic, values)
    before = counter("cascade_feature_stream_decode_errors_total", topic=topic, view="")
    before_view = counter("cascade_feature_stream_decode_errors_total", topic=topic, view="b_user")
    group = f"{unique_prefix}-g"
    with caplog.at_level(logging.WARNING, logger="featurestore.streaming"):
        with StreamingUpdater(config, bootstrap, online, [v], group_id=group, assign=True) as u:
            s = u.run_for(until_idle=True, timeout=60)
    assert s.records == len(values)
    assert s.decode_errors == bad
    assert s.applied == 3
    assert s.commits >= 1
    after = counter("cascade_feature_stream_decode_errors_total", topic=topic, view="")
    after_view = counter("cascade_feature_stream_decode_errors_total", topic=topic, view="b_user")
    assert (after - before) + (after_view - before_view) == bad
    assert after - before == 5  # not parseable at all; the rest parsed but did not fit the view
    assert sum("skipped undecodable record" in r.getMessage() for r in caplog.records) == bad
    row = online.read(v, [1], now=NOW).to_rows()[0]
    assert row == {"b_user:n_1d": 3, "b_user:rating_mean_1d": pytest.approx(3.0), "b_user:item_id_last10_1d": [18, 17, 10]}
    # the offsets moved past the bad records: a restart does not trip over them again
    with StreamingUpdater(config, bootstrap, online, [v], group_id=group, assign=True) as again:
        assert again.run_for(until_idle=True, timeout=60).records == 0


def test_where_selects_the_same_rows_as_the_batch_query(new_topic: Callable[..., str], bootstrap: str,
                                                        config: Config, online: OnlineStore, unique_prefix: str,
                                                        tmp_path: Path) -> None:
    topic = new_topic()
    clicks = SqlSource("SELECT user_id, item_id, event_type, event_ts "
                       "FROM read_parquet('{root}/events.parquet') WHERE event_type = 'click'")
    v = WindowedFeatureView(
        "w_user", (USER,), clicks,
        aggregations=(Aggregation(AggregationFunction.COUNT, (24 * H,), name="clicks"),
                      Aggregation(AggregationFunction.LAST_N, (24 * H,), column="item_id", n=10,
                                  dtype=ValueType.INT64_LIST)),
        stream=StreamSource(topic, fields={"event_type": "type", "event_ts": "timestamp_ms"},
                            where={"event_type": "click"}))
    kinds = ["click", "like", "click", "view", "hide", "click", "purchase", "click"]
    rows = [{"user_id": 1 + k % 2, "item_id": 20 + k, "event_type": kind, "event_ts": T0 + timedelta(minutes=k)}
            for k, kind in enumerate(kinds)]
    values: list = [event(r["user_id"], r["item_id"], r["event_ts"], type=r["event_type"]) for r in rows]
    # JSON records say the type by name; a non-click missing its user is filtered, not an error
    values += [json_value({"user_id": 1, "item_id": 40, "type": "click", "timestamp_ms": ms(T0 + 9 * H / 60)}),
               json_value({"user_id": 1, "item_id": 41, "type": "like", "timestamp_ms": ms(T0 + 9 * H / 60)}),
               json_value({"item_id": 42, "type": "share", "timestamp_ms": ms(T0)})]
    rows += [{"user_id": 1, "item_id": 40, "event_type": "click", "event_ts": T0 + 9 * H / 60},
             {"user_id": 1, "item_id": 41, "event_type": "like", "event_ts": T0 + 9 * H / 60}]
    produce(bootstrap, config, topic, values)
    with StreamingUpdater(config, bootstrap, online, [v], group_id=f"{unique_prefix}-w", assign=True) as u:
        s = u.run_for(until_idle=True, timeout=60)
    n_clicks = sum(r["event_type"] == "click" for r in rows)
    assert s.applied == n_clicks and s.filtered == len(values) - n_clicks and s.decode_errors == 0

    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC"))])), tmp_path / "events.parquet")
    with OfflineStore(tmp_path, threads=1, memory_limit="512MB") as offline:
        labels = pa.table({"user_id": pa.array([1, 2], pa.int64()),
                           "event_ts": pa.array([NOW, NOW], pa.timestamp("us", tz="UTC"))})
        trained = offline.get_training_set(labels, [v]).to_pylist()
    served = online.read(v, [1, 2], now=NOW).to_rows()
    for s_row, t_row in zip(served, trained):
        assert s_row["w_user:clicks_1d"] == t_row["w_user__clicks_1d"]
        assert s_row["w_user:item_id_last10_1d"] == t_row["w_user__item_id_last10_1d"]
    assert [r["w_user:clicks_1d"] for r in served] == [3, 2]
