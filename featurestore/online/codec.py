"""Packed online rows: one fixed schema per view, encoded once per row at write, decoded in bulk at read.

Row format (all of one view's features, in definition order)::

    event_ts   int64 big-endian, microseconds since the epoch (big-endian so the
               write script compares it with one `struct.unpack('>i8', ...)`)
    null bits  ceil(n_features / 8) bytes, bit i (little bit order) set = feature i is NULL
    fixed      FLOAT64 '<f8', INT64 '<i8', BOOL 'u1', FLOAT_LIST with `dim` '<f8' x dim,
               and for each variable-length feature its end offset '<u4' into the tail
    tail       the variable-length values back to back: STRING utf-8, FLOAT_LIST '<f8'
               x k, INT64_LIST '<i8' x k, STRING_LIST ('<u4' count, '<u4' end offsets,
               utf-8 bytes)

Every row of a view without variable-length features has the same size, so a
read of 1,000 rows is one `b"".join` and one `np.frombuffer` with a structured
dtype: each feature column is a strided view, no per-value parsing (the cost
Feast pays per value with protobuf). Encoding is vectorized the same way from
Arrow columns: one structured array filled column by column, then cut into
per-row bytes by a void-dtype `tolist()`.

`TileCodec` lays out a `WindowedFeatureView`'s state: a fixed-width ring per hop, a list per last-n column.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.definitions import AggregationFunction, Feature, ValueType, WindowedFeatureView

CODEC_VERSION = 2

_FIXED_DTYPE = {ValueType.FLOAT64: "<f8", ValueType.INT64: "<i8", ValueType.BOOL: "u1"}
_LIST_ELEM = {ValueType.FLOAT_LIST: pa.float64(), ValueType.INT64_LIST: pa.int64()}
_LIST_NP = {ValueType.FLOAT_LIST: "<f8", ValueType.INT64_LIST: "<i8"}
_ARROW_SCALAR = {ValueType.FLOAT64: pa.float64(), ValueType.INT64: pa.int64(), ValueType.BOOL: pa.bool_()}
_U32 = struct.Struct("<I")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def is_fixed(feature: Feature) -> bool:
    return feature.dtype in _FIXED_DTYPE or (feature.dtype is ValueType.FLOAT_LIST and feature.dim is not None)


def to_micros(ts: datetime | int | np.datetime64) -> int:
    """A datetime (naive = UTC), datetime64 or int micros -> int microseconds since the epoch."""
    if isinstance(ts, (int, np.integer)):
        return int(ts)
    if isinstance(ts, np.datetime64):
        return int(ts.astype("datetime64[us]").astype(np.int64))
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def td_micros(td: timedelta) -> int:
    return td // timedelta(microseconds=1)


def column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    """A column as one contiguous Array (Tables are combined)."""
    try:
        col = batch.column(name)
    except KeyError:
        raise KeyError(f"column {name!r} missing from batch with columns {batch.schema.names}") from None
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def timestamps_us(arr: pa.Array) -> np.ndarray:
    """An Arrow timestamp (any unit, naive = UTC) or int64 micros column -> int64 micros."""
    if arr.null_count:
        raise ValueError("event timestamps must not be null")
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.timestamp("us", arr.type.tz))
        return arr.view(pa.int64()).to_numpy(zero_copy_only=False)
    if pa.types.is_date(arr.type):
        return timestamps_us(arr.cast(pa.timestamp("us")))
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.int64()).to_numpy(zero_copy_only=False)
    raise TypeError(f"unsupported timestamp column type {arr.type}")


def _null_mask(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.zeros(len(arr), dtype=bool)
    return arr.is_null().to_numpy(zero_copy_only=False)


def _list_parts(arr: pa.Array, elem: pa.DataType, nulls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat element values, per-row lengths) of a list column; null rows have length 0."""
    arr = arr.cast(pa.large_list(elem))
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.flatten()
    if values.null_count:
        fill = float("nan") if pa.types.is_floating(elem) else 0
        values = pc.fill_null(values, fill)
    lengths[nulls] = 0
    return values.to_numpy(zero_copy_only=False), lengths


