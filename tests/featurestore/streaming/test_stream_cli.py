"""`cascade features stream` (featurestore.streaming.cli_main) end to end, and its refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from stream_helpers import event, produce

from cascade.config import Config
from featurestore.online import OnlineStore
from featurestore.repository import load_repo
from featurestore.streaming import cli_main
from stack import Stack

DEFINITIONS = '''
from datetime import timedelta
from featurestore.definitions import Aggregation, AggregationFunction, Entity, ParquetSource, StreamSource, WindowedFeatureView

user = Entity("user", ("user_id",))
cli_user = WindowedFeatureView(
    "cli_user", (user,), ParquetSource("e.parquet"),
    aggregations=(Aggregation(AggregationFunction.COUNT, (timedelta(days=1),), name="n"),),
    stream=StreamSource("{topic}", fields={{"event_ts": "timestamp_ms"}}))
cli_batch_only = WindowedFeatureView(
    "cli_batch_only", (user,), ParquetSource("e.parquet"),
    aggregations=(Aggregation(AggregationFunction.COUNT, (timedelta(days=1),), name="n"),))
'''
T0 = datetime(2024, 8, 1, tzinfo=timezone.utc)


@pytest.fixture()
def definitions(tmp_path: Path, new_topic: Callable[..., str]) -> tuple[Path, str]:
    topic = new_topic()
    path = tmp_path / "features.py"
    path.write_text(DEFINITIONS.format(topic=topic))
    return path, topic


def test_streams_until_idle_and_reports_json(definitions: tuple[Path, str], stack: Stack, bootstrap: str,
                                            config: Config, redis, unique_prefix: str,  # noqa: ANN001
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, topic = definitions
    produce(bootstrap, config, topic, [event(u, 1, T0 + timedelta(minutes=u)) for u in (1, 2, 2)] + [b"junk"])
    argv = ["--definitions", str(path), "--redis-url", stack.redis_url, "--bootstrap", bootstrap,
            "--project", unique_prefix, "--group", f"{unique_prefix}-g", "--assign", "--until-idle", "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["records"], out["applied"], out["decode_errors"], out["idle"]) == (4, 3, 1, True)
    assert list(out["per_view"]) == ["cli_user"]  # the batch-only view is not streamed
    view = load_repo(path).view("cli_user")
    rows = OnlineStore(redis, unique_prefix).read(view, [1, 2], now=T0 + timedelta(hours=1)).to_rows()
    assert [r["cli_user:n_1d"] for r in rows] == [1, 2]
    assert cli_main(argv) == 0  # committed: a second run has nothing to do
    assert json.loads(capsys.readouterr().out)["records"] == 0


@pytest.mark.parametrize("views, code", [(["nope"], 1), (["cli_batch_only"], 1)])
def test_unknown_or_batch_only_views_are_refused(definitions: tuple[Path, str], stack: Stack, bootstrap: str,
                                                 views: list[str], code: int) -> None:
    path, _ = definitions
    assert cli_main(["--definitions", str(path), "--redis-url", stack.redis_url, "--bootstrap", bootstrap,
                     "--views", *views, "--until-idle"]) == code


def test_help_and_bad_usage() -> None:
    assert cli_main(["--help"]) == 0
    assert cli_main(["--seconds", "soon"]) == 2
