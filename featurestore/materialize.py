"""Materialization: offline store -> online store, incremental, idempotent, in bounded chunks.

For each online view:

* the start is the view's watermark, kept in Redis next to the data
  (``{project}:_wm:{view}:{version}``; an explicit `start` overrides it). The
  state file, when given, mirrors the watermarks and the last run's counts for
  people and tools; Redis is the truth, so a flushed server is re-filled from
  the beginning even if the file says otherwise;
* a `FeatureView` streams `offline_store.latest_rows(view, as_of=end, since=start)`;
* a `WindowedFeatureView` streams `offline_store.iter_tiles(view, end=cut - 1us, ring=True)`
  (or takes `tiles(...)`, a stream or one table): per entity the whole state
  its online rings and lists keep as of the cut, written whole per entity
  (`OnlineStore.write_tiles`), so `start` does not apply to it (the rings are
  bounded by the longest window, and rewriting them whole is what makes a
  re-run exact). The cut and who owns which tiles: see "Batch and stream" below;
* batches are re-cut into chunks of `config.features.materialize_chunk_rows`
  rows, so memory stays flat however long the range: at most one chunk is being
  written (a worker thread, overlapping the server's work with reading and
  encoding the next chunk) while the next is prepared;
* writes skip rows older than the stored ones (tiles: slots holding a newer
  tile), and rows identical to the stored ones, so running twice writes the
  same values and the second run reports 0 rows written;
* the watermark moves to `end` only after every chunk of the view is written.
  A crash leaves it where it was; the rerun repeats the range, and the rows
  already written are skipped. There is no half state to repair.

Batch and stream (windowed views)
---------------------------------
Both paths write the same per-entity state, so each event must be counted by
exactly one of them, and neither may erase the other's. The rule:

* **batch_through** (per view, and per entity in its state hash): every event
  before it is the batch's. Materializing as of `end` sets it to the cut,
  ``end + 1us`` when no stream runs. The streaming updater skips events with
  ``ts < batch_through`` and counts them as ``covered_by_batch`` (it may be
  replaying a topic the batch already read); both checks sit inside the same
  atomic script as the update, so a materialization racing the stream never
  double counts.
* **stream_from** (per view, and per entity): the oldest event time the stream
  has applied. Tiles starting at or after ``floor(stream_from, coarsest hop)``
  are the stream's: it added events into them, and a batch write would erase
  those increments (or, for the tile holding the cut, count the overlap twice).
  So an incremental materialization is clamped: the cut is
  ``min(end + 1us, floor(stream_from, coarsest hop))``, the batch state is
  computed as of the cut, and only slots of tiles ending at or before it are
  written (per entity the script clamps again to the entity's own
  stream_from, for a stream that starts while the batch is running). The
  coarsest hop of the view is a multiple of all its hops (the default ladder
  5m | 1h | 6h | 1d), so the cut is a tile boundary in every ring. A cut at
  or before the current batch_through writes nothing.

Both orders give the offline values: materialize then stream (the stream skips
what the batch wrote and adds the rest, also into the tile holding the cut),
and stream then materialize (the batch fills the tiles before the stream's
start, the stream keeps its own) -- provided the stream saw every event from
``floor(stream_from, coarsest hop)`` on (its topic reaches back that far).
Events missing from the offline source when it is materialized (it lags the
stream) are not the batch's to fix: materialize up to where the source is
complete.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from featurestore.definitions import FeatureView, WindowedFeatureView
from featurestore.online.codec import from_micros, td_micros, to_micros
from featurestore.online.layout import view_version
from featurestore.online.store import OnlineStore


class OfflineSource(Protocol):
    """What materialization needs from the offline store."""

    def latest_rows(self, view: FeatureView, as_of: datetime, since: datetime | None) -> Iterable[pa.RecordBatch]: ...

    def tiles(self, view: WindowedFeatureView, start: datetime | None, end: datetime, *,
              ring: bool = False) -> Iterable[pa.RecordBatch]: ...


@dataclass
class ViewReport:
    view: str
    kind: str  # "rows" | "tiles"
    version: str
    start: datetime | None
    end: datetime
    rows_read: int = 0
    rows_written: int = 0  # rows (FeatureView), or entities whose window state changed (WindowedFeatureView)
    chunks: int = 0
    through: datetime | None = None  # windowed: the batch-through after this run (the clamped cut)
    seconds: float = 0.0
    up_to_date: bool = False

    @property
    def rows_skipped(self) -> int:
        return self.rows_read - self.rows_written


@dataclass
class MaterializeReport:
    views: list[ViewReport] = field(default_factory=list)

    @property
    def rows_read(self) -> int:
        return sum(v.rows_read for v in self.views)

    @property
    def rows_written(self) -> int:
        return sum(v.rows_written for v in self.views)

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.views)

    def view(self, name: str) -> ViewReport:
        for v in self.views:
            if v.view == name:
                return v
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: ViewReport) -> dict[str, Any]:
            d = asdict(v)
            d["start"] = v.start.isoformat() if v.start else None
            d["end"] = v.end.isoformat()
            d["through"] = v.through.isoformat() if v.through else None
            d["rows_skipped"] = v.rows_skipped
            return d

        return {"rows_read": self.rows_read, "rows_written": self.rows_written, "seconds": self.seconds,
                "views": [plain(v) for v in self.views]}


def rechunk(batches: Iterable[pa.RecordBatch | pa.Table], rows: int, keys: Sequence[str] = ()) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly `rows` rows (the last may be shorter); zero-copy slices.

    With `keys` (the rows come ordered by them), a table ends only where the key changes: the rows of
    one entity are never split (a table may then hold more than `rows` rows).
    """
    if rows <= 0:
        raise ValueError("chunk rows must be positive")
    if isinstance(batches, (pa.Table, pa.RecordBatch)):  # one table rather than a stream of them
        batches = [batches]
    if keys:
        yield from _rechunk_by_key(batches, rows, list(keys))
        return
    pending: list[pa.RecordBatch] = []
    count = 0
    for item in batches:
        parts = item.to_batches() if isinstance(item, pa.Table) else [item]
        for rb in parts:
            while rb.num_rows:
                take = min(rows - count, rb.num_rows)
                pending.append(rb.slice(0, take))
                count += take
                rb = rb.slice(take)
                if count == rows:
                    yield pa.Table.from_batches(pending)
                    pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)


