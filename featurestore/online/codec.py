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

`TileCodec` does the same for a `WindowedFeatureView`'s ring of tiles.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.definitions import AggregationFunction, Feature, ValueType, WindowedFeatureView

CODEC_VERSION = 1

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
    """Rows found by a read, decoded column-wise (only the requested features)."""

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
    def decode(self, raw: Sequence[bytes | None], wanted: Sequence[int]) -> DecodedRows:
        """Decode the stored rows (None = no row) for the feature positions `wanted`."""
        fsize = self.fixed_size
        buf = None
        if not self.varlen:
            try:  # all found (the common case): no per-row Python work at all
                buf = b"".join(raw)
                present, rows = range(len(raw)), raw
            except TypeError:  # some None
                pass
        if buf is None:
            present = [i for i, v in enumerate(raw) if v is not None]
            rows = [raw[i] for i in present]
            buf = b"".join([r[:fsize] for r in rows]) if self.varlen else b"".join(rows)
        if not self.varlen and len(buf) != fsize * len(rows):
            raise ValueError("stored row of unexpected size: layout version mismatch")
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
                mat = np.ndarray((len(rows), len(run)), dtype=dt, buffer=buf, offset=self._scalar[j0][0],
                                 strides=(fsize, 8))
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
                col = rec[f"f{j}"]
                values[r] = col.view(bool) if f.dtype is ValueType.BOOL else np.ascontiguousarray(col)
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
        return [_decode_string_list(r[s:e]) if e > s else [] for r, s, e in zip(rows, s_list, e_list)]


# ---------------------------------------------------------------------- tiles

EMPTY_TILE = -(2**62)  # tile index of a slot that holds no tile (exact as a Lua double)

# Columns of a tiles table (`OnlineStore.write_tiles`, `OfflineStore.tiles`), besides the join keys.
TILE_START = "tile_start"
TILE_COUNT = "count"
SUM_SUFFIX = "_sum"  # f"{column}_sum": float64 sum of the non-null values in the tile
NONNULL_SUFFIX = "_count"  # f"{column}_count": int64 number of non-null values in the tile
LAST_SUFFIX = "_last_n"  # f"{column}_last_n": list of up to n most recent non-null values, oldest first
LAST_TS_SUFFIX = "_last_n_ts"  # optional: their timestamps (list<timestamp>); tile_start when absent

_LAST_ELEM = {ValueType.INT64_LIST: ("<i8", 8), ValueType.FLOAT_LIST: ("<f8", 8), ValueType.STRING_LIST: (None, 0)}
_ENTRY_HEAD = struct.Struct("<qI")  # ts micros, value length


@dataclass(frozen=True)
class WindowOutput:
    name: str
    function: AggregationFunction
    tiles: int  # window length in tiles
    column: str | None
    n: int | None
    dtype: ValueType


