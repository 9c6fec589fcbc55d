"""Served-feature log -> Kafka -> Parquet -> skew report against the real offline store (DuckDB) and online store (valkey)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from featurestore.client import FeatureClient
from featurestore.offline import OfflineStore
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.repository import FeatureRepo, load_repo
from featurestore.served_log import (
    FORMAT,
    ServedFeatureLogger,
    decode_record,
    encode_record,
    read_served_log,
    read_served_log_kafka,
    served_log_to_parquet,
    served_record,
    served_table,
)
from featurestore.skew import classify, cli_main, skew_report, values_equal
from featurestore.definitions import ValueType

DEFS = Path(__file__).resolve().with_name("skew_features.py")
T = datetime(2024, 6, 1, 12, 30, 0, 123000, tzinfo=UTC)  # serving time
TS = pa.timestamp("us", "UTC")


@pytest.fixture(scope="module")
def repo() -> FeatureRepo:
    return load_repo(DEFS)


def write_profile(root: Path, score_of_user_2: float = 0.2) -> None:
    rows = [
        # user, age, score, city, tags, event_ts
        (1, 30, 0.9, "Paris", ["a"], T - timedelta(hours=3)),
        (1, 31, 0.95, "Lyon", ["b"], T + timedelta(hours=1)),  # after the serving time: neither side may use it
        (2, 41, score_of_user_2, "Rome", [], T - timedelta(hours=5)),
        (3, None, None, None, None, T - timedelta(minutes=10)),  # stored NULLs
        (4, 25, 0.4, "Oslo", ["x", "y"], T - timedelta(hours=23)),
        (5, 60, 0.7, "Bonn", ["z"], T - timedelta(days=2)),  # older than the 1-day TTL
        # user 6: no row at all
    ]
    pq.write_table(pa.table({
        "user_id": [r[0] for r in rows], "age": pa.array([r[1] for r in rows], pa.int64()),
        "score": pa.array([r[2] for r in rows], pa.float64()), "city": pa.array([r[3] for r in rows], pa.string()),
        "tags": pa.array([r[4] for r in rows], pa.list_(pa.string())), "event_ts": pa.array([r[5] for r in rows], TS),
    }), root / "profile.parquet")


def write_clicks(root: Path) -> None:
    events = [  # user, item, dwell, minutes before T
        (1, 10, 3.0, 5), (1, 11, 5.0, 50), (1, 12, None, 170), (1, 13, 1.0, 300), (1, 14, 9.0, 500),
        (2, 20, 2.0, 400),  # outside the 6h window: count 0, mean null
        (3, 30, 4.0, 1), (3, 31, 6.0, -10),  # the second one is after T
        (4, 40, 1.5, 120),
    ]
    pq.write_table(pa.table({
        "user_id": [e[0] for e in events], "item_id": [e[1] for e in events],
        "dwell": pa.array([e[2] for e in events], pa.float64()),
        "event_ts": pa.array([T - timedelta(minutes=e[3]) for e in events], TS),
    }), root / "clicks.parquet")


def materialize(offline: OfflineStore, online: OnlineStore, repo: FeatureRepo, as_of: datetime) -> None:
    """What materialization does: latest rows and tiles as of `as_of`, from the offline store into the online one."""
    for batch in offline.latest_rows(repo.view("profile"), as_of=as_of):
        online.write_rows(repo.view("profile"), batch)
    online.write_tiles(repo.view("clicks"), offline.tiles(repo.view("clicks"), end=as_of))


@pytest.fixture()
def topic(stack: Any, unique_prefix: str) -> str:
    name = f"{unique_prefix}-features"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    return name


def test_skew_report_finds_an_injected_mismatch_and_nothing_else(tmp_path, repo, redis, unique_prefix, stack, config, topic):
    write_profile(tmp_path)
    write_clicks(tmp_path)
    online = OnlineStore(redis, unique_prefix)
    client = FeatureClient(online, repo, feature_set_versions={"skewset": 4})
    with OfflineStore(tmp_path, threads=1, memory_limit="512MB") as offline:
        materialize(offline, online, repo, T)

        # ranking serves two requests and logs the vectors it scored with
        served = [
            client.get_online_features(None, {"user_id": [1, 2, 3]}, "skewset", {"country": "US"}, now=T),
            client.get_online_features(None, {"user_id": [4, 5, 6]}, "skewset", {"country": "FR"}, now=T),
        ]
        assert served[0].values("clicks:click_count_6h") == [4, 0, 1]
        assert served[1].statuses("profile:age").tolist() == [FeatureStatus.PRESENT, FeatureStatus.OUTSIDE_MAX_AGE, FeatureStatus.NOT_FOUND]
        with ServedFeatureLogger.from_config(stack.kafka_bootstrap, config, topic=topic) as logger:
            ids = [logger.log(s, request_id=f"{unique_prefix}-r{i}") for i, s in enumerate(served)]
            assert logger.flush(10)
            assert logger.stats == {"queued": 2, "sent": 2, "dropped": 0, "failed": 0}
        assert ids == [f"{unique_prefix}-r0", f"{unique_prefix}-r1"]

        records = read_served_log_kafka(stack.kafka_bootstrap, config.kafka, topic, timeout_s=20)
        assert sorted(r["served_feature_id"] for r in records) == ids
        path = tmp_path / "served" / "log.parquet"
        served_log_to_parquet(records, path, repo)
        log = read_served_log(path)
        assert log.num_rows == 6 and log.column("event_ts").to_pylist() == [T] * 6

        report = skew_report(log, offline, repo, "skewset")
        assert report.compared_rows == report.served_rows == 6 and report.versions == (4,)
        assert [f.ref for f in report.features] == list(repo.resolve("skewset").refs)
        assert all(f.compared == 6 and f.skew_rate == 0 for f in report.features), report.format()
        assert report.ok()

        # the offline history of one feature changes after serving: the report sees exactly that
        write_profile(tmp_path, score_of_user_2=9.9)
        report = skew_report(log, offline, repo, "skewset")
        score = report.feature("profile:score")
        assert (score.mismatched, score.missing, score.extra, score.compared) == (1, 0, 0, 6)
        assert score.mismatch_rate == pytest.approx(1 / 6)
        assert score.examples[0]["served"] == 0.2 and score.examples[0]["offline"] == 9.9 and score.examples[0]["keys"] == {"user_id": 2}
        assert [f.ref for f in report.skewed] == ["profile:score"]
        assert all(f.skew_rate == 0 for f in report.features if f.ref != "profile:score")
        text = report.format()
        assert "profile:score" in text and "16.67%" in text and "1 of 9 features skewed" in text


def test_cli_prints_the_report(tmp_path, repo, redis, unique_prefix, capsys):
    write_profile(tmp_path)
    write_clicks(tmp_path)
    online = OnlineStore(redis, unique_prefix)
    client = FeatureClient(online, repo)
    with OfflineStore(tmp_path, threads=1, memory_limit="512MB") as offline:
        materialize(offline, online, repo, T)
    res = client.get_online_features(None, {"user_id": [1, 2, 3, 4, 5, 6]}, "skewset", {"country": "US"}, now=T)
    record = served_record(res, served_feature_id="s1")
    record["values"]["clicks:click_count_6h"][0] = 99  # a served count the offline join disagrees with
    path = tmp_path / "log.parquet"
    served_log_to_parquet([record], path, repo)
    argv = ["--served", str(path), "--feature-set", "skewset", "--definitions", str(DEFS), "--offline-root", str(tmp_path)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "clicks:click_count_6h" in out and "16.67%" in out and "1 of 9 features skewed" in out
    assert cli_main([*argv, "--max-rate", "0.1"]) == 1
    capsys.readouterr()
    assert cli_main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    counts = {f["ref"]: f["mismatched"] for f in data["features"]}
    assert counts["clicks:click_count_6h"] == 1 and sum(counts.values()) == 1
    assert cli_main(["--feature-set", "skewset"]) == 2  # no source given: usage error


def test_served_record_format(repo, redis, unique_prefix):
    client = FeatureClient(OnlineStore(redis, unique_prefix), repo, feature_set_versions={"skewset": 2})
    res = client.get_online_features(None, {"user_id": [7, 8]}, "skewset", {"country": "US"}, now=T)
    record = decode_record(encode_record(served_record(res, served_feature_id="abc", request_id="req")))
    assert record is not None and record["format"] == FORMAT
    assert {k: record[k] for k in ("served_feature_id", "request_id", "event_ts_ms", "feature_set", "feature_set_version")} == {
        "served_feature_id": "abc", "request_id": "req", "event_ts_ms": int(T.timestamp() * 1000),
        "feature_set": "skewset", "feature_set_version": 2}
    assert record["entity_keys"] == {"user_id": [7, 8]}
    assert record["refs"] == list(repo.resolve("skewset").refs)
    assert record["values"]["profile:score"] == [0.5, 0.5] and record["status"]["profile:score"] == [3, 3]
    assert record["values"]["context:hour"] == [12, 12] and record["values"]["profile:tags"] == [[], []]
    assert record["request_context"] == {"country": "US", "event_ts": T.isoformat()}
    assert decode_record(b'{"format": "something else"}') is None and decode_record(b"\x00garbage") is None
    table = served_table([record], repo)
    assert table.schema.field("profile__tags").type == pa.list_(pa.string())
    assert table.schema.field("clicks__item_id_last3_6h").type == pa.list_(pa.int64())
    assert table.column("_status").type.field("profile:score").type == pa.uint8()
    assert table.column("row").to_pylist() == [0, 1]


def test_records_with_numpy_values_or_nan_literals_still_round_trip():
    record = {"format": FORMAT, "served_feature_id": "n", "values": {"v:x": [np.float64(1.5), np.int64(2)]}}
    assert decode_record(encode_record(record))["values"] == {"v:x": [1.5, 2]}  # numpy scalars converted on the way
    older = b'{"format": "%s", "served_feature_id": "o", "values": {"v:x": [NaN, 1.0]}}' % FORMAT.encode()
    got = decode_record(older)  # the standard library's encoder wrote NaN literals
    assert got is not None and np.isnan(got["values"]["v:x"][0]) and got["values"]["v:x"][1] == 1.0


# ----------------------------------------------------------------------------- pure logic


def test_classify_match_mismatch_missing_extra():
    served = pa.array([1.0, 1.0 + 1e-9, 2.0, None, 0.5, 0.5, 3.0, float("nan"), None])
    offline = pa.array([1.0, 1.0, 2.5, None, None, 0.7, None, float("nan"), 4.0])
    status = np.array([1, 1, 1, 2, 3, 4, 1, 1, 3], dtype=np.uint8)
    # equal, within tolerance, mismatch, both null, default vs no value, default vs a value (extra),
    # served value vs no value (missing), NaN == NaN, served default-less missing vs a value (extra)
    assert classify(served, offline, status, ValueType.FLOAT64).tolist() == [0, 0, 1, 0, 0, 3, 2, 0, 3]
    assert classify(pa.array([1, 2, None]), pa.array([1, 3, 5]), None, ValueType.INT64).tolist() == [0, 1, 3]
    assert classify(pa.array([2**62 + 1]), pa.array([2**62]), None, ValueType.INT64).tolist() == [1]  # exact for ints
    lists = classify(pa.array([[1.0, 2.0], [], None]), pa.array([[1.0, 2.0000000001], [0.0], None]), None, ValueType.FLOAT_LIST)
    assert lists.tolist() == [0, 1, 0]
    assert classify(pa.array(["a", "b"]), pa.array(["a", "c"]), None, ValueType.STRING).tolist() == [0, 1]
    assert values_equal([1, [2.0]], [1, [2.0 + 1e-12]]) and not values_equal(1, None) and values_equal(None, None)
    assert not values_equal(True, 1.0 + 1e-3)


class StandInOffline:
    """A tiny stand-in with the offline store's get_training_set contract, over a fixed table of answers."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.calls: list[pa.Table] = []

    def get_training_set(self, labels: pa.Table, feature_set: Any, views: Any = None) -> pa.Table:
        self.calls.append(labels)
        out = labels
        for name, values in self.answers.items():
            out = out.append_column(name, pa.array([values[u] for u in labels.column("user_id").to_pylist()]))
        return out