def _gather_rows(n: int, fixed: np.ndarray, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[bytes]:
    """Row i = fixed[i] bytes followed by, for each part (data uint8, starts, lengths), data[start_i:start_i+len_i]."""
    fsize = fixed.dtype.itemsize
    fixed_u8 = fixed.view(np.uint8).reshape(n, fsize)
    lens = [p[2] for p in parts]
    row_len = fsize + np.sum(lens, axis=0) if lens else np.full(n, fsize)
    ends = np.cumsum(row_len)
    starts = ends - row_len
    out = np.empty(int(ends[-1]) if n else 0, dtype=np.uint8)
    # fixed part: contiguous block per row
    idx = (starts[:, None] + np.arange(fsize)[None, :]).ravel()
    out[idx] = fixed_u8.ravel()
    pos = starts + fsize
    for data, src_starts, length in parts:
        total = int(length.sum())
        if total:
            excl = np.cumsum(length) - length
            ramp = np.arange(total) - np.repeat(excl, length)
            out[np.repeat(pos, length) + ramp] = data[np.repeat(src_starts, length) + ramp]
        pos = pos + length
    buf = out.tobytes()
    s, e = starts.tolist(), ends.tolist()
    return [buf[a:b] for a, b in zip(s, e)]


def _encode_string_list(values: list[list[str] | None]) -> list[bytes]:
    out = []
    for row in values:
        if not row:
            out.append(b"\0\0\0\0")
            continue
        encoded = [("" if s is None else s).encode() for s in row]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.uint32)
        out.append(_U32.pack(len(encoded)) + ends.astype("<u4").tobytes() + b"".join(encoded))
    return out


def _decode_string_list(buf: bytes) -> list[str]:
    (k,) = _U32.unpack_from(buf, 0)
    if not k:
        return []
    ends = np.frombuffer(buf, dtype="<u4", count=k, offset=4).tolist()
    base = 4 + 4 * k
    out, prev = [], 0
    for e in ends:
        out.append(buf[base + prev: base + e].decode())
        prev = e
    return out


@dataclass
class DecodedRows:
    """Rows found by a read, decoded column-wise (only the requested features).

    List values are shared between rows that stored the same list: treat them as read-only.
    """

    present: np.ndarray  # int64 positions (into the requested keys) that had a stored row
    event_ts: np.ndarray  # int64 micros, one per present row
    nulls: np.ndarray | None  # bool (present, n_requested); None when no value is null
    values: list[Any]  # per requested feature: contiguous np.ndarray (fixed) or list (variable length)


