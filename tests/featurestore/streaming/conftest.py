"""Streaming-updater fixtures: a fresh topic per test on the session's broker, an online store per test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cascade.config import Config
from featurestore.online import OnlineStore
from stack import Stack

# pytest 9 no longer puts test directories on sys.path: make `stream_helpers` importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_helpers import create_topic  # noqa: E402


@pytest.fixture()
def bootstrap(stack: Stack) -> str:
    assert stack.kafka_bootstrap is not None
    return stack.kafka_bootstrap


@pytest.fixture()
def new_topic(bootstrap: str, config: Config, unique_prefix: str) -> Callable[..., str]:
    """`new_topic(partitions=1, suffix="")` -> the name of a topic no other test uses."""
    count = 0

    def make(partitions: int = 1, suffix: str = "") -> str:
        nonlocal count
        count += 1
        return create_topic(bootstrap, config, f"{unique_prefix}-{suffix or 'events'}-{count}", partitions)

    return make


@pytest.fixture()
def online(redis, unique_prefix: str) -> Iterator[OnlineStore]:  # noqa: ANN001 - the session's redis client
    yield OnlineStore(redis, unique_prefix)
