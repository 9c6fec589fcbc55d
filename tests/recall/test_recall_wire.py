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