def _trailing_run(table: pa.Table, keys: list[str]) -> int:
    """Index where the run of rows sharing the last row's key starts."""
    same = None
    for k in keys:
        col = table.column(k)
        eq = pc.fill_null(pc.equal(col, col[table.num_rows - 1]), False)
        same = eq if same is None else pc.and_(same, eq)
    flags = same.to_numpy(zero_copy_only=False)
    differ = np.flatnonzero(~flags)
    return int(differ[-1]) + 1 if len(differ) else 0


def _rechunk_by_key(batches: Iterable[pa.RecordBatch | pa.Table], rows: int, keys: list[str]) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for item in batches:
        for rb in item.to_batches() if isinstance(item, pa.Table) else [item]:
            if not rb.num_rows:
                continue
            pending.append(rb)
            count += rb.num_rows
            if count < rows:
                continue
            table = pa.Table.from_batches(pending)
            cut = _trailing_run(table, keys)
            if cut == 0:  # one entity so far: keep collecting
                continue
            yield table.slice(0, cut)
            rest = table.slice(cut)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def materialize(offline_store: OfflineSource, online_store: OnlineStore,
                views: Sequence[FeatureView | WindowedFeatureView], start: datetime | None, end: datetime,
                state_path: str | os.PathLike[str] | None = None, *, chunk_rows: int | None = None,
                progress: bool = True) -> MaterializeReport:
    """Copy each online view's latest rows (or tiles) as of `end` into the online store.

    `start` None: from each view's watermark (the whole history the first time).
    `chunk_rows` defaults to `config.features.materialize_chunk_rows`. Returns
    per-view counts; raises whatever the offline or online store raises, leaving
    the watermark of the failing view untouched.
    """
    if chunk_rows is None:
        from cascade.config import get_config

        chunk_rows = get_config().features.materialize_chunk_rows
    end = _utc(end)
    start = _utc(start)
    path = Path(state_path) if state_path is not None else None
    state = _read_state(path) if path else {}
    report = MaterializeReport()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="materialize") as writer:
        for view in views:
            if not getattr(view, "online", False) or not isinstance(view, (FeatureView, WindowedFeatureView)):
                continue
            vr = _materialize_view(offline_store, online_store, view, start, end, chunk_rows, progress, writer)
            report.views.append(vr)
            if path:
                state.setdefault("project", online_store.project)
                state.setdefault("views", {})[view.name] = {
                    "version": vr.version,
                    "watermark": end.isoformat(),
                    "last_run": {"start": vr.start.isoformat() if vr.start else None, "end": end.isoformat(),
                                 "rows_read": vr.rows_read, "rows_written": vr.rows_written, "chunks": vr.chunks,
                                 "seconds": round(vr.seconds, 3),
                                 "at": datetime.now(timezone.utc).isoformat()},
                }
                _write_state(path, state)
    return report


