"""Co-visitation similarity, computed offline with DuckDB and served from Redis (the item2item channel).

Offline (:func:`compute_covisit`, :class:`CovisitBuild`), over an event log with
``user_id, item_id, event_ts`` (and ``event_type`` when `event_types` filters):

1. Events before ``as_of`` are collapsed to one row per (user, item) -- its
   latest time -- and each user keeps the ``max_history`` most recent items
   (heavy users cost at most that; bounded work per user).
2. Each interaction is paired with the next ``max_gap`` interactions of the
   same user (by time, newest first) that lie within ``window_hours`` of it.
   A pair's weight is the user's weight (``1/log2(1 + n_u)`` with
   ``user_weighting``, n_u the user's kept items; else 1) times the time decay
   of its newer interaction, ``2^(-(as_of - t)/half_life)``.
3. ``c(i, j)`` sums the weights of the unordered pair over users; each item's
   ``n(i)`` sums the same weights over its interactions; the similarity is the
   popularity-normalised ``c(i, j) / (sqrt(n(i) n(j)) + shrink)`` (cosine-style).
4. Every item keeps its ``neighbors`` most similar items (ties: smaller id first).

The pairs are an equi-join of the history with itself on (user, rank + d),
d = 1..max_gap, so the work is ``events x max_gap`` rows whatever the users'
activity; aggregation and the top-K run under DuckDB's ``memory_limit`` and
spill to a temporary directory beyond it. The result streams out as Arrow
record batches (``item_id``, ``neighbors`` list<int64>, ``scores`` list<float>).

Online (:func:`publish_covisit`): one Redis string per item under a new
version, ``ns:i2i:<version>:<item>``, then the pointer ``ns:i2i:current`` is
switched to it (readers see either the old or the new table, never a mix:
the channel reads the pointer in the same MGET as the rows); versions beyond
``keep_versions`` are deleted. A row is packed as one format byte (1: int32
ids, 2: int64 ids) then the ids then the float32 scores (best first), so a
50-neighbour row is 401 bytes and decodes with two ``np.frombuffer``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from recall.redis_io import decode_str, is_cluster

FMT_I32 = 1
FMT_I64 = 2
_I32_MIN, _I32_MAX = -(2**31), 2**31 - 1
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_TOPK_BYTES_PER_ROW = 96  # measured order of magnitude of max_by(struct, struct, n) state per input row

EventsInput = str | Path | Sequence[str | Path] | pa.Table


# ----------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class CovisitSpec:
    """How co-visitation is computed (defaults: ``RecallConfig``; see the module docstring)."""

    neighbors: int = 50
    half_life_days: float | None = 7.0  # None: no time decay
    window_hours: float | None = 24.0 * 7  # None: any time apart
    max_gap: int = 10
    max_history: int = 200
    shrink: float = 0.0
    user_weighting: bool = True
    event_types: tuple[str, ...] | None = None  # None: every row of the log counts
    memory_limit_mb: int = 2048
    threads: int | None = None  # None: DuckDB's default (all cores)
    temp_dir: Path | None = None  # spill directory; None: a fresh temporary directory

    def __post_init__(self) -> None:
        if self.neighbors <= 0 or self.max_gap <= 0 or self.max_history <= 1:
            raise ValueError("neighbors and max_gap must be positive, max_history > 1")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ValueError("half_life_days must be positive (or None)")
        if self.window_hours is not None and not self.window_hours > 0:
            raise ValueError("window_hours must be positive (or None)")
        if self.shrink < 0:
            raise ValueError("shrink must be >= 0")

    @classmethod
    def from_config(cls, recall: Any, **overrides: Any) -> "CovisitSpec":
        spec = cls(
            neighbors=recall.covisit_neighbors,
            half_life_days=recall.covisit_half_life_days,
            window_hours=recall.covisit_window_hours,
            max_gap=recall.covisit_max_gap,
            max_history=recall.covisit_max_history,
            shrink=recall.covisit_shrink,
            user_weighting=recall.covisit_user_weighting,
            memory_limit_mb=recall.covisit_memory_limit_mb,
        )
        return replace(spec, **overrides) if overrides else spec


def to_ms(value: datetime | int | float | None) -> int | None:
    """Epoch milliseconds of a datetime (naive = UTC) or a number already in ms."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return int(round(value.timestamp() * 1000))
    return int(value)


