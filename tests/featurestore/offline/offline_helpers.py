"""Helpers of the offline store tests: tiny histories written as Parquet under tmp_path."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def at(hour: int, minute: int = 0, second: int = 0, micro: int = 0, day: int = 1) -> datetime:
    """A UTC time on 2024-01-<day>."""
    return datetime(2024, 1, day, hour, minute, second, micro, tzinfo=timezone.utc)


def write(root: Path, name: str, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> str:
    """Write `rows` as <root>/<name> (Parquet, in the given order); return `name`, the path relative to root."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return name


def labels(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
