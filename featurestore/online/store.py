"""The online store: batched typed reads, idempotent pipelined writes, window tiles.

See `featurestore.online` for the layout measurements behind the design.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import redis

try:
    from hiredis import Reader as _Reader
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency; keep working without it
    _pack_command = _Reader = None

from featurestore.definitions import (
    AggregationFunction,
    Feature,
    FeatureSet,
    FeatureView,
    ValueType,
    WindowedFeatureView,
    parse_ref,
)
from featurestore.online import scripts
from featurestore.online.codec import (
    RowCodec,
    TileCodec,
    column,
    from_micros,
    td_micros,
    timestamps_us,
    to_micros,
)
from featurestore.online.layout import (
    EntityKeys,
    arrow_entity_keys,
    arrow_window_entity_bases,
    batch_through_key,
    key_prefix,
    stream_from_key,
    view_version,
    watermark_key,
    window_entity_bases,
    window_prefix,
)
from featurestore.online.replies import ProtocolError as _ProtocolError
from featurestore.online.replies import ReplyStream

OnlineView = FeatureView | WindowedFeatureView
_log = logging.getLogger("cascade.featurestore.online")
_RECV_BYTES = 1 << 19  # socket read size of the lean read path (a 1,000-item ring read is ~2.7 MB)

_SEND_GROUP = 4  # commands packed and sent together by OnlineStore._send
SCRIPT_ROWS = 1000  # rows per SET_IF_NEWER call (Lua's unpack() limit is ~8,000 values)
TILE_SCRIPT_ARGS = 3000  # ARGV values per PUT_STATE call
EVENTS_PER_CALL = 100  # events per ADD_EVENTS call: short calls (Lua's collector walks a call's live arguments)
_NAT = np.iinfo(np.int64).min


_EMPTY_WINDOW: dict[AggregationFunction, Any] = {
    AggregationFunction.COUNT: 0,
    AggregationFunction.SUM: 0.0,
    AggregationFunction.MEAN: None,
    AggregationFunction.LAST_N: [],
}


class FeatureStatus(enum.IntEnum):
    """Per-value status, as Feast's (plus DEFAULTED)."""

    INVALID = 0
    PRESENT = 1  # the stored value
    NULL_VALUE = 2  # a NULL was stored (served as None / NaN, never the default)
    NOT_FOUND = 3  # no row for the entity: the feature's default is served
    OUTSIDE_MAX_AGE = 4  # the row is older than the view's ttl: the default is served
    DEFAULTED = 5  # windowed view: the entity has state but no event in this window: the empty-window value


_STATUS_NAMES = {s.value: s for s in FeatureStatus}


def _lean_capable(client: Any) -> bool:
    """Whether reads may parse replies off the socket themselves: redis-py's own socket connections, hiredis
    installed, no client-side cache (its invalidations are RESP3 pushes on the same connections). RESP2 or
    RESP3 (redis-py 8's default): a push message met anyway sends the read back through redis-py."""
    if _Reader is None:
        return False
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(pool, "cache", None) is not None:
        return False
    if pool.connection_kwargs.get("protocol") not in (None, 2, 3, "2", "3"):
        return False
    cls = getattr(pool, "connection_class", None)
    return isinstance(cls, type) and issubclass(cls, redis.connection.AbstractConnection)


@dataclass
class _ViewInfo:
    view: OnlineView
    prefix: str
    windowed: bool
    codec: RowCodec | None
    tiles: TileCodec | None
    features: tuple[Feature, ...]
    index: dict[str, int]
    ttl_us: int | None


@dataclass(frozen=True)
class _ViewRead:
    info: _ViewInfo
    positions: tuple[int, ...]  # feature positions within the view
    offset: int  # first output column
    parts: tuple[tuple[str, int], ...] = ()  # windowed: the ("rings", 0) / ("list", j) values read


@dataclass(frozen=True, eq=False)
class ReadPlan:
    """Resolved (view, features) pairs: build once with `OnlineStore.plan`, pass to `read` per request."""

    reads: tuple[_ViewRead, ...]
    refs: tuple[str, ...]  # output columns, "view:feature"
    features: tuple[Feature, ...]

    @functools.cached_property
    def index(self) -> tuple[dict[str, int], dict[str, int]]:
        """({"view:feature": column}, {"feature": column, or -1 when ambiguous})."""
        bare: dict[str, int] = {}
        for i, r in enumerate(self.refs):
            name = r.partition(":")[2]
            bare[name] = -1 if name in bare else i
        return {r: i for i, r in enumerate(self.refs)}, bare


