"""The offline store under test: DuckDB over Parquet files in tmp_path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.offline import OfflineStore

# pytest 9 no longer puts test directories on sys.path: make `offline_helpers` importable by the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[OfflineStore]:
    with OfflineStore(tmp_path, threads=2, memory_limit="1GB") as s:
        yield s
