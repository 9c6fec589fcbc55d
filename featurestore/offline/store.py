"""The offline store: point-in-time training sets, window aggregations, and what materialization reads.

One in-process DuckDB database over Parquet files (or SQL over them) under a
root directory. Every public call runs on its own cursor of that database, so
calls from several threads do not share query state; settings (threads,
memory limit, UTC time zone) are the database's.

Output of `get_training_set`: the label table, unchanged and in its order, one
output row per input row (duplicates stay duplicates, labels without any
feature row stay with NULLs), plus one column per requested feature named
``<view>__<feature>`` (`name_format`), typed as the definitions declare
(`featurestore.offline._sql.ARROW_TYPE`). See `pit` for the as-of rule and the
tie rule, `windows` for window aggregations, `request` for request features.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Union

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.definitions import (
    AggregationFunction,
    AnyView,
    BatchSource,
    FeatureSet,
    FeatureView,
    ParquetSource,
    RequestFeatureView,
    SqlSource,
    WindowedFeatureView,
    parse_ref,
)
from featurestore.offline import pit, request, windows
from featurestore.offline._sql import ARROW_TYPE, dt_ns, ident, literal, td_ns, ts_ns_expr

FeatureRequest = Union[AnyView, tuple[AnyView, Sequence[str]], str]
"""A view (all its features), (view, feature names), or a ``"view:feature"`` / ``"view:*"`` reference."""

ROW = "__row"
DEFAULT_NAME_FORMAT = "{view}__{feature}"


@dataclass(frozen=True)
class ResolvedSource:
    """A batch source as SQL: its columns plus ``__ord``, the source order (BIGINT, increasing)."""

    sql: str
    types: Mapping[str, str]  # column -> DuckDB type (without __ord)
    timestamp_field: str
    created_field: str | None

    def events_sql(self, keys: Sequence[str], columns: Sequence[str]) -> str:
        """Rows with non-null keys and timestamp: keys, ``__t`` (epoch ns), [``__c``], ``__ord`` and `columns`."""
        for name in [*keys, self.timestamp_field, *columns] + ([self.created_field] if self.created_field else []):
            if name not in self.types:
                raise ValueError(f"source has no column {name!r}; it has {sorted(self.types)}")
        t = ts_ns_expr(ident(self.timestamp_field), self.types[self.timestamp_field])
        sel = [ident(k) for k in keys] + [f"{t} AS __t"]
        if self.created_field:
            sel.append(f"{ts_ns_expr(ident(self.created_field), self.types[self.created_field])} AS __c")
        sel.append("__ord")
        sel += [ident(c) for c in dict.fromkeys(columns) if c not in keys]
        not_null = " AND ".join(f"{ident(c)} IS NOT NULL" for c in [*keys, self.timestamp_field])
        return f"SELECT {', '.join(sel)} FROM ({self.sql}) s WHERE {not_null}"


@dataclass
class _Request:
    view: AnyView
    features: list[str]


def _memory_bytes() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's limit, when lower
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            total = min(total, int(raw))
    except OSError:
        pass
    return total


class OfflineStore:
    """Point-in-time reads over the Parquet sources under `root` (see the module docstring).

    `threads`: DuckDB worker threads (default: all cores). `memory_limit`:
    DuckDB's limit, e.g. ``"8GB"`` (default: half the machine's memory, since
    the Arrow tables handed in and out live outside it); larger intermediates
    spill to `temp_directory` (default: a private directory under the system's
    temp dir, removed on `close`). `chunk_rows`: rows per RecordBatch of the
    streaming reads (`latest_rows`, `iter_tiles`).
    """

    def __init__(self, root: Path | str, threads: int | None = None, *, memory_limit: str | None = None,
                 temp_directory: Path | str | None = None, chunk_rows: int = 50_000) -> None:
        self.root = Path(root)
        self.threads = threads or os.cpu_count() or 1
        self.chunk_rows = chunk_rows
        self.memory_limit = memory_limit or f"{max(1, _memory_bytes() // 2 // 2**20)}MB"
        self._own_temp = temp_directory is None
        self.temp_directory = Path(temp_directory) if temp_directory else Path(tempfile.mkdtemp(prefix="cascade-duckdb-"))
        self._db = duckdb.connect(":memory:")
        self._db.execute(f"SET threads = {int(self.threads)}")
        self._db.execute(f"SET memory_limit = {literal(self.memory_limit)}")
        self._db.execute("SET preserve_insertion_order = true")
        self._db.execute(f"SET temp_directory = {literal(str(self.temp_directory))}")
        self._db.execute("SET GLOBAL TimeZone = 'UTC'")
        self._lock = threading.Lock()
        self._closed = False
        # The private spill directory goes away with the store even if `close` is never called.
        self._cleanup = (weakref.finalize(self, shutil.rmtree, str(self.temp_directory), True)
                         if self._own_temp else None)

    @classmethod
    def from_config(cls, config: Any = None, threads: int | None = None) -> OfflineStore:
        """The store at ``config.offline_root`` with the configured chunk size."""
        if config is None:
            from cascade.config import get_config

            config = get_config()
        return cls(config.offline_root, threads, chunk_rows=config.features.materialize_chunk_rows)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            if self._cleanup is not None:
                self._cleanup()

    def __enter__(self) -> OfflineStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._closed:
                raise RuntimeError("offline store is closed")
            cur = self._db.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        return cur

    # -------------------------------------------------------------- sources
    def _source_sql(self, source: BatchSource) -> str:
        if isinstance(source, ParquetSource):
            path = Path(source.path)
            path = path if path.is_absolute() else self.root / path
            return (f"SELECT *, (CAST(file_index AS BIGINT) << 40) + file_row_number AS __ord "
                    f"FROM read_parquet({literal(str(path))}, union_by_name = true)")
        if isinstance(source, SqlSource):
            query = source.query.replace("{root}", str(self.root))
            return f"SELECT *, row_number() OVER () AS __ord FROM ({query}) q"
        raise TypeError(f"not a batch source: {source!r}")

    def resolve(self, source: BatchSource, cur: duckdb.DuckDBPyConnection | None = None) -> ResolvedSource:
        """The source as SQL, with its column types (reads only Parquet footers / plans the query)."""
        sql = self._source_sql(source)
        own = cur is None
        cur = cur or self._cursor()
        try:
            rel = cur.sql(f"SELECT * FROM ({sql}) s LIMIT 0")
            types = {name: str(t) for name, t in zip(rel.columns, rel.types) if name != "__ord"}
        except duckdb.IOException as exc:
            raise FileNotFoundError(f"cannot read source {source!r}: {exc}") from exc
        finally:
            if own:
                cur.close()
        return ResolvedSource(sql, types, source.timestamp_field, source.created_timestamp_field)

    def relation(self, source: BatchSource) -> duckdb.DuckDBPyRelation:
        """The source's rows as a DuckDB relation (on the store's main connection), in source order."""
        return self._db.sql(f"SELECT * EXCLUDE (__ord) FROM ({self._source_sql(source)}) s")

    # --------------------------------------------------------- training set
    def get_training_set(
        self,
        labels: pa.Table | pa.RecordBatch | Path | str,
        features: FeatureSet | Sequence[FeatureRequest],
        views: Mapping[str, AnyView] | None = None,
        *,
        timestamp_field: str = "event_ts",
        name_format: str = DEFAULT_NAME_FORMAT,
        method: str = "asof",
    ) -> pa.Table:
        """The label rows, in input order, each with every requested feature as of its timestamp.

        `labels`: an Arrow table (or a Parquet path) holding the join keys of the
        requested views, `timestamp_field` (naive = UTC) and any other columns,
        which pass through. `features`: a `FeatureSet` (resolved with `views`,
        a name -> view mapping), or a sequence of views (all their features),
        (view, feature names) pairs and ``"view:feature"`` references. Output
        columns are named ``name_format.format(view=..., feature=...)``.
        `method`: ``"asof"`` or ``"row_number"`` for feature views (see `pit`).
        """
        table = _as_table(labels)
        requests = _resolve_requests(features, views)
        n = table.num_rows
        out_names: list[tuple[_Request, str, str]] = []  # (request, feature, output name)
        for req in requests:
            for f in req.features:
                out_names.append((req, f, name_format.format(view=req.view.name, feature=f)))
        clash = [o for _, _, o in out_names if o in table.column_names]
        dup = {o for _, _, o in out_names if sum(1 for _, _, x in out_names if x == o) > 1}
        if clash or dup:
            raise ValueError(f"output column names collide: {sorted(set(clash) | dup)}")

        stored = [r for r in requests if not isinstance(r.view, RequestFeatureView)]
        key_cols = list(dict.fromkeys(k for r in stored for k in r.view.join_keys))
        missing = [c for c in key_cols if c not in table.column_names]
        if stored and timestamp_field not in table.column_names:
            missing.append(timestamp_field)
        if missing:
            raise ValueError(f"labels lack columns {missing}; they have {table.column_names}")
        if ROW in table.column_names:
            raise ValueError(f"labels may not have a column named {ROW!r}")

        values: dict[str, pa.ChunkedArray | pa.Array] = {}
        if stored:
            lab = table.select(key_cols + [timestamp_field]).append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
            cur = self._cursor()
            try:
                cur.register("__labels", lab)
                ts_type = str(cur.sql(f"SELECT {ident(timestamp_field)} FROM __labels LIMIT 0").types[0])
                keys_sql = "".join(f", {ident(k)}" for k in key_cols)
                cur.execute(f"CREATE TEMP VIEW __lab AS SELECT {ROW}{keys_sql}, "
                            f"{ts_ns_expr(ident(timestamp_field), ts_type)} AS __t FROM __labels")
                t_min, t_max = cur.sql("SELECT min(__t), max(__t) FROM __lab").fetchall()[0]
                for req in stored:
                    names = {f: o for r, f, o in out_names if r is req}
                    if isinstance(req.view, FeatureView):
                        cols = self._pit(cur, req, names, n, t_min, t_max, method)
                    else:
                        cols = self._windows(cur, req, names, n, t_min, t_max)
                    values.update(cols)
            finally:
                cur.close()
        for req in requests:
            if isinstance(req.view, RequestFeatureView):
                arrays = request.compute(req.view, table, req.features)
                for f, arr in zip(req.features, arrays):
                    values[name_format.format(view=req.view.name, feature=f)] = arr
        for _, _, name in out_names:
            table = table.append_column(name, values[name])
        return table

    def _pit(self, cur: duckdb.DuckDBPyConnection, req: _Request, names: Mapping[str, str], n: int,
             t_min: int | None, t_max: int | None, method: str) -> dict[str, pa.ChunkedArray]:
        view: FeatureView = req.view  # type: ignore[assignment]
        dtypes = {f.name: f.dtype for f in view.features}
        types = {names[f]: ARROW_TYPE[dtypes[f]] for f in req.features}
        if t_min is None:  # no label has a timestamp
            return _nulls(types, n)
        src = self.resolve(view.source, cur)
        sql = pit.pit_sql(
            events_sql=src.events_sql(view.join_keys, req.features), keys=view.join_keys,
            features=[(f, dtypes[f], names[f]) for f in req.features], has_created=src.created_field is not None,
            ttl_ns=td_ns(view.ttl) if view.ttl is not None else None, t_min=t_min, t_max=t_max, method=method)
        return _align(cur.sql(sql).to_arrow_table(), n, types)

    def _windows(self, cur: duckdb.DuckDBPyConnection, req: _Request, names: Mapping[str, str], n: int,
                 t_min: int | None, t_max: int | None) -> dict[str, pa.ChunkedArray]:
        view: WindowedFeatureView = req.view  # type: ignore[assignment]
        outs = windows.outputs(view)
        wanted = [outs[f] for f in req.features]
        types = {names[o.name]: ARROW_TYPE[o.dtype] for o in wanted}
        if t_min is None:
            return _nulls(types, n)
        keys = view.join_keys
        src = self.resolve(view.source, cur)
        result: dict[str, pa.ChunkedArray] = {}

        def run(sql: str, group: list[windows.WindowOutput]) -> None:
            table = cur.sql(sql).to_arrow_table()
            table = table.rename_columns([ROW] + [names[o.name] for o in group])
            result.update(_align(table, n, {names[o.name]: types[names[o.name]] for o in group}))

        def lo_min(group: list[windows.WindowOutput]) -> int:
            return min(windows.lo_ns(t_min, o.hop_ns, o.window_ns) for o in group)

        plain = [o for o in wanted if o.function is not AggregationFunction.LAST_N]
        if plain:
            cols = [o.column for o in plain if o.column and o.function is not AggregationFunction.COUNT]
            run(windows.aggregates_sql(events_sql=src.events_sql(keys, cols), keys=keys, wanted=plain,
                                       lo_min=lo_min(plain), t_max=t_max), plain)
        _, last = windows.state_columns(view)
        for column in dict.fromkeys(o.column for o in wanted if o.function is AggregationFunction.LAST_N):
            group = [o for o in wanted if o.function is AggregationFunction.LAST_N and o.column == column]
            keep, dtype = last[column]
            run(windows.last_n_sql(events_sql=src.events_sql(keys, [column]), keys=keys, column=column,
                                   keep=max(o.n for o in group), dtype=dtype, wanted=group,
                                   lo_min=lo_min(group), t_max=t_max), group)
        return result

    # ------------------------------------------------------- materialization
    def latest_rows(self, view: FeatureView, as_of: datetime | None = None, since: datetime | None = None,
                    *, chunk_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """The latest row per entity with ``since < event_ts <= as_of`` (either bound optional), streamed.

        Columns: the join keys, ``event_ts`` (timestamp[us, UTC]) and the view's
        features in their declared types. Ties on the timestamp follow the
        training-set rule (`pit`). Batches of at most `chunk_rows` rows come
        from DuckDB's Arrow stream, so Python holds one batch at a time.
        """
        if not isinstance(view, FeatureView):
            raise TypeError(f"latest_rows reads FeatureViews; {view.name!r} is {type(view).__name__}")
        if "event_ts" in view.feature_names:
            raise ValueError(f"{view.name}: a feature named 'event_ts' would clash with the row timestamp")
        cur = self._cursor()
        try:
            src = self.resolve(view.source, cur)
            dtypes = [(f.name, f.dtype, f.name) for f in view.features]
            sql = pit.latest_sql(events_sql=src.events_sql(view.join_keys, view.feature_names), keys=view.join_keys,
                                 features=dtypes, has_created=src.created_field is not None,
                                 as_of_ns=dt_ns(as_of) if as_of is not None else None,
                                 since_ns=dt_ns(since) if since is not None else None)
            yield from _stream(cur.sql(sql), chunk_rows or self.chunk_rows)
        finally:
            cur.close()

    def iter_tiles(self, view: WindowedFeatureView, start: datetime | None = None, end: datetime | None = None,
                   *, ring: bool = False, chunk_rows: int | None = None) -> Iterator[pa.RecordBatch]:
        """`tiles` as a stream of RecordBatches of at most `chunk_rows` rows."""
        if not isinstance(view, WindowedFeatureView):
            raise TypeError(f"tiles are kept for WindowedFeatureViews; {view.name!r} is {type(view).__name__}")
        cur = self._cursor()
        try:
            for batch in _stream(cur.sql(self._tiles_sql(cur, view, start, end, ring)), chunk_rows or self.chunk_rows):
                yield _hop_as_duration(batch)
        finally:
            cur.close()

    def _tiles_sql(self, cur: duckdb.DuckDBPyConnection, view: WindowedFeatureView, start: datetime | None,
                   end: datetime | None, ring: bool) -> str:
        src = self.resolve(view.source, cur)
        sums, last = windows.state_columns(view)
        return windows.tiles_sql(view=view, events_sql=src.events_sql(view.join_keys, [*sums, *last]),
                                 start_ns=dt_ns(start) if start is not None else None,
                                 end_ns=dt_ns(end) if end is not None else None, ring=ring)

    def tiles(self, view: WindowedFeatureView, start: datetime | None = None, end: datetime | None = None,
              *, ring: bool = False) -> pa.Table:
        """The state the online store keeps for a windowed view, from the events with ``ts <= end``.

        Per hop of the view's COUNT/SUM/MEAN windows (`WindowedFeatureView.hop_windows`), one row per
        (entity, tile): the join keys, ``hop`` (duration[us]), ``tile_start`` (timestamp[us, UTC],
        epoch-aligned to the hop, from the tile holding `start` on), ``count`` (events), for each
        SUM/MEAN column ``<col>_sum`` (float64, 0.0 when no value) and ``<col>_count`` (non-null
        values). The tile holding `end` only has the events up to `end`. When the view has LAST_N
        aggregations, also one row per entity with ``hop``, ``tile_start`` and the numbers NULL and,
        per LAST_N column, ``<col>_last_n`` (the largest n of its aggregations most recent non-null
        values with ``start <= ts``, most recent LAST) and ``<col>_last_n_ts`` (their times); those
        columns are NULL on tile rows. `ring=True`: exactly what the online store keeps as of `end`
        (per hop its ring's ``longest window / hop + 1`` newest tiles; last-n values within the
        longest last-n window of `end`); `start` is then ignored. Ordered by keys, then hop (the
        last-n row first), then tile.
        """
        batches = list(self.iter_tiles(view, start, end, ring=ring))
        if batches:
            return pa.Table.from_batches(batches)
        cur = self._cursor()  # no rows: still the right schema
        try:
            sql = self._tiles_sql(cur, view, None, end if ring else None, ring)
            return _hop_as_duration(cur.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table())
        finally:
            cur.close()


# ------------------------------------------------------------------ helpers
def _as_table(labels: pa.Table | pa.RecordBatch | Path | str) -> pa.Table:
    if isinstance(labels, pa.Table):
        return labels
    if isinstance(labels, pa.RecordBatch):
        return pa.Table.from_batches([labels])
    if isinstance(labels, (str, Path)):
        return pq.read_table(labels)
    raise TypeError(f"labels must be a pyarrow Table or a Parquet path, not {type(labels).__name__}")


def _resolve_requests(features: FeatureSet | Sequence[FeatureRequest], views: Mapping[str, AnyView] | None) -> list[_Request]:
    """Requests grouped by view (first appearance order), features in the order asked, each once."""
    items: list[Any] = list(features.features) if isinstance(features, FeatureSet) else list(features)
    by_view: dict[str, _Request] = {}

    def lookup(name: str) -> AnyView:
        if views is None or name not in views:
            raise KeyError(f"feature view {name!r} is not known (pass it in `views`)")
        return views[name]

    def add(view: AnyView, names: Sequence[str] | None) -> None:
        known = list(view.feature_names)
        req = by_view.get(view.name)
        if req is None:
            req = by_view[view.name] = _Request(view, [])
        elif req.view is not view and req.view != view:
            raise ValueError(f"two different views are named {view.name!r}")
        for f in known if names is None else names:
            if f not in known:
                raise KeyError(f"view {view.name!r} has no feature {f!r}; it has {known}")
            if f not in req.features:
                req.features.append(f)

    for item in items:
        if isinstance(item, str):
            vname, feat = parse_ref(item)
            add(lookup(vname), None if feat == "*" else [feat])
        elif isinstance(item, tuple):
            view, names = item
            add(view, [names] if isinstance(names, str) else list(names))
        elif isinstance(item, (FeatureView, WindowedFeatureView, RequestFeatureView)):
            add(item, None)
        else:
            raise TypeError(f"cannot request features from {item!r}")
    return list(by_view.values())


def _nulls(types: Mapping[str, pa.DataType], n: int) -> dict[str, pa.ChunkedArray]:
    return {name: pa.chunked_array([pa.nulls(n, type=t)]) for name, t in types.items()}


def _align(result: pa.Table, n: int, types: Mapping[str, pa.DataType]) -> dict[str, pa.ChunkedArray]:
    """Columns of a (__row, ...) result ordered by __row, spread over all n label rows (missing rows: NULL)."""
    if result.num_rows != n:  # some label rows were not part of the query (e.g. a NULL timestamp)
        index = np.full(n, -1, dtype=np.int64)
        index[result.column(ROW).to_numpy()] = np.arange(result.num_rows, dtype=np.int64)
        result = result.take(pa.array(index, mask=index < 0))
    out = {}
    for name, t in types.items():
        col = result.column(name)
        out[name] = col if col.type == t else col.cast(t)
    return out


def _hop_as_duration(batch: pa.RecordBatch | pa.Table) -> Any:
    """The tiles' ``hop`` column (BIGINT microseconds in SQL) as duration[us]."""
    i = batch.schema.get_field_index(windows.HOP)
    if i < 0 or pa.types.is_duration(batch.schema.field(i).type):
        return batch
    return batch.set_column(i, windows.HOP, batch.column(i).cast(pa.duration("us")))


def _stream(rel: duckdb.DuckDBPyRelation, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    reader = rel.to_arrow_reader(chunk_rows)
    for batch in reader:
        if batch.num_rows:
            yield batch