# ----------------------------------------------------------------------------- offline build


@dataclass
class CovisitStats:
    events: int = 0  # (user, item) rows after de-duplication and the history cap
    users: int = 0
    pairs: int = 0  # distinct unordered item pairs
    items: int = 0  # items with at least one neighbour
    as_of_ms: int = 0
    buckets: int = 0  # item buckets of the top-K
    seconds: dict[str, float] = field(default_factory=dict)


class CovisitBuild:
    """One offline computation; iterate :meth:`batches` (streams from DuckDB), then :meth:`close`.

    Use as a context manager. Steps 1-3 run in the constructor (temporary
    tables inside DuckDB, spilled beyond the memory limit); the top-K runs
    while the batches are read.
    """

    def __init__(self, events: EventsInput, spec: CovisitSpec, as_of: datetime | int | None = None) -> None:
        self.spec = spec
        self.stats = CovisitStats()
        self._own_tmp = spec.temp_dir is None
        self._tmp = Path(tempfile.mkdtemp(prefix="covisit-")) if self._own_tmp else Path(spec.temp_dir)  # type: ignore[arg-type]
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(":memory:")
        try:
            self._configure()
            self._source(events)
            self._prepare(to_ms(as_of))
        except BaseException:
            self.close()
            raise

    # -- setup

    def _configure(self) -> None:
        con, spec = self.con, self.spec
        con.execute(f"SET memory_limit = '{int(spec.memory_limit_mb)}MB'")
        con.execute(f"SET temp_directory = '{self._tmp}'")
        con.execute("SET preserve_insertion_order = false")
        if spec.threads:
            con.execute(f"SET threads = {int(spec.threads)}")

    def _source(self, events: EventsInput) -> None:
        if isinstance(events, pa.Table):
            self._events_table = events  # keep a reference while DuckDB scans it
            self.con.register("covisit_events", events)
            self._src = "covisit_events"
        else:
            paths = [events] if isinstance(events, (str, Path)) else list(events)
            if not paths:
                raise ValueError("no event files")
            quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
            self._src = f"read_parquet([{quoted}])"

    def _prepare(self, as_of_ms: int | None) -> None:
        con, spec, src = self.con, self.spec, self._src
        t0 = time.perf_counter()
        where = []
        if spec.event_types is not None:
            types = ", ".join("'" + t.replace("'", "''") + "'" for t in spec.event_types)
            where.append(f"event_type IN ({types})")
        if as_of_ms is None:
            as_of_ms = con.execute(f"SELECT max(epoch_ms(event_ts)) + 1 FROM {src}"
                                   + (f" WHERE {' AND '.join(where)}" if where else "")).fetchall()[0][0]
            if as_of_ms is None:
                raise ValueError("the event log is empty")
        self.stats.as_of_ms = int(as_of_ms)
        where.append(f"epoch_ms(event_ts) < {int(as_of_ms)}")
        decay = "1.0" if spec.half_life_days is None else (
            f"exp(-(({int(as_of_ms)} - ts)::DOUBLE) * {math.log(2) / (spec.half_life_days * _DAY_MS)!r})")
        uweight = "1.0 / log2(1.0 + n_u)" if spec.user_weighting else "1.0"
        con.execute(f"""
            CREATE TEMP TABLE ev AS
            WITH dedup AS (
                SELECT user_id, item_id, max(epoch_ms(event_ts)) AS ts
                FROM {src} WHERE {' AND '.join(where)}
                GROUP BY user_id, item_id
            ), ranked AS (
                SELECT user_id, item_id, ts,
                       row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, item_id) AS rn
                FROM dedup
            ), kept AS (
                SELECT *, count(*) OVER (PARTITION BY user_id) AS n_u FROM ranked WHERE rn <= {int(spec.max_history)}
            )
            SELECT user_id, item_id, ts, rn::INTEGER AS rn, ({uweight}) * ({decay}) AS w FROM kept
        """)
        t1 = time.perf_counter()
        self.stats.events, self.stats.users = con.execute("SELECT count(*), count(DISTINCT user_id) FROM ev").fetchall()[0]
        con.execute("CREATE TEMP TABLE nrm AS SELECT item_id, sum(w) AS n FROM ev GROUP BY item_id")
        window = "" if spec.window_hours is None else f"AND a.ts - b.ts <= {int(spec.window_hours * _HOUR_MS)}"
        # b is d places older than a (rn counts from the newest); a's decay weights the pair.
        con.execute(f"""
            CREATE TEMP TABLE pc AS
            SELECT least(a.item_id, b.item_id) AS i, greatest(a.item_id, b.item_id) AS j, sum(a.w) AS c
            FROM ev a, range(1, {int(spec.max_gap) + 1}) g(d), ev b
            WHERE b.user_id = a.user_id AND b.rn = a.rn + g.d::INTEGER {window}
            GROUP BY 1, 2
        """)
        t2 = time.perf_counter()
        self.stats.pairs = con.execute("SELECT count(*) FROM pc").fetchall()[0][0]
        self.stats.seconds.update(history=round(t1 - t0, 3), pairs=round(t2 - t1, 3))

    # -- output

    def partitions(self) -> int:
        """Item buckets the top-K runs in, so each bucket's aggregate state fits in the memory limit.

        DuckDB spills joins and plain aggregates, not the top-K (``max_by(.., n)``)
        state, so the directed pairs (2 x distinct pairs) are cut by ``item % P``
        with about ``_TOPK_BYTES_PER_ROW`` per row against a quarter of the limit.
        """
        need = 2 * self.stats.pairs * _TOPK_BYTES_PER_ROW
        budget = self.spec.memory_limit_mb * 1024 * 1024 / 4
        return max(1, math.ceil(need / budget))

    def query(self, bucket: int = 0, buckets: int = 1) -> str:
        spec = self.spec
        pick_i = "" if buckets == 1 else f"WHERE pc.i % {buckets} = {bucket}"
        pick_j = "" if buckets == 1 else f"WHERE pc.j % {buckets} = {bucket}"
        score = f"(pc.c / (sqrt(ni.n * nj.n) + {float(spec.shrink)!r}))::FLOAT"
        joins = "FROM pc JOIN nrm ni ON ni.item_id = pc.i JOIN nrm nj ON nj.item_id = pc.j"
        return f"""
            WITH directed AS (
                SELECT pc.i AS item, pc.j AS nb, {score} AS s {joins} {pick_i}
                UNION ALL
                SELECT pc.j AS item, pc.i AS nb, {score} AS s {joins} {pick_j}
            ), top AS (
                SELECT item, max_by({{'nb': nb, 's': s}}, {{'s': s, 'tie': -nb}}, {int(spec.neighbors)}) AS top
                FROM directed GROUP BY item
            )
            SELECT item AS item_id,
                   list_transform(top, lambda x: x.nb)::BIGINT[] AS neighbors,
                   list_transform(top, lambda x: x.s)::FLOAT[] AS scores
            FROM top
        """

    def batches(self, rows_per_batch: int = 50_000) -> Iterator[pa.RecordBatch]:
        """The top-K rows as Arrow batches, computed while read, one item bucket at a time (bounded memory)."""
        t0 = time.perf_counter()
        n = 0
        buckets = self.partitions()
        for b in range(buckets):
            reader = self.con.sql(self.query(b, buckets)).to_arrow_reader(rows_per_batch)
            for batch in reader:
                n += batch.num_rows
                yield batch
        self.stats.items = n
        self.stats.buckets = buckets
        self.stats.seconds["top_k"] = round(time.perf_counter() - t0, 3)

    def table(self) -> pa.Table:
        """The whole result, sorted by item id (small logs, tests)."""
        batches = list(self.batches())
        schema = pa.schema([("item_id", pa.int64()), ("neighbors", pa.list_(pa.int64())), ("scores", pa.list_(pa.float32()))])
        table = pa.Table.from_batches(batches, schema=schema) if batches else schema.empty_table()
        return table.sort_by("item_id")

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            if self._own_tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "CovisitBuild":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def compute_covisit(events: EventsInput, spec: CovisitSpec | None = None, as_of: datetime | int | None = None) -> pa.Table:
    """The whole neighbour table in memory (``item_id``, ``neighbors``, ``scores``), sorted by item id."""
    with CovisitBuild(events, spec or CovisitSpec(), as_of) as build:
        return build.table()