class RowCodec:
    """Encoder/decoder of one view's packed rows (see module docstring)."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = tuple(features)
        self.index = {f.name: i for i, f in enumerate(self.features)}
        n = len(self.features)
        self.null_bytes = (n + 7) // 8
        fields: list[tuple] = [("ts", ">i8")]
        if self.null_bytes:
            fields.append(("nulls", "u1", (self.null_bytes,)))
        self.varlen: list[int] = []
        for i, f in enumerate(self.features):
            if f.dtype in _FIXED_DTYPE:
                fields.append((f"f{i}", _FIXED_DTYPE[f.dtype]))
            elif f.dtype is ValueType.FLOAT_LIST and f.dim is not None:
                fields.append((f"f{i}", "<f8", (int(f.dim),)))
            else:
                fields.append((f"o{i}", "<u4"))
                self.varlen.append(i)
        self.dtype = np.dtype(fields)
        self.fixed_size = self.dtype.itemsize
        self._prev_end = {j: (f"o{self.varlen[k - 1]}" if k else None) for k, j in enumerate(self.varlen)}
        # 8-byte scalar fields: (byte offset, dtype), for the strided 2-D decode of adjacent ones
        self._scalar = {i: (self.dtype.fields[f"f{i}"][1], _FIXED_DTYPE[f.dtype])
                        for i, f in enumerate(self.features) if f.dtype in (ValueType.FLOAT64, ValueType.INT64)}
        self._run_cache: dict[tuple[int, ...], list[list[int]]] = {}

    # ------------------------------------------------------------------ encode
    def encode(self, batch: pa.RecordBatch | pa.Table, event_ts: np.ndarray) -> list[bytes]:
        """One packed row per batch row; `event_ts` int64 micros. Missing feature columns are an error."""
        n = len(event_ts)
        rec = np.zeros(n, dtype=self.dtype)
        rec["ts"] = event_ts
        null_matrix = np.zeros((n, len(self.features)), dtype=bool)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        var_end = np.zeros(n, dtype=np.int64)
        for i, f in enumerate(self.features):
            arr = column(batch, f.name)
            nulls = _null_mask(arr)
            null_matrix[:, i] = nulls
            if f.dtype in _FIXED_DTYPE:
                vals = arr.cast(_ARROW_SCALAR[f.dtype])
                if vals.null_count:
                    vals = pc.fill_null(vals, False if f.dtype is ValueType.BOOL else 0)
                rec[f"f{i}"] = vals.to_numpy(zero_copy_only=False)
            elif f.dtype is ValueType.FLOAT_LIST and f.dim is not None:
                flat, lengths = _list_parts(arr, pa.float64(), nulls)
                bad = (lengths != f.dim) & ~nulls
                if bad.any():
                    raise ValueError(f"feature {f.name!r}: embedding of length {int(lengths[bad][0])}, expected dim {f.dim}")
                if nulls.any():
                    full = np.zeros((n, f.dim))
                    full[~nulls] = flat.reshape(-1, f.dim)
                    rec[f"f{i}"] = full
                else:
                    rec[f"f{i}"] = flat.reshape(n, f.dim)
            else:
                data, starts, lengths = self._varlen_parts(f, arr, nulls)
                var_end = var_end + lengths
                rec[f"o{i}"] = var_end
                parts.append((data, starts, lengths))
        if self.null_bytes:
            rec["nulls"] = np.packbits(null_matrix, axis=1, bitorder="little")
        if not parts:
            return np.frombuffer(rec.tobytes(), dtype=f"V{self.fixed_size}").tolist() if n else []
        return _gather_rows(n, rec, parts)

    def _varlen_parts(self, f: Feature, arr: pa.Array, nulls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(arr)
        if f.dtype is ValueType.STRING:
            arr = arr.cast(pa.large_string())
            offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset: arr.offset + n + 1]
            data_buf = arr.buffers()[2]
            data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
            starts = offsets[:-1].astype(np.int64)
            lengths = np.diff(offsets).astype(np.int64)
            lengths[nulls] = 0
            return data, starts, lengths
        if f.dtype in _LIST_ELEM:
            flat, lengths = _list_parts(arr, _LIST_ELEM[f.dtype], nulls)
            data = np.ascontiguousarray(flat.astype(_LIST_NP[f.dtype])).view(np.uint8)
            starts = (np.cumsum(lengths) - lengths) * 8
            return data, starts, lengths * 8
        if f.dtype is ValueType.STRING_LIST:
            rows = _encode_string_list(arr.cast(pa.list_(pa.string())).to_pylist())
            lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
            lengths[nulls] = 0
            data = np.frombuffer(b"".join(rows), dtype=np.uint8)
            starts = np.cumsum([len(r) for r in rows], dtype=np.int64) - np.array([len(r) for r in rows], dtype=np.int64)
            return data, starts, lengths
        raise TypeError(f"feature {f.name!r}: unsupported type {f.dtype}")

    def encode_python(self, event_ts: int, values: dict[str, Any]) -> bytes:
        """One row from Python values (tests, small writes)."""
        arrays = {}
        for f in self.features:
            v = values.get(f.name)
            if f.dtype in _ARROW_SCALAR:
                typ = _ARROW_SCALAR[f.dtype]
            elif f.dtype is ValueType.STRING:
                typ = pa.string()
            elif f.dtype is ValueType.STRING_LIST:
                typ = pa.list_(pa.string())
            else:
                typ = pa.list_(_LIST_ELEM[f.dtype])
            arrays[f.name] = pa.array([v], type=typ)
        return self.encode(pa.table(arrays), np.array([event_ts], dtype=np.int64))[0]

    # ------------------------------------------------------------------ decode
    def decode(self, raw: Sequence[bytes | None] | np.ndarray, wanted: Sequence[int]) -> DecodedRows:
        """Decode the stored rows (None = no row) for the feature positions `wanted`.

        `raw` may also be a (rows, fixed_size) uint8 array of a view without variable-length features, every
        row present, its rows possibly strided (`featurestore.online.replies`: fixed rows read in place off
        the receive buffer); every value is copied out of it, nothing returned refers to it.
        """
        fsize = self.fixed_size
        buf = None
        rec = None
        if isinstance(raw, np.ndarray):
            if self.varlen or raw.ndim != 2 or raw.shape[1] != fsize or raw.dtype != np.uint8 or raw.strides[1] != 1:
                raise ValueError("stored row of unexpected size: layout version mismatch")
            rec = raw.view(self.dtype)[:, 0]  # one record per row, strided like the rows
            present, rows = range(len(raw)), raw
        elif not self.varlen:
            try:  # all found (the common case): no per-row Python work at all
                buf = b"".join(raw)
                present, rows = range(len(raw)), raw
            except TypeError:  # some None
                pass
        if buf is None and rec is None:
            if None in raw:
                present = [i for i, v in enumerate(raw) if v is not None]
                rows = [raw[i] for i in present]
            else:  # all found: no per-row filtering
                present, rows = range(len(raw)), raw
            buf = b"".join([r[:fsize] for r in rows]) if self.varlen else b"".join(rows)
        if not self.varlen and not isinstance(raw, np.ndarray) and len(buf) != fsize * len(rows):
            raise ValueError("stored row of unexpected size: layout version mismatch")
        if rec is None:
            rec = np.frombuffer(buf, dtype=self.dtype)
        ts = rec["ts"].astype(np.int64)
        nulls = None
        if self.null_bytes:
            bits = rec["nulls"]
            if bits.any():
                all_nulls = np.unpackbits(bits, axis=1, count=len(self.features), bitorder="little").view(bool)
                nulls = all_nulls[:, list(wanted)]
        values: list[Any] = [None] * len(wanted)
        for run in self._runs(tuple(wanted)):
            j0, dt = wanted[run[0]], self._scalar[wanted[run[0]]][1]
            if len(rows):  # one strided 2-D view over the run of fields, one transposing copy
                if buf is not None:
                    mat = np.ndarray((len(rows), len(run)), dtype=dt, buffer=buf, offset=self._scalar[j0][0],
                                     strides=(fsize, 8))
                else:  # rows in place in a receive buffer: strided like them
                    first = rec[f"f{j0}"]
                    mat = np.lib.stride_tricks.as_strided(first, (len(rows), len(run)), (first.strides[0], 8))
                cols = mat.T.copy()
            else:
                cols = np.empty((len(run), 0), dtype=dt)
            for r, c in zip(run, cols):
                values[r] = c
        for r, j in enumerate(wanted):
            if values[r] is not None:
                continue
            f = self.features[j]
            if is_fixed(f):
                col = np.array(rec[f"f{j}"])  # always a copy: `rec` may be a view of a reused receive buffer
                values[r] = col.view(bool) if f.dtype is ValueType.BOOL else col
            else:
                values[r] = self._decode_varlen(j, f, rows, rec)
        pos = np.arange(len(raw), dtype=np.int64) if isinstance(present, range) else np.asarray(present, dtype=np.int64)
        return DecodedRows(pos, ts, nulls, values)

    def _runs(self, wanted: tuple[int, ...]) -> list[list[int]]:
        """Positions in `wanted` grouped into runs of adjacent 8-byte scalars of one type (cached per `wanted`)."""
        hit = self._run_cache.get(wanted)
        if hit is not None:
            return hit
        runs: list[list[int]] = []
        prev = None
        for r, j in enumerate(wanted):
            cur = self._scalar.get(j)
            if cur is None:
                prev = None
                continue
            if prev is not None and cur[1] == prev[1] and cur[0] == prev[0] + 8:
                runs[-1].append(r)
            else:
                runs.append([r])
            prev = cur
        if len(self._run_cache) < 64:
            self._run_cache[wanted] = runs
        return runs

    def _decode_varlen(self, j: int, f: Feature, rows: list[bytes], rec: np.ndarray) -> list[Any]:
        fsize = self.fixed_size
        ends = rec[f"o{j}"].astype(np.int64) + fsize
        prev = self._prev_end[j]
        starts = rec[prev].astype(np.int64) + fsize if prev else np.full(len(rows), fsize, dtype=np.int64)
        s_list, e_list = starts.tolist(), ends.tolist()
        if f.dtype is ValueType.STRING:
            return [r[s:e].decode() for r, s, e in zip(rows, s_list, e_list)]
        if f.dtype in _LIST_NP:
            dt = _LIST_NP[f.dtype]
            return [np.frombuffer(r, dtype=dt, count=(e - s) // 8, offset=s) for r, s, e in zip(rows, s_list, e_list)]
        # Decoded once per distinct stored list (a read of 1,000 movies holds a few dozen genre lists: the
        # per-row decode was ~1.5 ms of a ranking read); rows with equal lists share one list object.
        seen: dict[bytes, list[str]] = {}
        out: list[Any] = []
        for r, s, e in zip(rows, s_list, e_list):
            blob = r[s:e]
            value = seen.get(blob)
            if value is None:
                value = seen[blob] = _decode_string_list(blob) if e > s else []
            out.append(value)
        return out


# ---------------------------------------------------------------------- windows

# Columns of a tiles table (`OnlineStore.write_tiles`, `OfflineStore.tiles`), besides the join keys.
HOP = "hop"  # duration: the tile's hop; NULL on an entity's last-n row
TILE_START = "tile_start"
TILE_COUNT = "count"
SUM_SUFFIX = "_sum"  # f"{column}_sum": float64 sum of the non-null values in the tile
NONNULL_SUFFIX = "_count"  # f"{column}_count": int64 number of non-null values in the tile
LAST_SUFFIX = "_last_n"  # f"{column}_last_n": list of up to n most recent non-null values, oldest first
LAST_TS_SUFFIX = "_last_n_ts"  # their timestamps (list<timestamp>)

_LAST_TYPES = (ValueType.INT64_LIST, ValueType.FLOAT_LIST, ValueType.STRING_LIST)
_VAR_HEAD = struct.Struct("<qI")
_I32 = struct.Struct("<i")  # string last-n entry: ts micros, value length, then the bytes


@dataclass(frozen=True)
class WindowOutput:
    name: str
    function: AggregationFunction
    window_us: int
    hop_us: int
    column: str | None
    n: int | None
    dtype: ValueType
    part: int  # ring index (COUNT/SUM/MEAN) or last-n list index (LAST_N)


@dataclass(frozen=True)
class Ring:
    """One hop's ring: `slots` fixed-width slots, the tile starting at t in slot ``(t / hop) mod slots``."""

    hop_us: int
    slots: int  # longest window with this hop / hop + 1
    offset: int  # byte offset of the ring in the entity's numeric string