def _materialize_view(offline_store: OfflineSource, online: OnlineStore, view: FeatureView | WindowedFeatureView,
                      start: datetime | None, end: datetime, chunk_rows: int, progress: bool,
                      writer: ThreadPoolExecutor) -> ViewReport:
    t0 = time.perf_counter()
    windowed = isinstance(view, WindowedFeatureView)
    watermark = online.get_watermark(view)
    since = start if start is not None else watermark
    vr = ViewReport(view.name, "tiles" if windowed else "rows", view_version(view), since, end)
    if start is None and watermark is not None and watermark >= end:
        vr.up_to_date = True
        vr.seconds = time.perf_counter() - t0
        return vr
    cut_us: int | None = None
    if windowed:
        # The cut: every event before it is written by this run (see "Batch and stream" above).
        coarsest = max(td_micros(h) for h in view.hops)
        through_old = online.get_batch_through(view)
        stream_from = online.get_stream_from(view)
        cut_us = to_micros(end) + 1
        if stream_from is not None:
            cut_us = min(cut_us, stream_from - stream_from % coarsest)
        vr.start = None
        if through_old is not None and cut_us < through_old:  # the stream owns everything after the batch
            vr.through = from_micros(through_old)
            online.set_watermark(view, end)
            vr.seconds = time.perf_counter() - t0
            return vr
        as_of = from_micros(cut_us - 1)
        stream = getattr(offline_store, "iter_tiles", None)  # OfflineStore streams tiles; `tiles` is one Table
        source: Iterable[Any] = (stream(view, end=as_of, ring=True) if stream
                                 else offline_store.tiles(view, None, as_of, ring=True))
    else:
        source = offline_store.latest_rows(view, as_of=end, since=since)

    bar = tqdm(desc=f"materialize {view.name}", unit="rows", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, leave=False)
    in_flight: Future[int] | None = None
    try:
        for chunk in rechunk(source, chunk_rows, view.join_keys if windowed else ()):
            if windowed:
                job = (functools.partial(online.write_tiles, through=cut_us), view, chunk)
            else:
                keys, values = online.encode_rows(view, chunk)  # encode here, write on the worker: they overlap
                job = (online.write_packed, keys, values)
            if in_flight is not None:
                vr.rows_written += in_flight.result()
            in_flight = writer.submit(*job)
            vr.rows_read += chunk.num_rows
            vr.chunks += 1
            bar.update(chunk.num_rows)
        if in_flight is not None:
            vr.rows_written += in_flight.result()
            in_flight = None
    finally:
        if in_flight is not None:  # an error while preparing the next chunk: let the write finish, then raise
            try:
                in_flight.result()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        bar.close()
    if windowed:
        # A stream that started meanwhile owns what it applied: the view's batch-through must not pass it
        # (the entities it touched were clamped by the write script itself).
        stream_from = online.get_stream_from(view)
        through = cut_us if stream_from is None else min(cut_us, stream_from - stream_from % coarsest)
        old = online.get_batch_through(view)
        through = max(through, old) if old is not None else through
        online.set_batch_through(view, through)
        vr.through = from_micros(through)
    online.set_watermark(view, end)
    vr.seconds = time.perf_counter() - t0
    return vr


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    ts = datetime.fromisoformat(text)
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``cascade features materialize``: copy online views from the offline store into Redis.

    Exit codes: 0 done; 1 a definition, source or server error (watermarks of
    unfinished views untouched); 2 bad usage or no Redis configured.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="cascade features materialize",
                                     description="Copy the latest rows / window tiles of online views into Redis, "
                                                 "incrementally from each view's watermark.")
    parser.add_argument("views", nargs="*", metavar="VIEW", help="views to materialize (default: every online view)")
    parser.add_argument("--end", default=None, help="as-of time, ISO-8601, naive = UTC (default: now)")
    parser.add_argument("--start", default=None, help="re-read from this time instead of the watermarks")
    parser.add_argument("--state", type=Path, default=None, help="state file (default: <paths.var_dir>/materialize.json)")
    parser.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config)")
    parser.add_argument("--offline-root", type=Path, default=None, help="offline store root (default: config)")
    parser.add_argument("--redis-url", default=None, help="Redis to write to (default: REDIS_URL / config redis.url)")
    parser.add_argument("--project", default=None, help="online key namespace (default: config features.project)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk (default: config)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        end = _parse_time(args.end) or datetime.now(timezone.utc)
        start = _parse_time(args.start)
    except SystemExit as exc:
        return int(exc.code or 0)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from cascade.config import get_config
    from featurestore.offline import OfflineStore
    from featurestore.repository import DefinitionError, UnknownDefinition, get_repo, load_repo
    from stack.clients import redis_client

    config = get_config()
    url = args.redis_url or config.redis.url
    if not url:
        print("error: no Redis to write to: pass --redis-url or set REDIS_URL (e.g. the one `cascade stack` prints)",
              file=sys.stderr)
        return 2
    try:
        repo = load_repo(args.definitions) if args.definitions else get_repo()
        if args.views:
            views = [repo.view(name) for name in args.views]
            bad = [v.name for v in views if not isinstance(v, (FeatureView, WindowedFeatureView))]
            if bad:
                raise ValueError(f"not stored online (request views are computed at serving time): {bad}")
        else:
            views = [v for v in repo.views.values() if isinstance(v, (FeatureView, WindowedFeatureView)) and v.online]
        client = redis_client(url, config.redis)
        try:
            store = OnlineStore(client, args.project or config.features.project, config.features.online_batch_keys)
            with OfflineStore(args.offline_root or config.offline_root) as offline:
                report = materialize(offline, store, views, start, end,
                                     args.state or config.paths.var_dir / "materialize.json",
                                     chunk_rows=args.chunk_rows or config.features.materialize_chunk_rows,
                                     progress=not args.no_progress)
        finally:
            client.close()
    except (DefinitionError, UnknownDefinition, FileNotFoundError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - redis / duckdb errors: one line, not a traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for v in report.views:
            what = "up to date" if v.up_to_date else (
                f"{v.rows_read:,} {v.kind} read, {v.rows_written:,} written, {v.rows_skipped:,} unchanged, "
                f"{v.chunks} chunks, {v.seconds:.2f}s")
            print(f"{v.view} (version {v.version}): {what}; watermark {end.isoformat()}")
    return 0