class TileCodec:
    """A windowed view's per-entity ring of tiles, packed into one string value.

    Layout: `ring` numeric slots of ('<i8' tile index, '<i8' event count, then per
    summed column '<f8' sum and '<i8' non-null count); then ring x n_last '<u4'
    end offsets; then that many segment bodies, each the entries ('<i8' ts
    micros, '<u4' length, value bytes), oldest first, of one last-n column in
    one slot. The numeric part has a fixed size, so a read decodes it for
    1,000 entities with one `np.frombuffer`; the offset table lets a read parse
    only the segments of tiles inside the window. Slot of tile index t is t mod ring; the
    ring holds the longest window plus one tile, so memory per entity is bounded.
    """

    def __init__(self, view: WindowedFeatureView) -> None:
        self.view = view
        self.tile_us = td_micros(view.tile)
        max_tiles = max(td_micros(w) for a in view.aggregations for w in a.windows) // self.tile_us
        self.ring = max_tiles + 1
        sums: list[str] = []
        last: dict[str, tuple[int, ValueType]] = {}
        outputs: list[WindowOutput] = []
        for agg in view.aggregations:
            if agg.function in (AggregationFunction.SUM, AggregationFunction.MEAN) and agg.column not in sums:
                sums.append(agg.column)
            if agg.function is AggregationFunction.LAST_N:
                dtype = agg.output_type()
                if dtype not in _LAST_ELEM:
                    raise TypeError(f"{view.name}: last_n of type {dtype} is not supported")
                prev = last.get(agg.column)
                if prev and prev[1] is not dtype:
                    raise TypeError(f"{view.name}: two last_n aggregations of {agg.column!r} disagree on type")
                last[agg.column] = (max(agg.n, prev[0] if prev else 0), dtype)
            for name, w in zip(agg.output_names(), agg.windows):
                outputs.append(WindowOutput(name, agg.function, td_micros(w) // self.tile_us, agg.column, agg.n,
                                            agg.output_type()))
        self.sum_columns = tuple(sums)
        self.last_columns = tuple(last)
        self.last_keep = tuple(last[c][0] for c in self.last_columns)
        self.last_types = tuple(last[c][1] for c in self.last_columns)
        elem = {ValueType.INT64_LIST: "<i8", ValueType.FLOAT_LIST: "<f8"}
        self._entry_dtype = tuple(np.dtype([("ts", "<i8"), ("len", "<u4"), ("v", elem[t])]) if t in elem else None
                                  for t in self.last_types)
        self.outputs = tuple(outputs)
        fields: list[tuple] = [("tile", "<i8"), ("count", "<i8")]
        for k in range(len(sums)):
            fields += [(f"s{k}", "<f8"), (f"n{k}", "<i8")]
        self.slot_dtype = np.dtype(fields)
        self.slot_size = self.slot_dtype.itemsize
        self.numeric_size = self.slot_size * self.ring

    # -- element bytes of last-n values
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

    def empty_blob(self) -> bytes:
        slot = np.zeros(self.ring, dtype=self.slot_dtype)
        slot["tile"] = EMPTY_TILE
        return slot.tobytes() + b"\0\0\0\0" * (self.ring * len(self.last_columns))

    def empty_slot(self) -> bytes:
        return self.empty_blob()[: self.slot_size]

    @staticmethod
    def segment(entries: Sequence[tuple[int, bytes]]) -> bytes:
        """A last-n segment as the write scripts take it: '<u4' length, then the entries."""
        body = b"".join(_ENTRY_HEAD.pack(ts, len(v)) + v for ts, v in entries)
        return _U32.pack(len(body)) + body

    def encode_tiles(self, tiles: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, list[bytes], list[bytes]]:
        """(tile indexes, numeric slot bytes, last-n segment bytes) per tile row of a tiles table."""
        n = tiles.num_rows
        start_us = timestamps_us(column(tiles, TILE_START))
        idx = start_us // self.tile_us
        if np.any(idx * self.tile_us != start_us):
            raise ValueError(f"{self.view.name}: tile_start not aligned to the tile of {self.view.tile}")
        rec = np.zeros(n, dtype=self.slot_dtype)
        rec["tile"] = idx
        rec["count"] = pc.fill_null(column(tiles, TILE_COUNT).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        for k, c in enumerate(self.sum_columns):
            rec[f"s{k}"] = pc.fill_null(column(tiles, c + SUM_SUFFIX).cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
            rec[f"n{k}"] = pc.fill_null(column(tiles, c + NONNULL_SUFFIX).cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        numeric = np.frombuffer(rec.tobytes(), dtype=f"V{self.slot_size}").tolist() if n else []
        if not self.last_columns:
            return idx, numeric, [b""] * n
        segs_per_col = []
        for li, c in enumerate(self.last_columns):
            values = column(tiles, c + LAST_SUFFIX).to_pylist()
            names = tiles.schema.names
            if c + LAST_TS_SUFFIX in names:
                ts_col = column(tiles, c + LAST_TS_SUFFIX)
                ts_lists = ts_col.cast(pa.list_(pa.timestamp("us", getattr(ts_col.type.value_type, "tz", None)))).to_pylist()
            else:
                ts_lists = [None] * n
            keep = self.last_keep[li]
            segs = []
            for r in range(n):
                vals = values[r] or []
                tss = ts_lists[r]
                tss_us = [to_micros(t) for t in tss] if tss else [int(start_us[r])] * len(vals)
                entries = [(t, self.elem_bytes(li, v)) for t, v in zip(tss_us, vals) if v is not None][-keep:]
                segs.append(self.segment(entries))
            segs_per_col.append(segs)
        return idx, numeric, [b"".join(s) for s in zip(*segs_per_col)]

    def decode_numeric(self, rows: list[bytes]) -> np.ndarray:
        """(present, ring) structured slots."""
        size = self.numeric_size
        buf = b"".join(rows) if not self.last_columns else b"".join([r[:size] for r in rows])
        return np.frombuffer(buf, dtype=self.slot_dtype).reshape(len(rows), self.ring)

    def last_table(self, rows: Sequence[bytes]) -> np.ndarray:
        """(rows, ring * n_last + 1) int64 segment boundaries: segment k spans [t[k], t[k + 1]) after the table."""
        nseg = self.ring * len(self.last_columns)
        lo = self.numeric_size
        ends = np.frombuffer(b"".join([r[lo: lo + 4 * nseg] for r in rows]), dtype="<u4").reshape(len(rows), nseg)
        out = np.zeros((len(rows), nseg + 1), dtype=np.int64)
        out[:, 1:] = ends
        return out

    def last_n(self, rows: Sequence[bytes], table: np.ndarray, slots: np.ndarray, valid: np.ndarray, li: int, n: int,
               which: Sequence[int]) -> dict[int, list[Any]]:
        """The n most recent values, most recent first (as offline), of last-n column `li` over the ring
        `slots` (oldest first, (k,)) where `valid` (rows, k); for the row positions `which`. Segments
        are read newest first, only as many as needed."""
        nl = len(self.last_columns)
        seg = slots * nl + li
        start, end = table[:, seg], table[:, seg + 1]
        length = np.where(valid, end - start, 0)
        base = self.numeric_size + 4 * self.ring * nl
        out: dict[int, list[Any]] = {}
        dt = self._entry_dtype[li]
        if dt is not None:  # fixed-size entries: count them in numpy, decode with one frombuffer per row
            counts = length // dt.itemsize
            newest_first = np.cumsum(counts[:, ::-1], axis=1)
            k = len(slots)
            enough = newest_first[:, -1] >= n if k else np.zeros(len(rows), bool)
            need = np.where(enough, np.argmax(newest_first >= n, axis=1) + 1, k) if k else np.zeros(len(rows), int)
            for i in which:
                m = int(need[i])
                s_i, e_i, l_i = start[i, k - m:].tolist(), end[i, k - m:].tolist(), length[i, k - m:].tolist()
                blob = rows[i]
                parts = [blob[base + a: base + b] for a, b, ln in zip(s_i, e_i, l_i) if ln]
                arr = np.frombuffer(b"".join(parts), dtype=dt)
                out[i] = arr["v"][::-1][:n].tolist()  # most recent first
            return out
        for i in which:  # variable-size entries (strings): walk segments newest first until n values
            got: list[list[tuple[int, bytes]]] = []
            total = 0
            s_i, e_i, l_i = start[i].tolist(), end[i].tolist(), length[i].tolist()
            for a, b, ln in zip(reversed(s_i), reversed(e_i), reversed(l_i)):
                if not ln:
                    continue
                entries = self._parse_entries(rows[i], base + a, base + b)
                got.append(entries)
                total += len(entries)
                if total >= n:
                    break
            newest_first = [e for entries in got for e in reversed(entries)]
            out[i] = [self.elem_value(li, v) for _, v in newest_first[:n]]
        return out

    @staticmethod
    def _parse_entries(blob: bytes, pos: int, end: int) -> list[tuple[int, bytes]]:
        out = []
        while pos < end:
            ts, vlen = _ENTRY_HEAD.unpack_from(blob, pos)
            pos += _ENTRY_HEAD.size
            out.append((ts, blob[pos: pos + vlen]))
            pos += vlen
        return out

    def last_entries(self, blob: bytes, slot: int, li: int, ends: np.ndarray | None = None) -> list[tuple[int, bytes]]:
        """Entries (ts micros, value bytes), oldest first, of last-n column `li` in ring slot `slot`."""
        nl = len(self.last_columns)
        if ends is None:
            ends = self.last_ends(blob)
        k = slot * nl + li
        start = int(ends[k - 1]) if k else 0
        end = int(ends[k])
        if end == start:
            return []
        base = self.numeric_size + 4 * self.ring * nl
        pos, end = base + start, base + end
        out = []
        while pos < end:
            ts, vlen = _ENTRY_HEAD.unpack_from(blob, pos)
            pos += _ENTRY_HEAD.size
            out.append((ts, blob[pos: pos + vlen]))
            pos += vlen
        return out

    def last_ends(self, blob: bytes) -> np.ndarray:
        """End offsets of the ring x n_last segment bodies (relative to the first body)."""
        return np.frombuffer(blob, dtype="<u4", count=self.ring * len(self.last_columns), offset=self.numeric_size)