class OnlineResult:
    """Features of many entities: columns plus a status per value (rows = entities, in request order).

    `column(name)` gives a numpy array for FLOAT64 (NaN where None), INT64 (0 where
    None), BOOL (False where None) and FLOAT_LIST with a `dim` (2-D, NaN rows where
    None); a list for STRING, STRING_LIST and variable-length lists (numpy arrays).
    `valid(name)` tells where the value is not None. `to_rows()` gives plain Python.
    Rows of the same entity (a user beside 1,000 items), and rows that stored an equal list, share their
    list values (decoded once): treat them as read-only.
    """

    def __init__(self, entity_keys: Sequence[Any], refs: Sequence[str], features: Sequence[Feature],
                 columns: list[Any], status: np.ndarray, event_ts: dict[str, np.ndarray],
                 index: tuple[dict[str, int], dict[str, int]] | None = None) -> None:
        self.entity_keys = entity_keys
        self.refs = tuple(refs)
        self.features = tuple(features)
        self.status = status
        self.event_ts = event_ts  # view name -> datetime64[us] (NaT where no row)
        self._columns = columns
        if index is None:
            index = ReadPlan((), self.refs, self.features).index
        self._pos, self._bare = index

    def __len__(self) -> int:
        return len(self.entity_keys)

    def _index(self, name: str) -> int:
        if name in self._pos:
            return self._pos[name]
        i = self._bare.get(name)
        if i is None:
            raise KeyError(f"no feature {name!r} in this result; have {list(self.refs)}")
        if i < 0:
            raise KeyError(f"feature name {name!r} is ambiguous; use 'view:feature'")
        return i

    def column(self, name: str) -> Any:
        """Values of one feature ('view:feature', or the bare name when unambiguous)."""
        return self._columns[self._index(name)]

    def statuses(self, name: str) -> np.ndarray:
        return self.status[:, self._index(name)]

    def valid(self, name: str) -> np.ndarray:
        """True where the served value is not None."""
        i = self._index(name)
        st = self.status[:, i]
        if self.features[i].default is None:
            return st == FeatureStatus.PRESENT
        return st != FeatureStatus.NULL_VALUE

    def values(self, name: str) -> list[Any]:
        """One feature as plain Python values (None for nulls)."""
        i = self._index(name)
        f, col, st = self.features[i], self._columns[i], self.status[:, i]
        out = col.tolist() if isinstance(col, np.ndarray) else [v.tolist() if isinstance(v, np.ndarray) else v for v in col]
        none = ~self.valid(name)
        if none.any():
            for r in np.flatnonzero(none).tolist():
                out[r] = None
        if isinstance(f.default, list):
            defaulted = (st != FeatureStatus.PRESENT) & (st != FeatureStatus.NULL_VALUE)
            for r in np.flatnonzero(defaulted).tolist():
                out[r] = list(f.default)
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per entity: {"view:feature": value}."""
        rows: list[dict[str, Any]] = [{} for _ in range(len(self))]
        for ref in self.refs:
            for row, v in zip(rows, self.values(ref)):
                row[ref] = v
        return rows

    def to_dict(self) -> dict[str, list[Any]]:
        return {ref: self.values(ref) for ref in self.refs}

    def status_names(self) -> list[dict[str, str]]:
        return [{ref: _STATUS_NAMES[int(s)].name for ref, s in zip(self.refs, row)} for row in self.status.tolist()]


def _default_column(f: Feature, n: int) -> Any:
    d = f.default
    if f.dtype is ValueType.FLOAT64:
        return np.full(n, np.nan if d is None else float(d))
    if f.dtype is ValueType.INT64:
        return np.full(n, 0 if d is None else int(d), dtype=np.int64)
    if f.dtype is ValueType.BOOL:
        return np.full(n, bool(d) if d is not None else False)
    if f.dtype is ValueType.FLOAT_LIST and f.dim is not None:
        out = np.empty((n, f.dim))
        out[:] = np.nan if d is None else np.asarray(d, dtype=np.float64)
        return out
    return [d] * n


def _null_fill(f: Feature) -> Any:
    if f.dtype is ValueType.FLOAT64:
        return np.nan
    if f.dtype is ValueType.INT64:
        return 0
    if f.dtype is ValueType.BOOL:
        return False
    if f.dtype is ValueType.FLOAT_LIST and f.dim is not None:
        return np.nan
    return None


def _default_fill(f: Feature) -> Any:
    if f.default is None:
        return _null_fill(f)
    if f.dtype is ValueType.FLOAT_LIST and f.dim is not None:
        return np.asarray(f.default, dtype=np.float64)
    return f.default


def _joined(parts: list[Any]) -> Any:
    """The replies of one key list's MGET chunks as one: rows arrays stacked, else one list of bytes / None."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    out: list[Any] = []
    for p in parts:  # some chunk had a missing key: the list form (rare: only when chunks differ)
        out.extend(np.frombuffer(p.tobytes(), dtype=f"V{p.shape[1]}").tolist() if isinstance(p, np.ndarray) else p)
    return out


