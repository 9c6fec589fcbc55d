"""Small SQL and type helpers shared by the offline store's query builders.

Time inside every offline query is an integer: nanoseconds since the Unix
epoch (``epoch_ns``), UTC. Naive timestamps are read as UTC. Integers make the
window arithmetic exact, compare fast, and keep sub-microsecond order when a
source has nanosecond timestamps.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa

from featurestore.definitions import ValueType

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Sort-key bounds (see pit.order_key).
TWO_64 = 1 << 64
MAX_BIGINT = (1 << 63) - 1
MIN_BIGINT = -(1 << 63)

DUCK_TYPE: dict[ValueType, str] = {
    ValueType.FLOAT64: "DOUBLE",
    ValueType.INT64: "BIGINT",
    ValueType.STRING: "VARCHAR",
    ValueType.BOOL: "BOOLEAN",
    ValueType.FLOAT_LIST: "DOUBLE[]",
    ValueType.INT64_LIST: "BIGINT[]",
    ValueType.STRING_LIST: "VARCHAR[]",
}

ARROW_TYPE: dict[ValueType, pa.DataType] = {
    ValueType.FLOAT64: pa.float64(),
    ValueType.INT64: pa.int64(),
    ValueType.STRING: pa.string(),
    ValueType.BOOL: pa.bool_(),
    ValueType.FLOAT_LIST: pa.list_(pa.float64()),
    ValueType.INT64_LIST: pa.list_(pa.int64()),
    ValueType.STRING_LIST: pa.list_(pa.string()),
}


def ident(name: str) -> str:
    """A quoted SQL identifier (label tables may hold any column name)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def td_ns(td: timedelta) -> int:
    """A timedelta as integer nanoseconds, exactly (no float round trip)."""
    return (td.days * 86_400 + td.seconds) * NS_PER_S + td.microseconds * 1_000


def dt_ns(ts: datetime) -> int:
    """A datetime (naive = UTC) as integer nanoseconds since the epoch."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return td_ns(ts - _EPOCH)


def ts_ns_expr(column_sql: str, duck_type: str) -> str:
    """SQL for a time column as BIGINT epoch nanoseconds (naive timestamps are UTC)."""
    t = duck_type.upper()
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"epoch_ns({column_sql})"
    if t in {"BIGINT", "INTEGER", "HUGEINT", "UBIGINT"}:
        raise TypeError(f"timestamp column {column_sql} is an integer ({duck_type}); store a timestamp type instead")
    return f"epoch_ns(CAST({column_sql} AS TIMESTAMPTZ))"


def floor_mod(expr: str, step_ns: int) -> str:
    """SQL for ``expr mod step`` in [0, step) also for negative `expr` (times before 1970)."""
    return f"((({expr}) % {step_ns}) + {step_ns}) % {step_ns}"


def ns_to_timestamptz(expr: str) -> str:
    """SQL turning epoch nanoseconds into a TIMESTAMPTZ (microsecond precision, UTC)."""
    micros = f"((({expr}) - {floor_mod(expr, 1000)}) // 1000)"
    return f"CAST(make_timestamp({micros}) AS TIMESTAMPTZ)"
