"""`RequestFeatureView` offline: the same Python function the server calls, over label columns.

The function takes a mapping of its `inputs` to values and returns a mapping of
feature values; offline each label row is one call, with the row's values as
Python objects (what `to_pylist` gives: int, float, str, datetime, None).

Vectorised fast path: when every input column is numeric or boolean and has no
nulls, the function is first called once with whole numpy columns. Its result
is used only if every requested feature comes back as an array of one value
per row AND those values equal what the row-wise calls give on a sample of
rows (first, last and up to 62 spread between). Anything else (an exception,
a scalar, a mismatch) falls back to row-wise calls, so the answer is always
that of the row-wise definition; vectorising only makes it faster. A row-wise
call that raises fails the whole call, naming the row and its inputs (the
server would fail on that request too; a silent NULL would hide the bug).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore.definitions import RequestFeatureView
from featurestore.offline._sql import ARROW_TYPE

_SAMPLE = 64


def _vectorisable(column: pa.ChunkedArray) -> bool:
    t = column.type
    return column.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(b, np.generic):
        b = b.item()
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _row_call(view: RequestFeatureView, columns: dict[str, list[Any]], i: int) -> Any:
    inputs = {name: values[i] for name, values in columns.items()}
    try:
        return view.function(inputs)
    except Exception as exc:  # the server would fail on this request too: say which row, don't invent a NULL
        raise ValueError(f"request view {view.name!r}: function failed on label row {i} with inputs {inputs}: {exc!r}") from exc


def compute(view: RequestFeatureView, labels: pa.Table, names: Sequence[str]) -> list[pa.Array]:
    """The requested features of `view` for every row of `labels`, as Arrow arrays of the declared types."""
    missing = [c for c in view.inputs if c not in labels.column_names]
    if missing:
        raise ValueError(f"request view {view.name!r} needs label columns {missing}")
    feats = {f.name: f for f in view.features}
    n = labels.num_rows
    if n == 0:
        return [pa.array([], type=ARROW_TYPE[feats[name].dtype]) for name in names]
    vectors = _try_vectorised(view, labels, names)
    if vectors is not None:
        return [pa.array(vectors[name], type=ARROW_TYPE[feats[name].dtype]) for name in names]
    cols = {c: labels.column(c).to_pylist() for c in view.inputs}
    out: dict[str, list[Any]] = {name: [None] * n for name in names}
    for i in range(n):
        result = _row_call(view, cols, i) or {}
        for name in names:
            value = result.get(name)
            out[name][i] = value.item() if isinstance(value, np.generic) else value
    return [pa.array(out[name], type=ARROW_TYPE[feats[name].dtype]) for name in names]


def _try_vectorised(view: RequestFeatureView, labels: pa.Table, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    n = labels.num_rows
    if not view.inputs or not all(_vectorisable(labels.column(c)) for c in view.inputs):
        return None
    dtypes = {f.name: f.dtype for f in view.features}
    if any(dtypes[name].is_list for name in names):
        return None
    try:
        result = view.function({c: labels.column(c).to_numpy() for c in view.inputs})
        vectors = {name: np.asarray(result[name]) for name in names}
    except Exception:  # noqa: BLE001 - any failure means "not vectorisable": use the row-wise definition
        return None
    if any(v.shape != (n,) for v in vectors.values()):
        return None
    sample = sorted(set(np.linspace(0, n - 1, num=min(n, _SAMPLE)).astype(int).tolist()))
    for i in sample:
        expected = view.function({c: labels.column(c)[i].as_py() for c in view.inputs}) or {}
        if not all(_same(vectors[name][i], expected.get(name)) for name in names):
            return None
    return vectors