def test_skew_report_sampling_and_labels(repo):
    n = 50
    served = pa.table({
        "served_feature_id": ["s"] * n, "row": list(range(n)),
        "event_ts": pa.array([T] * n, pa.timestamp("ms", "UTC")),
        "feature_set": ["skewset"] * (n - 5) + ["other"] * 5, "feature_set_version": [1] * n,
        "user_id": list(range(n)),
        "profile__age": list(range(n)),
        "_context": [json.dumps({"country": "US"})] * n,
    })
    truth = {"profile__age": [u if u % 10 else -1 for u in range(n)]}
    stand_in = StandInOffline(truth)
    report = skew_report(served, stand_in, repo, "skewset", sample=20, seed=1)
    labels = stand_in.calls[0]
    assert labels.column_names == ["user_id", "event_ts", "country"] and labels.num_rows == 20
    assert labels.column("country").to_pylist() == ["US"] * 20 and labels.schema.field("event_ts").type == pa.timestamp("us", "UTC")
    assert report.served_rows == 45 and report.compared_rows == 20
    age = report.feature("profile:age")
    sampled = labels.column("user_id").to_pylist()
    assert age.mismatched == sum(1 for u in sampled if u % 10 == 0) and age.compared == 20
    assert not report.feature("profile:score").logged  # not in this log: reported, not compared
    assert "not logged" in report.format()
