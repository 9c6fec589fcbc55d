"""Events fixtures: the session's broker, a fresh topic per test."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cascade.config import Config
from stack import Stack

# pytest 9 no longer puts test directories on sys.path: make `events_helpers` importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from events_helpers import create_topic  # noqa: E402


@pytest.fixture()
def bootstrap(stack: Stack) -> str:
    assert stack.kafka_bootstrap is not None
    return stack.kafka_bootstrap


@pytest.fixture()
def new_topic(bootstrap: str, config: Config, unique_prefix: str) -> Callable[..., str]:
    """`new_topic(kind)` -> the name of a topic no other test uses."""
    count = 0

    def make(kind: str = "events", partitions: int = 2) -> str:
        nonlocal count
        count += 1
        return create_topic(bootstrap, config, f"{unique_prefix}-{kind}-{count}", partitions)

    return make