@dataclass(frozen=True)
class LastList:
    """One last-n column's list: the `keep` most recent non-null values, no older than `span_us` before the newest."""

    column: str
    keep: int
    span_us: int
    dtype: ValueType
    suffix: str  # key suffix, ":l<i>"

    @property
    def entry_size(self) -> int:
        """Bytes per entry (ts '<i8' + value '<i8'/'<f8'), 0 for variable-size (string) entries."""
        return 0 if self.dtype is ValueType.STRING_LIST else 16


class TileCodec:
    """A windowed view's online state per entity: a fixed-width ring per hop, a list per last-n column.

    Rings: per hop of the view's COUNT/SUM/MEAN windows, `slots` (longest window with that hop / hop
    + 1) slots of ``[tile_start '<i8' micros, count '<i8', per summed column: sum '<f8', non-null count
    '<i8']``, the tile starting at t in slot ``(t / hop) mod slots``; an all-zero slot is empty
    (tile_start 0 is never a live tile). An entity's rings lie back to back, finest hop first, in one
    Redis string of fixed size (the ``:n`` key): a read decodes 1,000 entities with one
    ``np.frombuffer``, and the streaming script updates one slot per ring in place (GETRANGE/SETRANGE
    at the ring's offset). One string per entity rather than one per hop: measured, one MGET of 1,000
    keys of 2,720 bytes took 3.9 ms where 3,000 keys of 800-990 bytes took 5.5 ms (item_popularity).

    Lists (one Redis string per (view, entity, last-n column), ``:l<i>``): entries oldest first,
    ``('<i8' ts micros, '<i8'/'<f8' value)`` for INT64/FLOAT lists, ``('<i8' ts, '<u4' length,
    utf-8 bytes)`` for strings; ties on ts in arrival order. At most `keep` entries (the largest n
    of the column's aggregations), none older than the longest of its windows before the newest.
    """

    def __init__(self, view: WindowedFeatureView) -> None:
        self.view = view
        hop_windows = view.hop_windows()
        rings, offset = [], 0
        slot_size = 16 + 16 * len({a.column for a in view.aggregations
                                   if a.function in (AggregationFunction.SUM, AggregationFunction.MEAN)})
        for h, w in hop_windows.items():
            slots = td_micros(w) // td_micros(h) + 1
            rings.append(Ring(td_micros(h), slots, offset))
            offset += slots * slot_size
        self.rings = tuple(rings)
        self.numeric_bytes = offset
        ring_index = {r.hop_us: i for i, r in enumerate(self.rings)}
        self.coarsest_hop_us = max(td_micros(h) for h in view.hops)
        sums: list[str] = []
        last: dict[str, list[Any]] = {}  # column -> [keep, span, dtype]
        for agg in view.aggregations:
            if agg.function in (AggregationFunction.SUM, AggregationFunction.MEAN) and agg.column not in sums:
                sums.append(agg.column)
            if agg.function is AggregationFunction.LAST_N:
                dtype = agg.output_type()
                if dtype not in _LAST_TYPES:
                    raise TypeError(f"{view.name}: last_n of type {dtype} is not supported")
                prev = last.get(agg.column)
                if prev and prev[2] is not dtype:
                    raise TypeError(f"{view.name}: two last_n aggregations of {agg.column!r} disagree on type")
                span = max(td_micros(w) for w in agg.windows)
                last[agg.column] = [max(agg.n, prev[0]), max(span, prev[1]), dtype] if prev else [agg.n, span, dtype]
        self.sum_columns = tuple(sums)
        self.lists = tuple(LastList(c, k, sp, t, f":l{i}") for i, (c, (k, sp, t)) in enumerate(last.items()))
        self.last_columns = tuple(lst.column for lst in self.lists)
        self.last_keep = tuple(lst.keep for lst in self.lists)
        self.last_types = tuple(lst.dtype for lst in self.lists)
        list_index = {c: i for i, c in enumerate(self.last_columns)}
        outputs: list[WindowOutput] = []
        for agg in view.aggregations:
            for name, w in zip(agg.output_names(), agg.windows):
                hop = td_micros(view.hop(w))
                part = list_index[agg.column] if agg.function is AggregationFunction.LAST_N else ring_index[hop]
                outputs.append(WindowOutput(name, agg.function, td_micros(w), hop, agg.column, agg.n,
                                            agg.output_type(), part))
        self.outputs = tuple(outputs)
        fields: list[tuple] = [("tile", "<i8"), ("count", "<i8")]
        for k in range(len(sums)):
            fields += [(f"s{k}", "<f8"), (f"n{k}", "<i8")]
        self.slot_dtype = np.dtype(fields)
        self.slot_size = self.slot_dtype.itemsize
        assert self.slot_size == slot_size
        self.numeric_suffix = ":n"
        self.suffixes = (":s", *((":n",) if self.rings else ()), *(lst.suffix for lst in self.lists))
        self._entry_np = tuple(np.dtype([("ts", "<i8"), ("v", "<i8" if lst.dtype is ValueType.INT64_LIST else "<f8")])
                               if lst.entry_size else None for lst in self.lists)

    def script_config(self) -> list[int]:
        """The layout as the window scripts read it (`featurestore.online.scripts`)."""
        out = [len(self.rings), len(self.lists), self.slot_size, len(self.sum_columns), self.coarsest_hop_us]
        for r in self.rings:
            out += [r.hop_us, r.slots, r.offset]
        for lst in self.lists:
            out += [lst.keep, lst.span_us, lst.entry_size]
        return out

    def event_packer(self) -> Any:
        """A function (offset, ts micros, {column: value}) -> one event packed as the window script reads it
        (`featurestore.online.scripts.ADD_EVENTS`): offset and ts '<i8', per summed column a null flag and
        '<d', per last-n column a null flag and 8 value bytes, or '<i4' length (-1: null) and utf-8 bytes."""
        fmt = "<qq" + "Bd" * len(self.sum_columns)
        fixed_lists = all(lst.entry_size for lst in self.lists)
        if fixed_lists:
            fmt += "".join("Bq" if lst.dtype is ValueType.INT64_LIST else "Bd" for lst in self.lists)
        pack = struct.Struct(fmt).pack
        sums = self.sum_columns
        lasts = tuple((lst.column, lst.dtype) for lst in self.lists)
        if fixed_lists:
            def packer(offset: int, ts_us: int, values: Mapping[str, Any]) -> bytes:
                flat: list[Any] = [offset, ts_us]
                for c in sums:
                    v = values.get(c)
                    flat += (0, 0.0) if v is None else (1, float(v))
                for c, t in lasts:
                    v = values.get(c)
                    flat += (0, 0) if v is None else (1, int(v) if t is ValueType.INT64_LIST else float(v))
                return pack(*flat)
            return packer

        elem = self.elem_bytes

        def packer_var(offset: int, ts_us: int, values: Mapping[str, Any]) -> bytes:
            flat: list[Any] = [offset, ts_us]
            for c in sums:
                v = values.get(c)
                flat += (0, 0.0) if v is None else (1, float(v))
            parts = [pack(*flat)]
            for li, (c, t) in enumerate(lasts):
                v = values.get(c)
                if t is ValueType.STRING_LIST:
                    b = None if v is None else elem(li, v)
                    parts.append(b"\xff\xff\xff\xff" if b is None else _I32.pack(len(b)) + b)
                else:
                    parts.append(b"\0" + bytes(8) if v is None else b"\1" + elem(li, v))
            return b"".join(parts)

        return packer_var

    def ring_bytes(self, i: int) -> int:
        return self.rings[i].slots * self.slot_size

    def keys(self, base: str) -> list[str]:
        """Every key of one entity (state hash, numeric rings when any, lists), from its `window_entity_bases` base."""
        return [base + s for s in self.suffixes]

    # -- last-n element bytes
    def elem_bytes(self, li: int, value: Any) -> bytes:
        t = self.last_types[li]
        if t is ValueType.INT64_LIST:
            return struct.pack("<q", int(value))
        if t is ValueType.FLOAT_LIST:
            return struct.pack("<d", float(value))
        return str(value).encode()

    def elem_value(self, li: int, raw: bytes) -> Any:
        t = self.last_types[li]
        if t is ValueType.INT64_LIST:
            return struct.unpack("<q", raw)[0]
        if t is ValueType.FLOAT_LIST:
            return struct.unpack("<d", raw)[0]
        return raw.decode()

    def list_entries(self, li: int, raw: bytes) -> list[tuple[int, Any]]:
        """(ts micros, value), oldest first, of one stored list."""
        lst = self.lists[li]
        if lst.entry_size:
            arr = np.frombuffer(raw, dtype=self._entry_np[li])
            return list(zip(arr["ts"].tolist(), arr["v"].tolist()))
        out, pos = [], 0
        while pos < len(raw):
            ts, n = _VAR_HEAD.unpack_from(raw, pos)
            pos += _VAR_HEAD.size
            out.append((ts, raw[pos: pos + n].decode()))
            pos += n
        return out

    def encode_list(self, li: int, entries: Sequence[tuple[int, Any]]) -> bytes:
        """A stored list from (ts micros, value) entries, oldest first (already trimmed)."""
        if self.lists[li].entry_size:
            arr = np.empty(len(entries), dtype=self._entry_np[li])
            if entries:
                arr["ts"] = [e[0] for e in entries]
                arr["v"] = [e[1] for e in entries]
            return arr.tobytes()
        return b"".join(_VAR_HEAD.pack(ts, len(b)) + b for ts, b in ((t, str(v).encode()) for t, v in entries))

    # -- batch encoding of a tiles table
    def encode_state(self, tiles: pa.RecordBatch | pa.Table, entity: np.ndarray, n_entities: int
                     ) -> tuple[list[bytes], list[list[bytes]]]:
        """(one numeric string (every ring) per entity, or [] without rings; per list: one list blob per entity)
        of a tiles table.

        `entity`: the entity number (0 .. n_entities-1) of each row. Rows with a ``hop`` are tiles of
        that hop's ring (a tile older than another of the same entity in the same slot is dropped);
        rows without (or every row, for a table without last-n columns) may carry the last-n lists.
        A table without a ``hop`` column is read as tiles of the view's only ring.
        """
        n = tiles.num_rows
        names = tiles.schema.names
        if HOP in names:
            hop_col = column(tiles, HOP)
            if pa.types.is_duration(hop_col.type):
                hop_col = hop_col.cast(pa.duration("us")).cast(pa.int64())
            hop_us = pc.fill_null(hop_col.cast(pa.int64()), -1).to_numpy(zero_copy_only=False)
        elif len(self.rings) == 1 and TILE_START in names:
            hop_us = np.where(column(tiles, TILE_START).is_null().to_numpy(zero_copy_only=False), -1,
                              self.rings[0].hop_us)
        else:
            raise ValueError(f"{self.view.name}: a tiles table needs a `hop` column (the view has {len(self.rings)} hops)")
        known = {r.hop_us for r in self.rings} | {-1}
        if not set(np.unique(hop_us).tolist()) <= known:
            bad = sorted(set(np.unique(hop_us).tolist()) - known)
            raise ValueError(f"{self.view.name}: tiles of hop {bad} us; the view's rings hop by "
                             f"{[r.hop_us for r in self.rings]} us")
        tiled = hop_us >= 0
        if tiled.any():
            start_all = np.zeros(n, dtype=np.int64)
            ts_col = column(tiles, TILE_START)
            start_all[tiled] = timestamps_us(ts_col.filter(pa.array(tiled)))
            count_all = pc.fill_null(column(tiles, TILE_COUNT).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
            sums_all = [(pc.fill_null(column(tiles, c + SUM_SUFFIX).cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False),
                         pc.fill_null(column(tiles, c + NONNULL_SUFFIX).cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
                        for c in self.sum_columns]
        parts = []
        for ring in self.rings:
            arr = np.zeros((n_entities, ring.slots), dtype=self.slot_dtype)
            rows = np.flatnonzero(hop_us == ring.hop_us)
            if len(rows):
                start = start_all[rows]
                if np.any(start % ring.hop_us):
                    raise ValueError(f"{self.view.name}: tile_start not aligned to the hop of {ring.hop_us} us")
                order = np.argsort(start, kind="stable")[::-1]  # newest first: np.unique keeps the first
                rows, start = rows[order], start[order]
                ent = entity[rows]
                slot = (start // ring.hop_us) % ring.slots
                _, first = np.unique(ent * ring.slots + slot, return_index=True)
                rows, start, ent, slot = rows[first], start[first], ent[first], slot[first]
                cell = arr[ent, slot]
                cell["tile"] = start
                cell["count"] = count_all[rows]
                for k, (s_, nn) in enumerate(sums_all):
                    cell[f"s{k}"] = s_[rows]
                    cell[f"n{k}"] = nn[rows]
                arr[ent, slot] = cell
            parts.append(arr.view(np.uint8).reshape(n_entities, -1))
        numeric: list[bytes] = []
        if self.rings and n_entities:
            whole = np.ascontiguousarray(np.concatenate(parts, axis=1))
            numeric = np.frombuffer(whole.tobytes(), dtype=f"V{self.numeric_bytes}").tolist()
        lists_out: list[list[bytes]] = []
        for li, lst in enumerate(self.lists):
            blobs = [b""] * n_entities
            if lst.column + LAST_SUFFIX in names:
                rows = np.flatnonzero(~tiled)
                values = column(tiles, lst.column + LAST_SUFFIX).take(pa.array(rows)).to_pylist()
                if lst.column + LAST_TS_SUFFIX not in names:
                    raise ValueError(f"{self.view.name}: {lst.column + LAST_SUFFIX} needs {lst.column + LAST_TS_SUFFIX}")
                ts_col = column(tiles, lst.column + LAST_TS_SUFFIX).take(pa.array(rows))
                ts_lists = ts_col.cast(pa.list_(pa.timestamp("us", getattr(ts_col.type.value_type, "tz", None)))).to_pylist()
                for r, vals, tss in zip(rows.tolist(), values, ts_lists):
                    if not vals:
                        continue
                    entries = [(to_micros(t), v) for t, v in zip(tss, vals) if v is not None]
                    entries.sort(key=lambda e: e[0])  # stable: ties keep their order
                    if entries:
                        newest = entries[-1][0]
                        entries = [e for e in entries if e[0] >= newest - lst.span_us][-lst.keep:]
                    blobs[int(entity[r])] = self.encode_list(li, entries)
            lists_out.append(blobs)
        return numeric, lists_out

    # -- decoding
    def decode_rings(self, raw: Sequence[bytes | None]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(present bool (N,), per ring int64 (N, slots, slot words)) for N entities' numeric strings (absent:
        empty slots). Word 0 is tile_start, 1 count, then per summed column the sum (``.view(np.float64)``)
        and the non-null count."""
        size = self.numeric_bytes
        try:
            buf = b"".join(raw)
            present = np.ones(len(raw), dtype=bool)
        except TypeError:  # some None
            zero = bytes(size)
            present = np.fromiter((v is not None for v in raw), dtype=bool, count=len(raw))
            buf = b"".join([v if v is not None else zero for v in raw])
        if len(buf) != size * len(raw):
            raise ValueError("stored rings of unexpected size: layout version mismatch")
        words = np.frombuffer(buf, dtype="<i8").reshape(len(raw), size // 8)
        w = self.slot_size // 8
        return present, [words[:, r.offset // 8: r.offset // 8 + r.slots * w].reshape(len(raw), r.slots, w)
                         for r in self.rings]

    def decode_lists(self, li: int, raw: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(present (N,), offsets (N+1,) into the entries, entry ts (E,), entry values (E,) or list of str)."""
        present = np.fromiter((v is not None for v in raw), dtype=bool, count=len(raw))
        rows = [v or b"" for v in raw]
        lst = self.lists[li]
        if lst.entry_size:
            lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)) // lst.entry_size
            arr = np.frombuffer(b"".join(rows), dtype=self._entry_np[li])
            offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            return present, offsets, arr["ts"], arr["v"]
        ts: list[int] = []
        vals: list[str] = []
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        for i, r in enumerate(rows):
            for t, v in self.list_entries(li, r):
                ts.append(t)
                vals.append(v)
            offsets[i + 1] = len(ts)
        return present, offsets, np.asarray(ts, dtype=np.int64), np.asarray(vals, dtype=object)
