"""Materialization: offline store -> online store, incremental, idempotent, in bounded chunks.

For each online view:

* the start is the view's watermark, kept in Redis next to the data
  (``{project}:_wm:{view}:{version}``; an explicit `start` overrides it). The
  state file, when given, mirrors the watermarks and the last run's counts for
  people and tools; Redis is the truth, so a flushed server is re-filled from
  the beginning even if the file says otherwise;
* a `FeatureView` streams `offline_store.latest_rows(view, as_of=end, since=start)`,
  a `WindowedFeatureView` streams `offline_store.iter_tiles(view, start, end)`
  (or takes `tiles(view, start, end)`, a stream or one table) from the
  tile of `start` (a partly written tile is rewritten whole) but never before
  the oldest tile its ring keeps at `end`;
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
"""

from __future__ import annotations

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

import pyarrow as pa
from tqdm import tqdm

from featurestore.definitions import FeatureView, WindowedFeatureView
from featurestore.online.codec import from_micros, td_micros, to_micros
from featurestore.online.layout import view_version
from featurestore.online.store import OnlineStore


class OfflineSource(Protocol):
    """What materialization needs from the offline store."""

    def latest_rows(self, view: FeatureView, as_of: datetime, since: datetime | None) -> Iterable[pa.RecordBatch]: ...

    def tiles(self, view: WindowedFeatureView, start: datetime | None, end: datetime) -> Iterable[pa.RecordBatch]: ...


@dataclass
class ViewReport:
    view: str
    kind: str  # "rows" | "tiles"
    version: str
    start: datetime | None
    end: datetime
    rows_read: int = 0
    rows_written: int = 0
    chunks: int = 0
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
            d["rows_skipped"] = v.rows_skipped
            return d

        return {"rows_read": self.rows_read, "rows_written": self.rows_written, "seconds": self.seconds,
                "views": [plain(v) for v in self.views]}


def rechunk(batches: Iterable[pa.RecordBatch | pa.Table], rows: int) -> Iterator[pa.Table]:
    """Re-cut a stream of batches into tables of exactly `rows` rows (the last may be shorter); zero-copy slices."""
    if rows <= 0:
        raise ValueError("chunk rows must be positive")
    if isinstance(batches, (pa.Table, pa.RecordBatch)):  # one table rather than a stream of them
        batches = [batches]
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
    if windowed:
        tile_us = td_micros(view.tile)
        end_tile = to_micros(end) // tile_us * tile_us
        oldest = end_tile - td_micros(view.ttl)  # the ring's oldest tile as of `end`
        first = oldest if since is None else max(oldest, to_micros(since) // tile_us * tile_us)
        vr.start = from_micros(first)
        stream = getattr(offline_store, "iter_tiles", None)  # OfflineStore streams tiles; `tiles` is one Table
        source: Iterable[Any] = stream(view, vr.start, end) if stream else offline_store.tiles(view, vr.start, end)
    else:
        source = offline_store.latest_rows(view, as_of=end, since=since)

    bar = tqdm(desc=f"materialize {view.name}", unit="rows", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, leave=False)
    in_flight: Future[int] | None = None
    try:
        for chunk in rechunk(source, chunk_rows):
            if windowed:
                job = (online.write_tiles, view, chunk)
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