def neighbor_dict(table: pa.Table) -> dict[int, list[tuple[int, float]]]:
    """``{item: [(neighbour, score), ...]}`` of a neighbour table (tests, offline evaluation)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for item, nbs, scs in zip(table["item_id"].to_pylist(), table["neighbors"].to_pylist(), table["scores"].to_pylist()):
        out[item] = list(zip(nbs, scs))
    return out


# ----------------------------------------------------------------------------- packing


def pack_row(neighbors: np.ndarray, scores: np.ndarray) -> bytes:
    ids = np.asarray(neighbors, dtype=np.int64)
    if ids.size == 0 or (ids.min() >= _I32_MIN and ids.max() <= _I32_MAX):
        return bytes((FMT_I32,)) + ids.astype("<i4").tobytes() + np.asarray(scores, dtype="<f4").tobytes()
    return bytes((FMT_I64,)) + ids.astype("<i8").tobytes() + np.asarray(scores, dtype="<f4").tobytes()


def unpack_row(value: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour ids int64, scores float32) of a packed row."""
    fmt = value[0]
    width = 4 if fmt == FMT_I32 else 8 if fmt == FMT_I64 else 0
    if not width:
        raise ValueError(f"unknown co-visitation row format {fmt}")
    n = (len(value) - 1) // (width + 4)
    ids = np.frombuffer(value, dtype="<i4" if width == 4 else "<i8", count=n, offset=1)
    scores = np.frombuffer(value, dtype="<f4", count=n, offset=1 + width * n)
    return ids.astype(np.int64), scores


