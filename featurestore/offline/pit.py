"""Point-in-time joins of label rows with a `FeatureView`'s source, as DuckDB SQL.

For a label row with keys K at time t, a feature's value is that of the
*latest* source row with the same K and ``feature_ts <= t`` (a row at exactly
t is used; a row at t + 1 ns never is), and, when the view has a TTL,
``feature_ts > t - ttl`` (else NULL). A label with no such row keeps NULLs:
it is never dropped.

Ties on the feature timestamp are broken deterministically by the source's
*order key* (`order_key`): the greatest ``created_timestamp_field`` wins when
the source has one (rows with a NULL created time lose to rows with one), and
then the row that comes last in source order: for a `ParquetSource`, files in
lexicographic path order (as DuckDB expands the glob), rows in file order; for
a `SqlSource`, the order the query returns its rows in.

Two implementations, both kept so each checks the other in the tests:

* ``asof`` (default): DuckDB's ``ASOF LEFT JOIN ... ON keys AND l.k >= f.k``,
  where k is the order key itself (timestamp, then the tie-breakers), so the
  single inequality already picks the right row among ties; the TTL is then a
  filter on the one matched row (if the latest row is too old, every earlier
  one is too). Feature rows are first cut to the entities some label asks for
  (hash semi-join) and to the labels' time span. A sort-merge: O((L + F) log)
  whatever the history looks like.
* ``row_number`` (Feast's design, `infra/offline_stores/ibis.py`, but keeping
  every label): inner join on keys and the time range, ``row_number()`` per
  label ordered by the order key descending, then a LEFT JOIN back to the
  labels. Its join materialises every (label, earlier feature row) pair, so
  its cost grows with history length, and without a TTL the range is unbounded.

Why ASOF (measured here, 2 cores, 1M labels; bench/pit_join.py): with ~1-3
candidate rows per label the two are close (5M-row user view, 30 d TTL: asof
0.9-1.2 s, row_number 1.0-1.2 s; a sparse user x category view: 0.5 vs
0.3 s), but on long histories row_number blows up (5M rows over 10k users, no
TTL: asof 1.1 s, row_number 21 s) while ASOF stays flat, so ASOF is the one
with no bad case. Feast's file store: 4.0 s for 1M labels x 1 view. Several
views run as one ASOF query each, the columns put side by side by label row:
10M labels x 5 views (16.4M feature rows) in 24-31 s, 5 GB peak; one chained
5-way ASOF query took 54 s and 14 GB. The HUGEINT order key costs ~10% over
a plain timestamp key, the price of deterministic ties.
"""

from __future__ import annotations

from collections.abc import Sequence

from featurestore.definitions import ValueType
from featurestore.offline._sql import DUCK_TYPE, MAX_BIGINT, MIN_BIGINT, TWO_64, ident

METHODS = ("asof", "row_number")


def order_key(has_created: bool, t: str = "__t", c: str = "__c", o: str = "__ord") -> str:
    """SQL of a source row's order key: timestamp, then created timestamp, then source order.

    Without a created timestamp it is one HUGEINT ``t * 2^64 + ord`` (ord is in
    [0, 2^63)), which sorts faster than a STRUCT; with one it is the STRUCT
    ``{t, c, o}`` (compared field by field).
    """
    if has_created:
        return f"struct_pack(t := {t}, c := coalesce({c}, CAST({MIN_BIGINT} AS BIGINT)), o := {o})"
    return f"(CAST({t} AS HUGEINT) * {TWO_64} + {o})"


def label_order_key(has_created: bool, t: str = "__t") -> str:
    """The greatest order key a source row at time `t` can have: the ASOF probe of a label at `t`."""
    if has_created:
        return f"struct_pack(t := {t}, c := CAST({MAX_BIGINT} AS BIGINT), o := CAST({MAX_BIGINT} AS BIGINT))"
    return f"(CAST({t} AS HUGEINT) * {TWO_64} + {TWO_64 - 1})"


