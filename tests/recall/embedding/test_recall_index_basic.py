"""ItemIndex: exact flat search, HNSW and IVF-PQ quality on clustered data, ids, save/load, parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recall.index import IndexParams, ItemIndex, exact_search, recall_at_k


def _brute(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(s, top, axis=1)


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_flat_is_exact(metric: str, make_clustered) -> None:
    x, q = make_clustered(2000, 16)
    ids = np.arange(2000, dtype=np.int64) * 10 + 5
    index = ItemIndex.build(x, ids, IndexParams(kind="flat", metric=metric))
    found, scores = index.search(q, 20)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rows, want = _brute(x, q, 20)
    np.testing.assert_array_equal(found, ids[rows])
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
    assert found.dtype == np.int64 and scores.dtype == np.float32


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_ann_recall_on_clustered_data(kind: str, metric: str, make_clustered) -> None:
    x, q = make_clustered(3000, 16, clusters=30)
    truth, _ = exact_search(x, q, 50, metric)
    params = IndexParams(kind=kind, metric=metric, hnsw_ef_search=128, ivf_nlist=32, ivf_nprobe=8, pq_m=8, pq_nbits=6,
                         refine_factor=4)
    index = ItemIndex.build(x, None, params)
    found, scores = index.search(q, 50)
    assert recall_at_k(found, truth) >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-4), "scores come back best first"


def test_hnsw_inner_product_scores_are_inner_products(make_clustered) -> None:
    """The L2 lift for inner product is undone on the way out: scores equal q . x of the returned items."""
    x, q = make_clustered(3000, 16)
    index = ItemIndex.build(x, None, IndexParams(kind="hnsw", metric="ip"))
    found, scores = index.search(q, 10)
    want = np.einsum("qd,qkd->qk", q, x[found])
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-3)


def test_fewer_items_than_k_pads_with_minus_one(make_clustered) -> None:
    x, q = make_clustered(5, 8)
    for kind in ("flat", "hnsw"):
        ids, scores = ItemIndex.build(x, np.array([11, 12, 13, 14, 15]), kind=kind).search(q[:2], 8)
        assert ids.shape == (2, 8)
        assert set(ids[0, :5].tolist()) == {11, 12, 13, 14, 15}
        assert np.all(ids[:, 5:] == -1) and np.all(np.isneginf(scores[:, 5:]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "ivfpq_fastscan"])
def test_save_load_round_trip(kind: str, tmp_path: Path, make_clustered) -> None:
    x, q = make_clustered(3000, 16)
    ids = np.arange(3000, dtype=np.int64) + 1000
    index = ItemIndex.build(x, ids, IndexParams(kind=kind, ivf_nlist=32, pq_m=4, pq_nbits=6, hnsw_ef_search=64))
    index.save(tmp_path)
    back = ItemIndex.load(tmp_path)
    assert (back.kind, back.metric, back.dim, len(back)) == (kind, "ip", 16, 3000)
    assert back.params == index.params
    a, sa = index.search(q, 10)
    b, sb = back.search(q, 10)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb)


def test_search_params_change_results_quality(make_clustered) -> None:
    x, q = make_clustered(3000, 16, clusters=30)
    truth, _ = exact_search(x, q, 50)
    index = ItemIndex.build(x, None, IndexParams(kind="ivfpq", ivf_nlist=64, ivf_nprobe=1, pq_m=4, pq_nbits=6, refine_factor=1))
    low = recall_at_k(index.search(q, 50)[0], truth)
    index.set_search_params(nprobe=64, refine_factor=8)
    high = recall_at_k(index.search(q, 50)[0], truth)
    assert high > low and high >= 0.9


def test_params_from_config_and_validation(config) -> None:
    p = IndexParams.from_config(config.recall)
    assert p.kind == config.recall.index_kind and p.hnsw_ef_search == config.recall.hnsw_ef_search
    assert IndexParams.from_config(config.recall, kind="flat").kind == "flat"
    with pytest.raises(ValueError, match="kind"):
        IndexParams(kind="annoy")
    with pytest.raises(ValueError, match="metric"):
        IndexParams(metric="l1")
    index = ItemIndex.build(np.eye(4, dtype=np.float32), None, kind="flat")
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones((1, 3), np.float32), 2)
    with pytest.raises(ValueError, match="unique"):
        ItemIndex.build(np.eye(4, dtype=np.float32), np.array([1, 1, 2, 3]), kind="flat")


def test_auto_kind_is_exact_for_small_catalogues_and_fastscan_for_large(make_clustered) -> None:
    x, q = make_clustered(3000, 16, clusters=30)
    small = ItemIndex.build(x, None, IndexParams(kind="auto", auto_flat_max_items=5000))
    assert small.kind == "flat"
    assert np.array_equal(small.search(q, 10)[0], exact_search(x, q, 10)[0])
    large = ItemIndex.build(x, None, IndexParams(kind="auto", auto_flat_max_items=1000, ivf_nlist=32, ivf_nprobe=32,
                                                 fastscan_pq_m=8))
    assert large.kind == "ivfpq_fastscan"
    assert recall_at_k(large.search(q, 10)[0], exact_search(x, q, 10)[0]) >= 0.9
    assert IndexParams(kind="auto").resolved(10**6).kind == "ivfpq_fastscan"


def test_large_k_searches_shrink_the_refine_factor_to_the_budget(make_clustered) -> None:
    x, q = make_clustered(4000, 16, clusters=40)
    index = ItemIndex.build(x, None, IndexParams(kind="ivfpq", ivf_nlist=32, ivf_nprobe=8, pq_m=4, refine_factor=16,
                                                 refine_budget=800))
    assert index.refine_factor_for(10) == 16 and index.refine_factor_for(200) == 4 and index.refine_factor_for(5000) == 2
    big = index.search(q, 200)[0]
    same = ItemIndex.build(x, None, IndexParams(kind="ivfpq", ivf_nlist=32, ivf_nprobe=8, pq_m=4, refine_factor=4,
                                                refine_budget=10**9))
    assert np.array_equal(big, same.search(q, 200)[0])
    truth = exact_search(x, q, 200)[0]
    assert recall_at_k(big, truth) >= 0.8
