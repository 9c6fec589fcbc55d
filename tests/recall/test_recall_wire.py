"""The bulk wire encoding of RecallResponse.candidates parses to the same message protobuf builds."""

from __future__ import annotations

import numpy as np
import pytest

from proto.cascade.v1 import recall_pb2
from recall.merge import RecallResult
from recall.service import RecallServicer
from recall.wire import encode_candidates


@pytest.mark.parametrize("n, max_channels, id_hi", [(0, 3, 10), (1, 1, 10), (7, 3, 10**12), (1000, 4, 10**6), (300, 6, 2**62)])
def test_bulk_encoding_equals_the_message(n, max_channels, id_hi):
    rng = np.random.default_rng(n)
    items = rng.integers(-id_hi, id_hi, n)
    merged = np.sort(rng.random(n))[::-1]
    counts = rng.integers(0, max_channels + 1, n)  # 0 attributions too, and many (long candidates: 2-byte lengths)
    off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(off[-1])
    names = ("embedding", "item2item", "popular", "fresh", "c" * 64, "é")
    chan = rng.integers(0, len(names), m).astype(np.int32)
    score = rng.standard_normal(m)
    score[: min(m, 2)] = 0.0
    rank = rng.integers(0, 20_000, m).astype(np.int32)  # 1-, 2- and 3-byte varints
    res = RecallResult(items, merged, off, chan, score, rank, names)
    expect = recall_pb2.RecallResponse(candidates=RecallServicer.candidates(res))
    got = recall_pb2.RecallResponse.FromString(encode_candidates(items, merged, off, chan, score, rank, names))
    assert got == expect
    # messages concatenate: candidates in bulk + the rest of the response
    rest = recall_pb2.RecallResponse(degraded=True, index_version="v1")
    whole = recall_pb2.RecallResponse.FromString(encode_candidates(items, merged, off, chan, score, rank, names) + rest.SerializeToString())
    assert list(whole.candidates) == list(expect.candidates) and whole.degraded and whole.index_version == "v1"


@pytest.mark.parametrize("items", [
    [0, 9, 10, 99, 100, 9999, 10_000, 10_001, 123_456_789, 10**15, 10**16 - 1, 2**63 - 1],
    list(range(0, 2000, 7)),
    [5],
])
def test_non_negative_ids_are_written_four_digits_at_a_time(items):
    items = np.asarray(items, dtype=np.int64)
    n = items.size
    off = np.arange(n + 1, dtype=np.int64)
    chan = np.zeros(n, np.int32)
    score, rank, merged = np.ones(n), np.arange(n, dtype=np.int32), np.linspace(1, 0, n)
    res = RecallResult(items, merged, off, chan, score, rank, ("embedding",))
    got = recall_pb2.RecallResponse.FromString(encode_candidates(items, merged, off, chan, score, rank, ("embedding",)))
    assert [c.item_id for c in got.candidates] == [str(i) for i in items.tolist()]
    assert got == recall_pb2.RecallResponse(candidates=RecallServicer.candidates(res))
