"""Small I/O helpers shared by the dataset builders: atomic Parquet writes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; on success rename it over `final` atomically.

    The temporary name starts with a dot, so a glob like ``*.parquet`` never
    picks up a half-written file; on any error it is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table_atomic(table: pa.Table, path: Path, row_group_size: int = 1_000_000) -> None:
    """Write one Parquet file so that `path` is either absent or complete."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def parquet_rows(path: Path) -> int:
    """Row count from the footer (no data read)."""
    return pq.ParquetFile(path).metadata.num_rows