class OnlineStore:
    """Typed feature rows and window tiles in Redis (single server or cluster), per project.

    Definitions are resolved once per view object (codec, key prefix, version) and
    cached; a request does key building, one pipelined round trip, and bulk numpy
    decoding.
    """

    def __init__(self, client: redis.Redis | redis.RedisCluster, project: str, batch_keys: int = 2000, *,
                 lean_reads: bool = True, fixed_rows: bool = True, pipeline_keys: int = 0) -> None:
        self.client = client
        self.project = project
        self.batch_keys = batch_keys
        self.cluster = isinstance(client, redis.RedisCluster)
        if client.get_encoder().decode_responses:
            raise ValueError("the online store needs a client with decode_responses=False (rows are binary)")
        self._lean = bool(lean_reads) and not self.cluster and _lean_capable(client)
        # lean reads of fixed-size rows take them in place off the receive buffer (`featurestore.online.replies`);
        # off: every reply through hiredis (a same-run comparison for bench online_features)
        self._fixed_rows = self._lean and bool(fixed_rows)
        # lean reads: MGETs of at most this many keys, each sent as soon as it is packed (0: off; see `_read_packed`)
        self._pipeline_keys = max(0, int(pipeline_keys)) if self._lean else 0
        self._local = threading.local()  # per thread: the lean path's receive buffer
        self._infos: dict[int, _ViewInfo] = {}
        self._plans: dict[Any, ReadPlan] = {}
        self._sha: dict[str, str] = {}

    @classmethod
    def from_config(cls, client: redis.Redis | redis.RedisCluster, config: Any) -> "OnlineStore":
        f = config.features
        return cls(client, f.project, f.online_batch_keys, lean_reads=f.online_lean_reads,
                   pipeline_keys=f.online_pipeline_keys)

    # ------------------------------------------------------------- definitions
    def info(self, view: OnlineView) -> _ViewInfo:
        hit = self._infos.get(id(view))
        if hit is not None and hit.view is view:
            return hit
        if isinstance(view, WindowedFeatureView):
            tiles = TileCodec(view)
            # Served for an entity with no events in the window (or none at all): what the offline
            # definition gives then (featurestore.offline.windows): count 0, sum 0.0, mean NULL, last-n [].
            feats = tuple(Feature(f.name, f.dtype, default=_EMPTY_WINDOW[o.function], description=f.description)
                          for f, o in zip(view.features, tiles.outputs))
            info = _ViewInfo(view, window_prefix(self.project, view), True, None, tiles, feats,
                             {f.name: i for i, f in enumerate(feats)}, None)
        elif isinstance(view, FeatureView):
            codec = RowCodec(view.features)
            info = _ViewInfo(view, key_prefix(self.project, view), False, codec, None, view.features, codec.index,
                             td_micros(view.ttl) if view.ttl is not None else None)
        else:
            raise TypeError(f"{type(view).__name__} {getattr(view, 'name', view)!r} has no online storage")
        self._infos[id(view)] = info
        return info

    def plan(self, views_and_features: Any) -> ReadPlan:
        """Resolve what to read: a view (all its features), (view, [names]), {view: [names]|None}, a list of those."""
        if isinstance(views_and_features, ReadPlan):
            return views_and_features
        try:
            hit = self._plans.get(views_and_features)
        except TypeError:
            hit = None
        if hit is not None:
            return hit
        items: list[tuple[OnlineView, Sequence[str] | None]] = []
        if isinstance(views_and_features, (FeatureView, WindowedFeatureView)):
            items.append((views_and_features, None))
        elif isinstance(views_and_features, Mapping):
            items.extend(views_and_features.items())
        elif isinstance(views_and_features, tuple) and len(views_and_features) == 2 and isinstance(
                views_and_features[0], (FeatureView, WindowedFeatureView)) and not isinstance(
                views_and_features[1], (FeatureView, WindowedFeatureView)):
            items.append(views_and_features)
        else:
            for item in views_and_features:
                items.append((item, None) if isinstance(item, (FeatureView, WindowedFeatureView)) else tuple(item))
        reads, refs, feats = [], [], []
        for view, names in items:
            info = self.info(view)
            names = list(names) if names is not None else [f.name for f in info.features]
            try:
                positions = tuple(info.index[n] for n in names)
            except KeyError as exc:
                raise KeyError(f"view {view.name!r} has no feature {exc.args[0]!r}") from None
            parts: tuple[tuple[str, int], ...] = ()
            if info.windowed:
                outs = [info.tiles.outputs[p] for p in positions]
                numeric = any(o.function is not AggregationFunction.LAST_N for o in outs)
                lists = sorted({o.part for o in outs if o.function is AggregationFunction.LAST_N})
                parts = tuple(([("rings", 0)] if numeric else []) + [("list", j) for j in lists])
            reads.append(_ViewRead(info, positions, len(refs), parts))
            refs.extend(f"{view.name}:{n}" for n in names)
            feats.extend(info.features[p] for p in positions)
        plan = ReadPlan(tuple(reads), tuple(refs), tuple(feats))
        try:
            if len(self._plans) < 256:
                self._plans[views_and_features] = plan
        except TypeError:
            pass
        return plan

    def plan_feature_set(self, feature_set: FeatureSet, views: Mapping[str, OnlineView]) -> ReadPlan:
        """A plan for a FeatureSet's "view:feature" / "view:*" references."""
        wanted: dict[str, list[str] | None] = {}
        for ref in feature_set.features:
            vname, fname = parse_ref(ref)
            if vname not in views:
                raise KeyError(f"feature set {feature_set.name!r}: unknown view {vname!r}")
            if fname == "*":
                wanted[vname] = None
            elif wanted.get(vname, []) is not None:
                wanted.setdefault(vname, []).append(fname)
        return self.plan([(views[v], names) for v, names in wanted.items()])

    # ------------------------------------------------------------------- read
    def read(self, views_and_features: Any, entity_keys: Sequence[Any] | Mapping[str, Sequence[Any]],
             now: datetime | None = None) -> OnlineResult:
        """Features of many entities in one pipelined round trip (MGET per view, chunked).

        `entity_keys`: scalars or tuples (composite keys), the same entities for
        every view; or {join_key: values} columns, from which each view takes its
        own join keys. `now` (default: the current time) decides TTL expiry and
        which tiles fall inside a window.
        """
        plan = self.plan(views_and_features)
        now_us = to_micros(now) if now is not None else to_micros(datetime.now(timezone.utc))
        if isinstance(entity_keys, Mapping):
            n = len(next(iter(entity_keys.values()))) if entity_keys else 0
        else:
            n = len(entity_keys)
        # Each distinct entity of a view is fetched and decoded once, then its row is repeated: ranking reads
        # one user's rows beside 1,000 items (decoding that user's rings 1,000 times cost ~3 ms).
        key_lists: list[EntityKeys] = []
        sizes: list[int | None] = []  # per key list: the size of every stored value when all have one (fixed rows)
        views: list[tuple[_ViewRead, np.ndarray | None, int]] = []
        for r in plan.reads:
            values = self._entity_values(r.info, entity_keys)
            keys, inverse = EntityKeys(r.info.prefix, values, len(r.info.view.join_keys), tagged=r.info.windowed).unique()
            if r.info.windowed:
                tc = r.info.tiles
                for kind, i in r.parts:
                    key_lists.append(keys.with_tail(tc.numeric_suffix if kind == "rings" else tc.lists[i].suffix))
                    sizes.append(None)
            else:
                key_lists.append(keys)
                sizes.append(r.info.codec.fixed_size if self._fixed_rows and not r.info.codec.varlen else None)
            views.append((r, inverse, len(keys)))
        raws = self._mget_many(key_lists, sizes)  # each view decoded as soon as its replies are in
        try:
            status, columns, event_ts = self._decode_views(views, raws, n, len(plan.refs), now_us)
        finally:
            raws.close()  # a decode error leaves replies unread: the connection is dropped, not reused
        keys_out = entity_keys if not isinstance(entity_keys, Mapping) else list(zip(*entity_keys.values()))
        return OnlineResult(keys_out, plan.refs, plan.features, columns, status, event_ts, plan.index)

    def _decode_views(self, views: list[tuple[_ViewRead, np.ndarray | None, int]], raws: Iterator[list[bytes | None]],
                      n: int, width: int, now_us: int) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        status = np.full((n, width), FeatureStatus.NOT_FOUND, dtype=np.uint8)
        columns: list[Any] = [None] * width
        event_ts: dict[str, np.ndarray] = {}
        for r, inverse, m in views:
            k = len(r.positions)
            if inverse is None:
                into = (status, columns, event_ts, r.offset)
            else:
                into = (np.full((m, k), FeatureStatus.NOT_FOUND, dtype=np.uint8), [None] * k, {}, 0)
            if r.info.windowed:
                self._fill_windowed(r, m, {part: next(raws) for part in r.parts}, now_us, *into)
            else:
                self._fill_rows(r, next(raws), now_us, *into)
            if inverse is not None:  # repeat each distinct entity's values in its rows
                status[:, r.offset: r.offset + k] = into[0][inverse]
                rows = None
                for j, col in enumerate(into[1]):
                    if not isinstance(col, np.ndarray):
                        rows = inverse.tolist() if rows is None else rows
                        col = list(map(col.__getitem__, rows))
                    else:
                        col = col[inverse]
                    columns[r.offset + j] = col
                for name, ts in into[2].items():
                    event_ts[name] = ts[inverse]
        return status, columns, event_ts

    @staticmethod
    def _entity_values(info: _ViewInfo, entities: Any) -> Any:
        """The view's entity values: as given, or zipped from its join-key columns of a {join_key: values} mapping."""
        if not isinstance(entities, Mapping):
            return entities
        join_keys = info.view.join_keys
        try:
            cols = [entities[k] for k in join_keys]
        except KeyError as exc:
            raise KeyError(f"view {info.view.name!r} needs join key {exc.args[0]!r}") from None
        return cols[0] if len(cols) == 1 else list(zip(*cols))

    def _mget_many(self, keys_per_view: list[EntityKeys] | list[list[str]],
                   sizes: list[int | None] | None = None) -> Iterator[list[bytes | None] | np.ndarray]:
        """Each key list's values, in order, each yielded as soon as its replies are in (the caller decodes one
        view while Redis still answers the next).

        `sizes`: per key list, the one size every stored value has (a view of fixed-size rows), or None. On the
        lean path, a key list with a size whose every key has a value comes back as one (keys, size) uint8 array
        (`ReplyStream.fixed_rows`), a view of the receive buffer when it was one reply: valid only until the next
        item is asked for. Otherwise, and on every other path, as a list of bytes / None.
        """
        if self.cluster:
            yield from self._mget_cluster(keys_per_view)
            return
        step = min(self.batch_keys, self._pipeline_keys) if self._pipeline_keys else self.batch_keys
        shapes: list[tuple[int, int] | None] | None = None
        if _pack_command is None:  # no hiredis: redis-py's pipeline
            chunks = [(v, list(keys[i: i + step])) for v, keys in enumerate(keys_per_view) for i in range(0, len(keys), step)]
            results: Iterable[Any] = self._send([("MGET", *ck) for _, ck in chunks]) if chunks else []
            owners = [v for v, _ in chunks]
        else:
            views = [keys if isinstance(keys, EntityKeys) else EntityKeys("", keys) for keys in keys_per_view]
            owners = [v for v, keys in enumerate(views) for _ in range(keys.mget_count(step))]
            commands = (cmd for keys in views for cmd in keys.mget_commands(step, _pack_command, fast=self._lean))
            if self._lean and sizes is not None and any(size is not None for size in sizes):
                shapes = [None if sizes[v] is None else (min(step, len(keys) - i), sizes[v])
                          for v, keys in enumerate(views) for i in range(0, len(keys), step)]
            # pipelined: packed as they are sent; else all packed, then sent in one write
            payloads: Iterable[bytes] = commands if self._pipeline_keys else list(commands)
            results = self._read_packed(payloads, shapes, len(owners)) if owners else []
        current: list[Any] = []  # the replies of the key list being answered
        done = 0  # key lists answered so far
        for k, (v, res) in enumerate(zip(owners, results)):
            if isinstance(res, Exception):
                raise res
            while done < v:  # key lists without keys (no command) come back empty
                yield []
                done += 1
            if isinstance(res, np.ndarray) and (current or k + 1 < len(owners) and owners[k + 1] == v):
                res = np.array(res)  # rows of one of several chunks: copied before the next reply is read
            current.append(res)
            if k + 1 == len(owners) or owners[k + 1] != v:
                # A key list's rows in one reply are yielded as the view of the receive buffer they are: valid
                # until the next item is asked for (the caller decodes each view before asking for the next).
                yield current[0] if len(current) == 1 else _joined(current)
                current = []
                done += 1
        while done < len(keys_per_view):
            yield []
            done += 1

    def _read_packed(self, payloads: Iterable[bytes], shapes: list[tuple[int, int] | None] | None = None,
                     count: int | None = None) -> Iterator[Any]:
        """Replies (errors as values) of `count` packed read commands (default: all of a list), sent on one pooled
        connection, each yielded as soon as it is parsed. A list is sent in one write; any other iterable one
        write per command as it comes (pipelined: the server works on the first MGETs while the next ones are
        packed).

        The lean path: the replies are parsed straight from the connection's socket (no redis-py response
        layers; see `featurestore.online`, "Reads"): a command with a (count, size) in `shapes` whose reply is
        `count` values of `size` bytes each yields a (count, size) uint8 view of the receive buffer, valid until
        the next reply is asked for (`replies.ReplyStream.fixed_rows`); any other reply is parsed by a
        `hiredis.Reader`, as hiredis gives it. Any
        connection trouble there (reset, timeout, a protocol error) disconnects that connection and
        the read is redone through redis-py's own connection API (`_exchange`, one retry on a fresh
        connection), whose errors are the usual redis-py ones; replies already yielded are not yielded
        again. Reads only: they are safe to repeat. A caller that stops early leaves replies unread:
        closing the generator disconnects that connection.
        """
        pool = self.client.connection_pool
        sent: list[bytes] = payloads if isinstance(payloads, list) else []  # what went out (redone on trouble)
        pending = iter(()) if isinstance(payloads, list) else iter(payloads)
        if count is None:
            count = len(sent)
        done = 0
        if self._lean:
            conn = pool.get_connection()
            released = False
            try:
                if sent:
                    conn.send_packed_command(sent, check_health=False)
                for cmd in pending:
                    sent.append(cmd)
                    conn.send_packed_command([cmd], check_health=False)
                stream = ReplyStream(conn._sock, self._recv_buffer())
                try:
                    for k in range(count):
                        shape = shapes[k] if shapes is not None else None
                        reply = stream.fixed_rows(*shape) if shape is not None else None
                        if reply is None:
                            reply = stream.reply()
                        done += 1
                        if done == count:  # every reply read: the connection goes back before the last one is used
                            released = True
                            pool.release(conn)
                        yield reply
                finally:
                    self._local.buf = stream.buf  # kept for the next read, grown or not
                return
            except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, _ProtocolError) as exc:
                _log.warning("online read: lean path failed (%s: %s); retrying through redis-py", type(exc).__name__, exc)
            finally:
                if not released:
                    conn.disconnect()  # replies are left unread: never reuse this connection
                    pool.release(conn)

        sent.extend(pending)

        def write(conn: Any) -> None:
            conn.send_packed_command(sent)

        yield from self._exchange(write, count, retry=True)[done:]

    def _recv_buffer(self) -> bytearray:
        """This thread's receive buffer (one per thread: a read's fixed rows are views of it until copied)."""
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = bytearray(_RECV_BYTES)
        return buf

    def _send(self, commands: list[tuple[Any, ...]], retry: bool = True) -> list[Any]:
        """Single server: all commands in one write on one pooled connection, then their replies (errors as values).

        This is a pipeline without redis-py's per-argument Python packing (hiredis
        packs in C), which is most of the client's cost for 1,000-key MGETs and
        1,000-row script calls. With `retry` (commands safe to repeat: reads and the
        compare-and-write scripts) a dropped connection is retried once on a fresh one.
        """
        if _pack_command is None:
            pipe = self.client.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            return pipe.execute(raise_on_error=False)

        def write(conn: Any) -> None:
            # Pack and send a few commands at a time: the server starts on the first ones while the
            # rest are packed (replies are read at the end; Redis buffers them, it never blocks).
            for i in range(0, len(commands), _SEND_GROUP):
                conn.send_packed_command([b"".join(map(_pack_command, commands[i: i + _SEND_GROUP]))])

        return self._exchange(write, len(commands), retry)

    def _exchange(self, write: Any, count: int, retry: bool) -> list[Any]:
        """redis-py transport: `write(conn)` on one pooled connection, then `count` replies (errors as values).

        With `retry` (commands safe to repeat) a dropped connection is retried once on a fresh one.
        """
        pool = self.client.connection_pool
        for attempt in (0, 1):
            conn = pool.get_connection()
            try:
                write(conn)
                replies: list[Any] = []
                for _ in range(count):
                    try:
                        replies.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:  # the error reply was consumed: still in sync
                        replies.append(exc)
                return replies
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                conn.disconnect()
                if attempt or not retry:
                    raise
            except BaseException:
                conn.disconnect()  # replies may be left unread: never reuse this connection
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    def _mget_cluster(self, keys_per_view: list[list[str]]) -> list[list[bytes | None]]:
        """As `mget_nonatomic` (one MGET per hash slot), but every view's keys in one cluster pipeline."""
        keyslot = self.client.keyslot
        groups: dict[int, tuple[list[str], list[tuple[int, int]]]] = {}
        for v, keys in enumerate(keys_per_view):
            for i, k in enumerate(keys):
                g = groups.get(slot := keyslot(k))
                if g is None:
                    g = groups[slot] = ([], [])
                g[0].append(k)
                g[1].append((v, i))
        out: list[list[bytes | None]] = [[None] * len(keys) for keys in keys_per_view]
        if not groups:
            return out
        pipe = self.client.pipeline()
        for keys, _ in groups.values():
            pipe.execute_command("MGET", *keys)
        for (_, where), values in zip(groups.values(), pipe.execute()):
            for (v, i), value in zip(where, values):
                out[v][i] = value
        return out

    def _fill_rows(self, r: _ViewRead, raw: list[bytes | None], now_us: int, status: np.ndarray,
                   columns: list[Any], event_ts: dict[str, np.ndarray], off: int) -> None:
        """Decode one view's rows into `status` / `columns` from column `off` on."""
        info, n, k = r.info, len(raw), len(r.positions)
        dec = info.codec.decode(raw, r.positions)
        p = dec.present
        all_present = len(p) == n
        stale = None
        if info.ttl_us is not None and len(p):
            stale = dec.event_ts < now_us - info.ttl_us
            if not stale.any():
                stale = None
        if dec.nulls is None and stale is None:
            st = None  # every found value is PRESENT
            if all_present:
                status[:, off: off + k] = FeatureStatus.PRESENT
            else:
                status[p, off: off + k] = FeatureStatus.PRESENT
        else:
            st = np.full((len(p), k), FeatureStatus.PRESENT, dtype=np.uint8)
            if dec.nulls is not None:
                st[dec.nulls] = FeatureStatus.NULL_VALUE
            if stale is not None:
                st[stale] = FeatureStatus.OUTSIDE_MAX_AGE
            status[p, off: off + k] = st
        for j, pos in enumerate(r.positions):
            f = info.features[pos]
            vals = dec.values[j]
            if isinstance(vals, np.ndarray):
                if all_present and st is None:
                    col = vals
                else:
                    col = _default_column(f, n)
                    col[p] = vals
                    if st is not None:
                        sj = st[:, j]
                        nulls = p[sj == FeatureStatus.NULL_VALUE]
                        if len(nulls):
                            col[nulls] = _null_fill(f)
                        old = p[sj == FeatureStatus.OUTSIDE_MAX_AGE]
                        if len(old):
                            col[old] = _default_fill(f)
            else:
                col = [f.default] * n
                if st is None:
                    for i, v in zip(p.tolist(), vals):
                        col[i] = v
                else:
                    for i, v, s in zip(p.tolist(), vals, st[:, j].tolist()):
                        col[i] = v if s == FeatureStatus.PRESENT else (None if s == FeatureStatus.NULL_VALUE else f.default)
            columns[off + j] = col
        if all_present:
            ts = dec.event_ts
        else:
            ts = np.full(n, _NAT, dtype=np.int64)
            ts[p] = dec.event_ts
        event_ts[info.view.name] = ts.view("datetime64[us]")

    def _fill_windowed(self, r: _ViewRead, n: int, raws: Mapping[tuple[str, int], list[bytes | None]], now_us: int,
                       status: np.ndarray, columns: list[Any], event_ts: dict[str, np.ndarray], off: int) -> None:
        """Window values of every entity at once: per ring one frombuffer and a few matrix ops, no loop per entity."""
        info, tc = r.info, r.info.tiles
        present = np.zeros(n, dtype=bool)
        newest = np.full(n, _NAT, dtype=np.int64)
        rings: list[np.ndarray] = []
        ring_rows: np.ndarray | None = None  # the entities with rings, when not all have (the others count nothing)
        absent = {part: raw.count(None) for part, raw in raws.items()}
        if n and all(a == n for a in absent.values()):  # no entity has window state (new items, old data)
            for j, pos in enumerate(r.positions):
                f = info.features[pos]
                columns[off + j] = [[] for _ in range(n)] if isinstance(f.default, list) else _default_column(f, n)
            status[:, off: off + len(r.positions)] = FeatureStatus.NOT_FOUND
            event_ts[info.view.name] = np.full(n, _NAT, dtype=np.int64).view("datetime64[us]")
            return
        for (kind, i), raw in raws.items():
            if absent[(kind, i)] == 0:
                found = np.ones(n, dtype=bool)
            else:
                found = np.fromiter((v is not None for v in raw), dtype=bool, count=n)
            if kind == "rings":
                if not found.all():  # decode only stored rings: 1,000 absent items were 2.7 MB of zeros to sum
                    ring_rows = np.flatnonzero(found)
                    raw = [raw[i] for i in ring_rows.tolist()]
                _, rings = tc.decode_rings(raw)
            present |= found
        lists: dict[int, tuple] = {}
        wanted = [tc.outputs[p] for p in r.positions]
        sums_needed = {(o.part, o.column) for o in wanted if o.function in (AggregationFunction.SUM, AggregationFunction.MEAN)}
        lengths: dict[int, list[int]] = {}  # ring -> window lengths in tiles read from it
        for o in wanted:
            if o.function is not AggregationFunction.LAST_N:
                lengths.setdefault(o.part, [])
                if o.window_us // o.hop_us not in lengths[o.part]:
                    lengths[o.part].append(o.window_us // o.hop_us)
        totals: dict[int, dict[str, np.ndarray]] = {}

        def ring_totals(i: int) -> dict[str, np.ndarray]:
            """Ring i's window totals, (N, windows) per quantity, windows in `lengths[i]` order.

            Which tile a slot must hold as of now is the same for every entity (slot = tile index mod
            slots), so validity is one comparison with a row of expected tile starts, and every window of
            the ring is a fixed set of slots: the totals of all windows are one matrix product per quantity.
            A slot holding another tile (stale, or empty) counts nothing.
            """
            hit = totals.get(i)
            if hit is None:
                ring, words = tc.rings[i], rings[i]
                cur = now_us - now_us % ring.hop_us
                age = (cur // ring.hop_us - np.arange(ring.slots)) % ring.slots
                expected = cur - age * ring.hop_us
                valid = words[:, :, 0] == expected
                member = (age[:, None] < np.asarray(lengths[i])[None, :]).astype(np.float64)  # (slots, windows)
                hit = {"count": np.rint(np.where(valid, words[:, :, 1], 0).astype(np.float64) @ member).astype(np.int64)}
                for k, c in enumerate(tc.sum_columns):
                    if (i, c) in sums_needed:
                        hit[f"s{k}"] = np.where(valid, words[:, :, 2 + 2 * k].view(np.float64), 0.0) @ member
                        nn = np.where(valid, words[:, :, 3 + 2 * k], 0).astype(np.float64) @ member
                        hit[f"n{k}"] = np.rint(nn).astype(np.int64)
                live = np.where(valid, expected, _NAT).max(axis=1) if len(words) else np.zeros(0, dtype=np.int64)
                if ring_rows is None:
                    if len(words):
                        np.maximum(newest, live, out=newest)
                else:  # back to every entity's row: no rings, nothing counted
                    newest[ring_rows] = np.maximum(newest[ring_rows], live)
                    for key, part in hit.items():
                        full = np.zeros((n, part.shape[1]), dtype=part.dtype)
                        full[ring_rows] = part
                        hit[key] = full
                totals[i] = hit
            return hit

        sum_idx = {c: i for i, c in enumerate(tc.sum_columns)}
        for j, pos in enumerate(r.positions):
            o = tc.outputs[pos]
            if o.function is AggregationFunction.LAST_N:
                if o.part not in lists:
                    lists[o.part] = tc.decode_lists(o.part, raws[("list", o.part)])
                _, offsets, ts, vals = lists[o.part]
                lo = now_us - now_us % o.hop_us - o.window_us + o.hop_us
                # entries are sorted by time per entity: the window's are one run, ending at the last ts <= now
                upto = np.concatenate(([0], np.cumsum(ts <= now_us)))
                within = np.concatenate(([0], np.cumsum(ts >= lo)))
                end = offsets[:-1] + (upto[offsets[1:]] - upto[offsets[:-1]])
                inside = np.maximum(0, (upto[offsets[1:]] - upto[offsets[:-1]])
                                    - (offsets[1:] - offsets[:-1] - (within[offsets[1:]] - within[offsets[:-1]])))
                take = np.minimum(inside, o.n)
                col: list[Any] = [[] for _ in range(n)]
                values = vals.tolist() if isinstance(vals, np.ndarray) else list(vals)
                hits = np.flatnonzero(take)
                for i, e, t in zip(hits.tolist(), end[hits].tolist(), take[hits].tolist()):
                    col[i] = values[e - t: e][::-1]
                if len(ts):
                    last_in = np.where(inside > 0, ts[np.maximum(end - 1, 0)], _NAT)
                    np.maximum(newest, last_in, out=newest)
                st = np.where(take > 0, np.uint8(FeatureStatus.PRESENT), np.uint8(FeatureStatus.DEFAULTED))
            else:
                t = ring_totals(o.part)
                w = lengths[o.part].index(o.window_us // o.hop_us)
                cnt = t["count"][:, w]
                st = np.where(cnt > 0, np.uint8(FeatureStatus.PRESENT), np.uint8(FeatureStatus.DEFAULTED))
                if o.function is AggregationFunction.COUNT:
                    col = np.ascontiguousarray(cnt)
                else:
                    k = sum_idx[o.column]
                    total = np.ascontiguousarray(t[f"s{k}"][:, w])
                    if o.function is AggregationFunction.SUM:  # a sum of no values is 0.0, as offline
                        col = total
                    else:  # a mean of no values is NULL
                        nn = t[f"n{k}"][:, w]
                        st[(cnt > 0) & (nn == 0)] = FeatureStatus.NULL_VALUE
                        with np.errstate(invalid="ignore", divide="ignore"):
                            col = np.where(nn > 0, total / np.maximum(nn, 1), np.nan)
            st[~present] = FeatureStatus.NOT_FOUND
            status[:, off + j] = st
            columns[off + j] = col
        event_ts[info.view.name] = newest.view("datetime64[us]")  # newest tile start / event time in the windows

    # ------------------------------------------------------------------ write
    def _sha_of(self, name: str, force: bool = False) -> str:
        sha = self._sha.get(name)
        if sha is None or force:
            sha = self.client.script_load(getattr(scripts, name))
            if isinstance(sha, dict):  # cluster: one reply per node
                sha = next(iter(sha.values()))
            if isinstance(sha, bytes):
                sha = sha.decode()
            self._sha[name] = sha
        return sha

    def _run_scripts(self, name: str, calls: list[tuple[list[str], list[Any]]], idempotent: bool = True) -> int:
        """EVALSHA `name` once per (keys, args) call, all pipelined; returns the sum of the replies."""
        return sum(int(r) for r in self.eval_many(name, calls, idempotent))

    def eval_many(self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
                  idempotent: bool = True) -> list[Any]:
        """EVALSHA the script `name` (of `scripts`) once per (keys, args) call, all pipelined; the replies.

        Calls answered NOSCRIPT (server restarted or flushed) are re-sent once
        after loading the script; only those, so a non-idempotent script
        (ADD_EVENTS without its guard) is never applied twice. Any other error
        is raised after the whole pipeline ran.
        """
        out: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in (0, 1):
            if not pending:
                break
            sha = self._sha_of(name, force=attempt == 1)
            commands = [("EVALSHA", sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in pending]
            if self.cluster:
                pipe = self.client.pipeline()
                for cmd in commands:  # execute_command: the cluster pipeline blocks .evalsha() but routes EVALSHA
                    pipe.execute_command(*cmd)
                replies = pipe.execute(raise_on_error=False)
            else:
                replies = self._send(commands, retry=idempotent)
            failed = []
            error = None
            for i, reply in zip(pending, replies):
                if not isinstance(reply, Exception):
                    out[i] = reply
                elif attempt == 0 and (isinstance(reply, redis.exceptions.NoScriptError) or "NOSCRIPT" in str(reply)):
                    failed.append(i)
                elif error is None:
                    error = reply
            if error is not None:
                raise error
            pending = failed
        if pending:
            raise RuntimeError(f"script {name} could not be loaded")
        return out

    def _by_slot(self, keys: list[str]) -> list[list[int]]:
        """Row positions grouped so each group's keys share a hash slot (cluster), else one group."""
        if not self.cluster:
            return [list(range(len(keys)))]
        groups: dict[int, list[int]] = {}
        keyslot = self.client.keyslot
        for i, k in enumerate(keys):
            groups.setdefault(keyslot(k), []).append(i)
        return list(groups.values())

    def write_packed(self, keys: list[str], values: list[bytes]) -> int:
        """Write packed rows (keys and bytes from the codec) unless the stored row is newer; returns rows written.

        A key occurring several times is written in successive rounds (the script
        compares against the stored row, so the newest wins; on equal time the later row).
        """
        if len(set(keys)) != len(keys):
            rounds: list[list[int]] = []
            seen: dict[str, int] = {}
            for i, k in enumerate(keys):
                r = seen.get(k, -1) + 1
                seen[k] = r
                if r == len(rounds):
                    rounds.append([])
                rounds[r].append(i)
            return sum(self.write_packed([keys[i] for i in rnd], [values[i] for i in rnd]) for rnd in rounds)
        calls = []
        for group in self._by_slot(keys):
            for i in range(0, len(group), SCRIPT_ROWS):
                if self.cluster:
                    idx = group[i: i + SCRIPT_ROWS]
                    calls.append(([keys[j] for j in idx], [values[j] for j in idx]))
                else:
                    calls.append((keys[i: i + SCRIPT_ROWS], values[i: i + SCRIPT_ROWS]))
        return self._run_scripts("SET_IF_NEWER", calls)

    def encode_rows(self, view: FeatureView, batch: pa.RecordBatch | pa.Table) -> tuple[list[str], list[bytes]]:
        """Keys and packed rows of a batch with the view's join keys, `event_ts` and feature columns."""
        info = self.info(view)
        if info.windowed:
            raise TypeError(f"{view.name} is windowed: use write_tiles / add_to_tiles")
        names = batch.schema.names
        ts_name = "event_ts" if "event_ts" in names else view.source.timestamp_field
        ts = timestamps_us(column(batch, ts_name))
        keys = arrow_entity_keys(info.prefix, [column(batch, k) for k in view.join_keys])
        return keys, info.codec.encode(batch, ts)

    def write_rows(self, view: FeatureView, batch: pa.RecordBatch | pa.Table) -> int:
        """Write the rows of `batch`, skipping any older than the stored row; returns rows written.

        One server-side script call per 1,000 rows, all pipelined: compare and
        write are atomic, so a concurrent writer never gets its newer row
        overwritten, and a re-run writes nothing.
        """
        if batch.num_rows == 0:
            return 0
        keys, values = self.encode_rows(view, batch)
        return self.write_packed(keys, values)

    def write_tiles(self, view: WindowedFeatureView, tiles: pa.RecordBatch | pa.Table, *,
                    through: datetime | int | None = None) -> int:
        """Write whole per-entity window state (materialization); returns the entities whose state changed.

        `tiles`: `OfflineStore.tiles` rows (``ring=True`` as of ``through - 1us``): the join keys, ``hop``,
        ``tile_start`` (aligned to the hop), ``count``, per summed column ``<col>_sum`` and ``<col>_count``,
        and per entity a last-n row (``hop`` NULL) with ``<col>_last_n`` / ``<col>_last_n_ts``. Every
        row of an entity must be in the same call: its rings and lists are rebuilt whole from them.
        `through`: the cut (exclusive; micros or datetime) the rows hold every event before; recorded
        per entity so the stream skips those events. Ownership against the streaming path
        (`scripts.PUT_STATE`): tiles from the stream's start (per entity, floored to the coarsest hop)
        are the stream's and stay; without stream state the rings are overwritten whole; an entity a
        later cut already wrote is skipped. Unchanged values are not rewritten, so a re-run writes 0.
        """
        info = self.info(view)
        if not info.windowed:
            raise TypeError(f"{view.name} is not windowed: use write_rows")
        if tiles.num_rows == 0:
            return 0
        tc = info.tiles
        bases = arrow_window_entity_bases(info.prefix, [column(tiles, k) for k in view.join_keys])
        index: dict[str, int] = {}
        entity = np.fromiter((index.setdefault(b, len(index)) for b in bases), dtype=np.int64, count=len(bases))
        numeric, lists = tc.encode_state(tiles, entity, len(index))
        cut = "" if through is None else to_micros(through)
        head = [cut, *tc.script_config()]
        per_entity = (1 if tc.rings else 0) + len(tc.lists)
        step = max(1, TILE_SCRIPT_ARGS // max(1, per_entity))
        ordered = list(index)
        calls: list[tuple[list[str], list[Any]]] = []
        groups = self._by_slot([b + ":s" for b in ordered]) if self.cluster else [list(range(len(ordered)))]
        for group in groups:
            for s0 in range(0, len(group), step):
                ck: list[str] = []
                ca: list[Any] = list(head)
                for e in group[s0: s0 + step]:
                    ck.extend(tc.keys(ordered[e]))
                    if numeric:
                        ca.append(numeric[e])
                    ca.extend(blobs[e] for blobs in lists)
                calls.append((ck, ca))
        return self._run_scripts("PUT_STATE", calls)

    def add_to_tiles(self, view: WindowedFeatureView, entity: Any, event_ts: datetime | int,
                     values: Mapping[str, Any]) -> int:
        """Add one event to its tiles and lists (streaming); returns 1, or 0 when it is too late for a ring."""
        return self.add_events(view, [(entity, event_ts, values)])

    def add_events(self, view: WindowedFeatureView, events: Iterable[tuple[Any, datetime | int, Mapping[str, Any]]]) -> int:
        """Add many events (entity, event_ts, {column: value}): many entities per script call, pipelined.

        Returns the events added to every ring of the view (the others were too old for some ring, or
        before the batch-through). Not idempotent (adding twice counts twice): a dropped connection is
        not retried; `featurestore.streaming.TileWriter` adds the exactly-once guard.
        """
        info = self.info(view)
        if not info.windowed:
            raise TypeError(f"{view.name} is not windowed")
        events = list(events)
        bases = window_entity_bases(info.prefix, [e[0] for e in events], len(view.join_keys))
        pack = info.tiles.event_packer()
        per_entity: dict[tuple[str, str], list[bytes]] = {}
        for base, (_, ts, vals) in zip(bases, events):
            blobs = per_entity.get((base, ""))
            if blobs is None:
                blobs = per_entity[(base, "")] = []
            blobs.append(pack(0, to_micros(ts), vals))
        replies = self.eval_many("ADD_EVENTS", self.event_calls(view, per_entity, None), idempotent=False)
        applied = sum(int(rep[0]) for rep in replies)
        oldest = [int(rep[4]) for rep in replies if int(rep[4]) >= 0]
        if oldest:
            self.lower_stream_from(view, min(oldest))
        return applied

    def event_calls(self, view: WindowedFeatureView, per_entity: Mapping[tuple[str, str], list[bytes]],
                    batch_through: int | None) -> list[tuple[list[str], list[Any]]]:
        """ADD_EVENTS calls for {(entity key base, offsets field): packed events}: many entities per call
        (on a cluster, those of one hash slot), at most `EVENTS_PER_CALL` events per call."""
        tc = self.info(view).tiles
        head = ["" if batch_through is None else batch_through, *tc.script_config()]
        items = list(per_entity.items())
        if self.cluster:
            groups: dict[int, list[int]] = {}
            keyslot = self.client.keyslot
            for i, ((base, _), _) in enumerate(items):
                groups.setdefault(keyslot(base + ":s"), []).append(i)
            order = [i for g in groups.values() for i in g]
            slot_of = {i: s for s, g in groups.items() for i in g}
        else:
            order = list(range(len(items)))
            slot_of = None
        calls: list[tuple[list[str], list[Any]]] = []
        keys: list[str] = []
        args: list[Any] = list(head)
        n = 0
        prev_slot = None
        suffixes = tc.suffixes
        for i in order:
            (base, fld), blobs = items[i]
            if keys and (n + len(blobs) > EVENTS_PER_CALL or (slot_of is not None and slot_of[i] != prev_slot)):
                calls.append((keys, args))
                keys, args, n = [], list(head), 0
            prev_slot = slot_of[i] if slot_of is not None else None
            keys.extend([base + x for x in suffixes])
            args.append(fld)
            args.append(b"".join(blobs))
            n += len(blobs)
        if keys:
            calls.append((keys, args))
        return calls

    # -------------------------------------------------------------- watermarks
    def get_batch_through(self, view: WindowedFeatureView) -> int | None:
        """Micros before which the batch (materialization) wrote every event of the view; None: no batch yet."""
        raw = self.client.get(batch_through_key(self.project, view))
        return int(raw) if raw is not None else None

    def set_batch_through(self, view: WindowedFeatureView, us: int) -> None:
        self.client.set(batch_through_key(self.project, view), str(int(us)))

    def get_stream_from(self, view: WindowedFeatureView) -> int | None:
        """Micros of the oldest event the streaming path applied to the view; None: it applied nothing yet."""
        raw = self.client.get(stream_from_key(self.project, view))
        return int(raw) if raw is not None else None

    def lower_stream_from(self, view: WindowedFeatureView, us: int) -> None:
        """Record that the stream applied an event at `us` (the stored time only moves back)."""
        self.eval_many("LOWER_TO", [([stream_from_key(self.project, view)], [str(int(us))])])

    def window_bounds(self, views: Sequence[WindowedFeatureView]) -> list[tuple[int | None, int | None]]:
        """(batch through, stream from) of each view, in one round trip."""
        keys = [k for v in views for k in (batch_through_key(self.project, v), stream_from_key(self.project, v))]
        if not keys:
            return []
        if self.cluster:
            pipe = self.client.pipeline()
            for k in keys:
                pipe.get(k)
            raw = pipe.execute()
        else:
            raw = self._send([("MGET", *keys)])[0]
            if isinstance(raw, Exception):
                raise raw
        vals = [int(x) if x is not None else None for x in raw]
        return [(vals[2 * i], vals[2 * i + 1]) for i in range(len(views))]

    def get_watermark(self, view: OnlineView) -> datetime | None:
        raw = self.client.get(watermark_key(self.project, view))
        return from_micros(int(raw)) if raw is not None else None

    def set_watermark(self, view: OnlineView, ts: datetime) -> None:
        self.client.set(watermark_key(self.project, view), str(to_micros(ts)))

    def version(self, view: OnlineView) -> str:
        return view_version(view)


__all__ = ["FeatureStatus", "OnlineResult", "OnlineStore", "ReadPlan"]