def pit_sql(*, events_sql: str, keys: Sequence[str], features: Sequence[tuple[str, ValueType, str]],
            has_created: bool, ttl_ns: int | None, t_min: int, t_max: int, method: str = "asof") -> str:
    """One view's point-in-time join: rows (__row, <output columns>) for every label row, ordered by __row.

    `events_sql` selects the source's keys (named as `keys`), ``__t`` (epoch ns),
    ``__c`` (created, epoch ns) when `has_created`, ``__ord`` and the feature
    columns. The labels are the temp view ``__lab`` (``__row``, the same key
    columns, ``__t``). `features`:
    (source column, declared type, output name).
    """
    if method not in METHODS:
        raise ValueError(f"unknown point-in-time method {method!r}; use one of {METHODS}")
    # Rows that can never be picked: newer than every label, or older than every label's TTL horizon.
    prune = f"__t <= {t_max}" + (f" AND __t > {t_min - ttl_ns}" if ttl_ns is not None else "")
    fcols = ", ".join(ident(c) for c in dict.fromkeys(c for c, _, _ in features))
    k = ", ".join(ident(x) for x in keys)
    # Only entities some label asks for (a hash semi-join: cheap next to sorting rows nobody reads).
    f_sel = (f"SELECT {k}, __t, {order_key(has_created)} AS __k{', ' + fcols if fcols else ''} FROM ({events_sql}) e "
             f"SEMI JOIN (SELECT DISTINCT {k} FROM __lab) s USING ({k}) WHERE {prune}")
    l_sel = (f"SELECT __row, {', '.join(ident(k) for k in keys)}, __t, "
             f"{label_order_key(has_created)} AS __k FROM __lab")
    on = " AND ".join(f"l.{ident(k)} = f.{ident(k)}" for k in keys)

    def value(src: str, col: str, dtype: ValueType) -> str:
        expr = f"CAST({src}.{ident(col)} AS {DUCK_TYPE[dtype]})"
        if ttl_ns is None or method == "row_number":  # row_number applies the TTL in its join
            return expr
        return f"CASE WHEN f.__t > l.__t - {ttl_ns} THEN {expr} END"

    if method == "asof":
        cols = ", ".join(f"{value('f', c, d)} AS {ident(out)}" for c, d, out in features)
        return (f"SELECT l.__row{', ' + cols if cols else ''} FROM ({l_sel}) l "
                f"ASOF LEFT JOIN ({f_sel}) f ON {on} AND l.__k >= f.__k ORDER BY l.__row")
    ttl_cond = f" AND f.__t > l.__t - {ttl_ns}" if ttl_ns is not None else ""
    picked = ", ".join(f"f.{ident(c)}" for c in dict.fromkeys(c for c, _, _ in features))
    cols = ", ".join(f"{value('m', c, d)} AS {ident(out)}" for c, d, out in features)
    return (f"WITH l AS ({l_sel}), f AS ({f_sel}), "
            f"m AS (SELECT l.__row{', ' + picked if picked else ''} FROM l JOIN f ON {on} AND f.__t <= l.__t{ttl_cond} "
            f"QUALIFY row_number() OVER (PARTITION BY l.__row ORDER BY f.__k DESC) = 1) "
            f"SELECT l.__row{', ' + cols if cols else ''} FROM l LEFT JOIN m ON l.__row = m.__row ORDER BY l.__row")


def latest_sql(*, events_sql: str, keys: Sequence[str], features: Sequence[tuple[str, ValueType, str]],
               has_created: bool, as_of_ns: int | None, since_ns: int | None) -> str:
    """The latest row per entity with ``since < ts <= as_of`` (same tie rule as the joins).

    Columns: the keys, ``event_ts`` (TIMESTAMPTZ, UTC, microseconds) and the
    features cast to their declared types.
    """
    from featurestore.offline._sql import ns_to_timestamptz

    where = []
    if as_of_ns is not None:
        where.append(f"__t <= {as_of_ns}")
    if since_ns is not None:
        where.append(f"__t > {since_ns}")
    cols = "".join(f", CAST({ident(c)} AS {DUCK_TYPE[d]}) AS {ident(out)}" for c, d, out in features)
    return (f"SELECT {', '.join(ident(k) for k in keys)}, {ns_to_timestamptz('__t')} AS event_ts{cols} "
            f"FROM ({events_sql}) e {'WHERE ' + ' AND '.join(where) if where else ''} "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(ident(k) for k in keys)} "
            f"ORDER BY {order_key(has_created)} DESC) = 1")
