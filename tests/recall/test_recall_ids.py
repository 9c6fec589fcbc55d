"""Id -> position tables (dense ids) answer as the binary search they replace does."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recall.categories import ItemCategories
from recall.ids import dense_slots, lookup_slots


def test_id_tables_match_the_binary_search():
    ids = np.asarray([0, 3, 4, 10, 11], dtype=np.int64)
    table = dense_slots(ids)
    probe = np.asarray([-5, 0, 1, 3, 4, 10, 11, 12, 10**12], dtype=np.int64)
    assert lookup_slots(table, probe).tolist() == [-1, 0, -1, 1, 2, 3, 4, -1, -1]
    assert dense_slots(np.asarray([1, 10**9], dtype=np.int64)) is None  # too sparse: callers binary-search
    assert dense_slots(np.asarray([-1, 2], dtype=np.int64)) is None
    cats = ItemCategories.from_table(pa.table({"item_id": [5, 7, 7, 9], "category": ["a", "b", "c", "a"]}))
    sparse = ItemCategories.from_table(pa.table({"item_id": [5 * 10**9, 7 * 10**9, 7 * 10**9, 9 * 10**9],
                                                 "category": ["a", "b", "c", "a"]}))
    assert cats._slot is not None and sparse._slot is None
    assert cats.of_many([7, 8, 5, -1]) == sparse.of_many([7 * 10**9, 8 * 10**9, 5 * 10**9, -1]) == [["b", "c"], [], ["a"], []]