def pack_batch(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, list[bytes]]:
    """(item ids, packed rows) of a batch of the neighbour table, vectorised per batch."""
    items = batch.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
    nb_col, sc_col = batch.column("neighbors"), batch.column("scores")
    if isinstance(nb_col, pa.ChunkedArray):
        nb_col, sc_col = nb_col.combine_chunks(), sc_col.combine_chunks()
    lengths = nb_col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = nb_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    scores = sc_col.flatten().to_numpy(zero_copy_only=False).astype("<f4")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    small = ids.size == 0 or (ids.min() >= _I32_MIN and ids.max() <= _I32_MAX)
    if not small:
        return items, [pack_row(ids[a:b], scores[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    id_buf, sc_buf = ids.astype("<i4").tobytes(), scores.tobytes()
    head = bytes((FMT_I32,))
    rows = [head + id_buf[4 * a:4 * b] + sc_buf[4 * a:4 * b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return items, rows


# ----------------------------------------------------------------------------- publishing


def key_prefix(namespace: str) -> str:
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"invalid key namespace {namespace!r}")
    return f"{namespace}:i2i"


def pointer_key(namespace: str) -> str:
    return f"{key_prefix(namespace)}:current"


def versions_key(namespace: str) -> str:
    return f"{key_prefix(namespace)}:versions"


def row_key(namespace: str, version: str, item: int) -> str:
    return f"{key_prefix(namespace)}:{version}:{item}"


def new_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class CovisitPublication:
    version: str
    items: int
    neighbors: int
    bytes: int
    seconds: float  # the whole call, including producing the batches (a streamed build computes while this runs)
    write_seconds: float = 0.0  # packing and writing to Redis only
    deleted_versions: list[str] = field(default_factory=list)


def publish_covisit(client: Any, namespace: str, batches: Iterator[pa.RecordBatch] | pa.Table, *,
                    version: str | None = None, keep_versions: int = 2, chunk: int = 2000) -> CovisitPublication:
    """Write the neighbour rows under a new version, switch the live pointer to it, drop old versions.

    `client` is a blocking redis-py client (Redis or RedisCluster). `version`
    defaults to a UTC timestamp plus a random suffix; pass the recall index's
    version to publish both under one name. Returns what was written.
    """
    if keep_versions < 1:
        raise ValueError("keep_versions must be >= 1")
    version = version or new_version()
    if version in ("current", "versions") or ":" in version:
        raise ValueError(f"invalid version {version!r}")
    t0 = time.perf_counter()
    prefix = f"{key_prefix(namespace)}:{version}:"
    cluster = is_cluster(client)
    items = neighbors = size = 0
    source = batches.to_batches() if isinstance(batches, pa.Table) else batches
    write_s = 0.0
    for batch in source:
        tw = time.perf_counter()
        ids, rows = pack_batch(batch)
        keys = [prefix + str(i) for i in ids.tolist()]
        if cluster:
            for a in range(0, len(keys), chunk):
                client.mset_nonatomic(dict(zip(keys[a:a + chunk], rows[a:a + chunk])))
        else:
            commands = []
            for a in range(0, len(keys), chunk):
                args: list[Any] = ["MSET"]
                for k, r in zip(keys[a:a + chunk], rows[a:a + chunk]):
                    args += (k, r)
                commands.append(args)
            send_packed(client, commands)
        items += len(rows)
        size += sum(map(len, rows))
        neighbors += int(pa.compute.sum(batch.column("neighbors").value_lengths()).as_py() or 0)
        write_s += time.perf_counter() - tw
    client.set(pointer_key(namespace), version)
    client.lpush(versions_key(namespace), version)
    deleted = gc_versions(client, namespace, keep_versions)
    return CovisitPublication(version, items, neighbors, size, round(time.perf_counter() - t0, 3), round(write_s, 3), deleted)


def send_packed(client: Any, commands: list[list[Any]]) -> list[Any]:
    """Commands packed by hiredis (C) and written on one pooled connection, replies read at the end.

    redis-py packs every argument in Python: for MSETs of thousands of rows
    that, not Redis, is the cost of publishing (the feature store's
    ``OnlineStore._send`` does the same). Falls back to a pipeline without hiredis.
    """
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - hiredis is a dependency
        pipe = client.pipeline(transaction=False)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return pipe.execute()
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        for cmd in commands:
            conn.send_packed_command([pack_command(tuple(cmd))])
        replies = [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)
    return replies


def gc_versions(client: Any, namespace: str, keep: int = 2) -> list[str]:
    """Delete the rows of every published version beyond the newest `keep` (never the live one)."""
    live = decode_str(client.get(pointer_key(namespace)))
    versions = [decode_str(v) for v in client.lrange(versions_key(namespace), 0, -1)]
    seen: list[str] = []
    for v in versions:
        if v not in seen:
            seen.append(v)  # type: ignore[arg-type]
    drop = [v for v in seen[keep:] if v != live]
    for v in drop:
        pattern = f"{key_prefix(namespace)}:{v}:*"
        batch: list[str] = []
        for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                _unlink(client, batch)
                batch = []
        if batch:
            _unlink(client, batch)
        client.lrem(versions_key(namespace), 0, v)
    return drop  # type: ignore[return-value]


def _unlink(client: Any, keys: list[Any]) -> None:
    if is_cluster(client):
        for k in keys:
            client.unlink(k)
    else:
        client.unlink(*keys)


def live_version(client: Any, namespace: str) -> str | None:
    return decode_str(client.get(pointer_key(namespace)))


def build_and_publish(client: Any, namespace: str, events: EventsInput, spec: CovisitSpec, *,
                      as_of: datetime | int | None = None, version: str | None = None,
                      keep_versions: int = 2) -> tuple[CovisitStats, CovisitPublication]:
    """Compute co-visitation from `events` and publish it, streaming (memory bounded by DuckDB's limit)."""
    with CovisitBuild(events, spec, as_of) as build:
        pub = publish_covisit(client, namespace, build.batches(), version=version, keep_versions=keep_versions)
        return build.stats, pub


__all__ = [
    "CovisitBuild",
    "CovisitPublication",
    "CovisitSpec",
    "CovisitStats",
    "build_and_publish",
    "compute_covisit",
    "gc_versions",
    "live_version",
    "neighbor_dict",
    "pack_batch",
    "pack_row",
    "pointer_key",
    "publish_covisit",
    "row_key",
    "to_ms",
    "unpack_row",
]
