"""ItemIndex kind ``ivfpq_fastscan`` (IVF-PQ with 4-bit FastScan codes): quality, parameters, artifact round trip."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from cascade.config import Config
from recall.artifacts import load_artifact, read_manifest, verify_artifact, write_artifact
from recall.index import IndexParams, ItemIndex, exact_search, recall_at_k


@pytest.mark.parametrize("by_residual", [False, True])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_fastscan_recall_on_clustered_data(metric: str, by_residual: bool, make_clustered) -> None:
    x, q = make_clustered(3000, 16, clusters=30)
    truth, _ = exact_search(x, q, 50, metric)
    params = IndexParams(kind="ivfpq_fastscan", metric=metric, ivf_nlist=32, ivf_nprobe=8, fastscan_pq_m=8,
                         fastscan_by_residual=by_residual, refine_factor=4)
    index = ItemIndex.build(x, None, params)
    base = faiss.downcast_index(index.faiss_index.base_index)
    assert isinstance(base, faiss.IndexIVFPQFastScan) and base.pq.nbits == 4 and base.by_residual == by_residual
    found, scores = index.search(q, 50)
    assert recall_at_k(found, truth) >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-4), "scores come back best first"


def test_fastscan_without_refinement_still_finds_neighbours(make_clustered) -> None:
    x, q = make_clustered(3000, 16, clusters=30)
    truth, _ = exact_search(x, q, 20)
    index = ItemIndex.build(x, None, IndexParams(kind="ivfpq_fastscan", ivf_nlist=32, ivf_nprobe=32, fastscan_pq_m=16,
                                                 refine_factor=0))
    assert isinstance(index.faiss_index, faiss.IndexIVFPQFastScan)
    assert recall_at_k(index.search(q, 20)[0], truth) >= 0.6  # 4-bit codes alone: approximate scores


def test_fastscan_search_params_and_k_covering_everything(make_clustered) -> None:
    x, q = make_clustered(1000, 16, clusters=10)
    ids = np.arange(1000, dtype=np.int64) + 500
    index = ItemIndex.build(x, ids, IndexParams(kind="ivfpq_fastscan", ivf_nlist=16, ivf_nprobe=2))
    ivf = faiss.extract_index_ivf(faiss.downcast_index(index.faiss_index.base_index))
    assert ivf.nprobe == 2
    index.set_search_params(nprobe=64, refine_factor=8)
    assert ivf.nprobe == 16 and index.faiss_index.k_factor == 8.0  # nprobe capped at the number of lists
    everything, _ = index.search(q[:3], 1000)  # k >= items: an exact scan of the stored vectors
    assert all(set(row) == set(ids) for row in everything)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_fastscan_tiny_catalogues(n: int, make_clustered) -> None:
    x, q = make_clustered(n, 8)
    found, _ = ItemIndex.build(x, None, IndexParams(kind="ivfpq_fastscan")).search(q[:2], 3)
    assert found.shape == (2, 3) and set(found[0][found[0] >= 0]) <= set(range(n)) and (found[0] >= 0).sum() == min(n, 3)


def test_fastscan_params_come_from_config() -> None:
    rc = Config().recall.model_copy(update={"index_kind": "ivfpq_fastscan", "fastscan_pq_m": 16, "fastscan_bbs": 64,
                                            "fastscan_by_residual": True})
    params = IndexParams.from_config(rc)
    assert (params.kind, params.fastscan_pq_m, params.fastscan_bbs, params.fastscan_by_residual) == (
        "ivfpq_fastscan", 16, 64, True)
    with pytest.raises(ValueError):
        IndexParams(kind="ivfpq_fastscan", fastscan_bbs=48)


def test_fastscan_artifact_round_trip(tmp_path: Path, make_encoder, make_clustered) -> None:
    x, q = make_clustered(2000, 16, clusters=20)
    ids = np.arange(2000, dtype=np.int64) * 3 + 1
    index = ItemIndex.build(x, ids, IndexParams(kind="ivfpq_fastscan", ivf_nlist=16, ivf_nprobe=4, fastscan_pq_m=8,
                                                fastscan_bbs=64, fastscan_by_residual=True))
    path = write_artifact(tmp_path, index, make_encoder(dim=16, seed=1), build={"seed": 1})
    manifest = read_manifest(path)
    assert manifest["index"]["kind"] == "ivfpq_fastscan"
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    verify_artifact(path)
    art = load_artifact(path)
    loaded = art.index
    assert loaded.params == index.params and len(loaded) == 2000
    assert loaded.info.effective["bbs"] == 64 and loaded.info.effective["by_residual"] is True
    base = faiss.downcast_index(loaded.faiss_index.base_index)
    assert isinstance(base, faiss.IndexIVFPQFastScan) and base.nprobe == 4 and base.bbs == 64
    want_ids, want_scores = index.search(q, 30)
    got_ids, got_scores = loaded.search(q, 30)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
    truth, _ = exact_search(x, q, 30, ids=ids)
    assert recall_at_k(got_ids, truth) >= 0.9
