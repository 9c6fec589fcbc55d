"""Window aggregations (`WindowedFeatureView`) offline, and the tiles the online side keeps.

Semantics (the view's docstring): the value as of time t aggregates the events
with ``tile_start(t) - window + tile <= ts <= t``, where
``tile_start(t) = floor(t / tile) * tile`` on epoch-aligned UTC tiles. So the
window hops by whole tiles at its old end and is exact at its new end: with a
1 h tile and a 24 h window, a label at 10:30 sees events from 10:00 the day
before up to 10:30 included.

* COUNT: events in the window (rows; the column is ignored), int64, 0 when none.
* SUM: sum of the column's non-null values, float64, 0.0 when there are none.
* MEAN: SUM / number of non-null values, float64, NULL when there are none.
* LAST_N: the n most recent non-null values of the column in the window, most
  recent first; ties on the timestamp are broken by source order (the later
  row is the more recent). An empty list when there are none.
* A label row with a NULL timestamp gets NULL for every output; a label whose
  entity has no events gets the "none" values above.

How the training set computes them (measured on 2 cores, 1M labels over 10M
events of 100k users; 8 outputs: count over 1 h / 1 d / 7 d, sum and mean over
1 d / 7 d, last 10 over 7 d: 12-13 s in all, bench/pit_join.py):

* COUNT/SUM/MEAN: one DuckDB window query over the union of events and labels,
  partitioned by entity and ordered by time, with a per-row RANGE frame
  ``RANGE BETWEEN (t - lo(t)) PRECEDING AND CURRENT ROW``. The frame is exactly
  the window (peers at t included), and each label reads its aggregates from
  DuckDB's segment trees: O((E + L) log), and sums are summed directly, not as
  differences of running totals (which lose precision on long histories).
  ~5-6.5 s for the 7 outputs above (the sort is ~1.2 s; each window expression
  adds ~0.5 s). Events are first cut to the labels' entities and time span.
* LAST_N: per event, the trailing list of the n most recent values and times
  (``list() OVER (ROWS n-1 PRECEDING)``), then an ASOF join of the labels onto
  the latest event at or before t, keeping the entries with time >= lo(t).
  ~5 s for the case above; a windowed ``arg_max(v, order, n)`` over the RANGE
  frame took 12-15 s, one list of (time, value) structs instead of two lists 12 s.

`tiles_sql` computes the partial state per (entity, tile) that the online
store keeps (``featurestore.online.codec``: ``count``, ``<col>_sum``,
``<col>_count``, ``<col>_last_n`` oldest first, ``<col>_last_n_ts``), and
`combine_tiles` is the arithmetic that turns tiles into window values; the
tests check that it gives what the training set gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from featurestore.definitions import AggregationFunction, ValueType, WindowedFeatureView
from featurestore.offline._sql import DUCK_TYPE, TWO_64, dt_ns, floor_mod, ident, ns_to_timestamptz, td_ns

# Tile table columns, as `featurestore.online.codec` names them.
TILE_START = "tile_start"
TILE_COUNT = "count"
SUM_SUFFIX = "_sum"
NONNULL_SUFFIX = "_count"
LAST_SUFFIX = "_last_n"
LAST_TS_SUFFIX = "_last_n_ts"


@dataclass(frozen=True)
class WindowOutput:
    name: str
    function: AggregationFunction
    window_ns: int
    column: str | None
    n: int | None
    dtype: ValueType


def outputs(view: WindowedFeatureView) -> dict[str, WindowOutput]:
    """Every output of the view, by name."""
    out: dict[str, WindowOutput] = {}
    for agg in view.aggregations:
        for name, w in zip(agg.output_names(), agg.windows):
            out[name] = WindowOutput(name, agg.function, td_ns(w), agg.column, agg.n, agg.output_type())
    return out


def state_columns(view: WindowedFeatureView) -> tuple[list[str], dict[str, tuple[int, ValueType]]]:
    """(columns summed for SUM/MEAN, {LAST_N column: (largest n, list type)}), in definition order."""
    sums: list[str] = []
    last: dict[str, tuple[int, ValueType]] = {}
    for agg in view.aggregations:
        if agg.function in (AggregationFunction.SUM, AggregationFunction.MEAN) and agg.column not in sums:
            sums.append(agg.column)
        elif agg.function is AggregationFunction.LAST_N:
            prev = last.get(agg.column)
            if prev and prev[1] is not agg.output_type():
                raise TypeError(f"{view.name}: two last_n aggregations of {agg.column!r} disagree on type")
            last[agg.column] = (max(agg.n or 0, prev[0] if prev else 0), agg.output_type())
    return sums, last


def element_type(dtype: ValueType) -> str:
    return DUCK_TYPE[dtype].removesuffix("[]")


def frame_offset(tile_ns: int, window_ns: int, t: str = "__t") -> str:
    """SQL of ``t - lo(t)`` where ``lo(t) = tile_start(t) - window + tile``: how far the window reaches back."""
    return f"({floor_mod(t, tile_ns)} + {window_ns - tile_ns})"


def aggregates_sql(*, events_sql: str, keys: Sequence[str], tile_ns: int, wanted: Sequence[WindowOutput],
                   lo_min: int, t_max: int) -> str:
    """COUNT/SUM/MEAN outputs for the labels (``__lab``) with a timestamp: (__row, outputs...) by __row."""
    k = ", ".join(ident(x) for x in keys)
    value_cols = list(dict.fromkeys(o.column for o in wanted if o.function is not AggregationFunction.COUNT))
    v_alias = {c: f"__v{i}" for i, c in enumerate(value_cols)}
    ev_vals = "".join(f", CAST({ident(c)} AS DOUBLE) AS {v_alias[c]}" for c in value_cols)
    lb_vals = "".join(f", CAST(NULL AS DOUBLE) AS {v_alias[c]}" for c in value_cols)
    windows = sorted({o.window_ns for o in wanted})
    w_name = {w: f"w{i}" for i, w in enumerate(windows)}
    sel = []
    for o in wanted:
        w = w_name[o.window_ns]
        if o.function is AggregationFunction.COUNT:
            sel.append(f"count(__ev) OVER {w} AS {ident(o.name)}")
        elif o.function is AggregationFunction.SUM:
            sel.append(f"coalesce(sum({v_alias[o.column]}) OVER {w}, 0.0) AS {ident(o.name)}")
        else:
            sel.append(f"avg({v_alias[o.column]}) OVER {w} AS {ident(o.name)}")
    wins = ", ".join(
        f"{w_name[w]} AS (PARTITION BY {k} ORDER BY __t RANGE BETWEEN {frame_offset(tile_ns, w)} PRECEDING AND CURRENT ROW)"
        for w in windows)
    lab_keys = ", ".join(f"{ident(x)}" for x in keys)
    return (
        f"WITH lb AS (SELECT __row, {lab_keys}, __t FROM __lab WHERE __t IS NOT NULL), "
        f"ev AS (SELECT {k}, __t, 1 AS __ev{ev_vals} FROM ({events_sql}) e "
        f"SEMI JOIN (SELECT DISTINCT {lab_keys} FROM lb) s USING ({k}) WHERE __t >= {lo_min} AND __t <= {t_max}), "
        f"u AS (SELECT {k}, __t, CAST(NULL AS BIGINT) AS __row, __ev{''.join(', ' + v for v in v_alias.values())} FROM ev "
        f"UNION ALL SELECT {lab_keys}, __t, __row, CAST(NULL AS INTEGER){lb_vals} FROM lb) "
        f"SELECT __row, {', '.join(sel)} FROM u WINDOW {wins} QUALIFY __row IS NOT NULL ORDER BY __row"
    )


def last_n_sql(*, events_sql: str, keys: Sequence[str], tile_ns: int, column: str, keep: int, dtype: ValueType,
               wanted: Sequence[WindowOutput], lo_min: int, t_max: int) -> str:
    """LAST_N outputs of one column for the labels with a timestamp: (__row, outputs...) by __row."""
    k = ", ".join(ident(x) for x in keys)
    et = element_type(dtype)
    lo_cols = {o.window_ns: f"__lo{i}" for i, o in enumerate(wanted)}
    lb_lo = "".join(f", __t - {frame_offset(tile_ns, w)} AS {a}" for w, a in lo_cols.items())
    sel = []
    for o in wanted:
        kept = f"list_reverse(list_filter(tr.__lv, lambda x, i: tr.__lt[i] >= l.{lo_cols[o.window_ns]}))[1:{o.n}]"
        sel.append(f"coalesce({kept}, CAST([] AS {et}[])) AS {ident(o.name)}")
    on = " AND ".join(f"l.{ident(x)} = tr.{ident(x)}" for x in keys)
    return (
        f"WITH lb AS (SELECT __row, {k}, __t, CAST(__t AS HUGEINT) * {TWO_64} + {TWO_64 - 1} AS __k{lb_lo} "
        f"FROM __lab WHERE __t IS NOT NULL), "
        f"ev AS (SELECT {k}, __t, CAST(__t AS HUGEINT) * {TWO_64} + __ord AS __k, CAST({ident(column)} AS {et}) AS __v "
        f"FROM ({events_sql}) e SEMI JOIN (SELECT DISTINCT {k} FROM lb) s USING ({k}) "
        f"WHERE {ident(column)} IS NOT NULL AND __t >= {lo_min} AND __t <= {t_max}), "
        f"tr AS (SELECT {k}, __k, list(__v) OVER w AS __lv, list(__t) OVER w AS __lt FROM ev "
        f"WINDOW w AS (PARTITION BY {k} ORDER BY __k ROWS BETWEEN {keep - 1} PRECEDING AND CURRENT ROW)) "
        f"SELECT l.__row, {', '.join(sel)} FROM lb l ASOF LEFT JOIN tr ON {on} AND l.__k >= tr.__k ORDER BY l.__row"
    )


def tiles_sql(*, view: WindowedFeatureView, events_sql: str, start_ns: int | None, end_ns: int | None) -> str:
    """Per (entity, tile) partial state of events with ``tile_start(start) <= ts <= end``, in no particular order.

    Every tile holds all its events except the one containing `end`, which holds
    those up to `end`: exactly what the online ring holds as of `end`.
    """
    tile = td_ns(view.tile)
    k = ", ".join(ident(x) for x in view.join_keys)
    sums, last = state_columns(view)
    where = []
    if start_ns is not None:
        where.append(f"__t >= {start_ns - (start_ns % tile)}")
    if end_ns is not None:
        where.append(f"__t <= {end_ns}")
    cols = [f"{ns_to_timestamptz('__tile')} AS {TILE_START}", f"count(*) AS {ident(TILE_COUNT)}"]
    for c in sums:
        cols.append(f"coalesce(sum(CAST({ident(c)} AS DOUBLE)), 0.0) AS {ident(c + SUM_SUFFIX)}")
        cols.append(f"count({ident(c)}) AS {ident(c + NONNULL_SUFFIX)}")
    for c, (keep, dtype) in last.items():
        et = element_type(dtype)
        flt = f"FILTER (WHERE {ident(c)} IS NOT NULL)"
        # arg_max(.., n) lists the n greatest order keys first; the online codec keeps them oldest first.
        cols.append(f"coalesce(list_reverse(arg_max(CAST({ident(c)} AS {et}), __k, {keep}) {flt}), CAST([] AS {et}[])) "
                    f"AS {ident(c + LAST_SUFFIX)}")
        cols.append(f"coalesce(list_reverse(arg_max(__ts, __k, {keep}) {flt}), CAST([] AS TIMESTAMPTZ[])) "
                    f"AS {ident(c + LAST_TS_SUFFIX)}")
    ts = f", {ns_to_timestamptz('__t')} AS __ts" if last else ""
    return (
        f"SELECT {k}, {', '.join(cols)} FROM (SELECT *, __t - {floor_mod('__t', tile)} AS __tile, "
        f"CAST(__t AS HUGEINT) * {TWO_64} + __ord AS __k{ts} FROM ({events_sql}) e"
        f"{' WHERE ' + ' AND '.join(where) if where else ''}) "
        f"GROUP BY {k}, __tile"
    )


def tile_start(ts: datetime, tile: timedelta) -> datetime:
    """The start of the epoch-aligned UTC tile holding `ts` (naive = UTC)."""
    t = dt_ns(ts)
    step = td_ns(tile)
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=(t - t % step) // 1000)


def combine_tiles(view: WindowedFeatureView, tiles: Iterable[Mapping[str, Any]], as_of: datetime,
                  names: Sequence[str] | None = None) -> dict[str, Any]:
    """Window values of ONE entity as of `as_of`, from its tile rows (as `OfflineStore.tiles(view, end=as_of)` returns them).

    The arithmetic the online read does: sum the tiles with
    ``tile_start(as_of) - window + tile <= tile_start <= tile_start(as_of)``
    (the current tile holds the events up to `as_of` only), in tile order.
    """
    tile = td_ns(view.tile)
    now = dt_ns(as_of)
    cur = now - now % tile
    rows = sorted(((dt_ns(r[TILE_START]), r) for r in tiles), key=lambda p: p[0])
    result: dict[str, Any] = {}
    for o in outputs(view).values():
        if names is not None and o.name not in names:
            continue
        inside = [r for start, r in rows if cur - o.window_ns + tile <= start <= cur]
        if o.function is AggregationFunction.COUNT:
            result[o.name] = sum(int(r[TILE_COUNT]) for r in inside)
        elif o.function is AggregationFunction.SUM:
            result[o.name] = float(sum(float(r[o.column + SUM_SUFFIX]) for r in inside))
        elif o.function is AggregationFunction.MEAN:
            n = sum(int(r[o.column + NONNULL_SUFFIX]) for r in inside)
            result[o.name] = sum(float(r[o.column + SUM_SUFFIX]) for r in inside) / n if n else None
        else:
            newest_first = [v for r in reversed(inside) for v in reversed(r[o.column + LAST_SUFFIX])]
            result[o.name] = newest_first[: o.n]
    return result
