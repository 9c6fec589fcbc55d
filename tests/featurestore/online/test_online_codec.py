"""The packed-row codec on its own: exact bytes, validation, bulk decode speed."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from featurestore.definitions import Feature, ValueType
from featurestore.online.codec import RowCodec

FLOATS = tuple(Feature(f"f{i}", ValueType.FLOAT64) for i in range(20))


def test_fixed_rows_have_one_size_and_big_endian_time() -> None:
    codec = RowCodec(FLOATS)
    batch = pa.table({f.name: np.arange(3, dtype=float) + i for i, f in enumerate(FLOATS)})
    rows = codec.encode(batch, np.array([1, 2, 3], dtype=np.int64))
    assert {len(r) for r in rows} == {8 + 3 + 20 * 8}
    assert rows[2][:8] == (3).to_bytes(8, "big")  # what the write script compares


def test_varlen_and_list_null_elements() -> None:
    codec = RowCodec((Feature("s", ValueType.STRING), Feature("il", ValueType.INT64_LIST),
                      Feature("fl", ValueType.FLOAT_LIST), Feature("x", ValueType.INT64)))
    batch = pa.table({"s": ["a", None, "ccc"], "il": [[1, None], None, []], "fl": [[None], [2.0], None],
                      "x": [1, 2, 3]}).slice(1)  # a sliced batch: offsets must be honoured
    rows = codec.encode(batch, np.array([5, 6], dtype=np.int64))
    dec = codec.decode([rows[1], None, rows[0]], [0, 1, 2, 3])
    assert dec.present.tolist() == [0, 2]
    assert dec.nulls.tolist() == [[False, False, True, False], [True, True, False, False]]
    assert dec.values[0] == ["ccc", ""] and dec.values[3].tolist() == [3, 2]
    assert dec.values[2][1].tolist() == [2.0]
    full = codec.decode(codec.encode(pa.table({"s": ["z"], "il": [[1, None]], "fl": [[None]], "x": [0]}),
                                     np.array([1], dtype=np.int64)), [1, 2])
    assert full.values[0][0].tolist() == [1, 0]  # a null inside an int list is stored as 0
    assert np.isnan(full.values[1][0][0])  # ... inside a float list as NaN


def test_embedding_dim_and_missing_columns_are_checked() -> None:
    codec = RowCodec((Feature("e", ValueType.FLOAT_LIST, dim=3),))
    with pytest.raises(ValueError, match="dim 3"):
        codec.encode(pa.table({"e": [[1.0, 2.0]]}), np.array([0], dtype=np.int64))
    with pytest.raises(KeyError, match="'e'"):
        codec.encode(pa.table({"other": [1]}), np.array([0], dtype=np.int64))


def test_bulk_decode_of_1000_rows_x_20_features_is_sub_millisecond() -> None:
    codec = RowCodec(FLOATS)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((20, 1000))
    rows = codec.encode(pa.table({f.name: data[i] for i, f in enumerate(FLOATS)}), np.arange(1000, dtype=np.int64))
    raw = [r if i % 10 else None for i, r in enumerate(rows)]  # 10% missing
    best = float("inf")
    for _ in range(30):
        t0 = time.perf_counter()
        dec = codec.decode(raw, range(20))
        best = min(best, time.perf_counter() - t0)
    keep = [i for i in range(1000) if i % 10]
    assert np.array_equal(np.stack(dec.values, axis=0), data[:, keep])
    assert best < 1e-3, f"decode took {best * 1e3:.2f} ms"
