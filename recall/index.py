"""`ItemIndex`: item vectors behind a narrow FAISS API (build, search, save, load).

Kinds (``RecallConfig.index_kind``):

``auto`` (the default)
    Resolved at build time from the catalogue size: ``flat`` up to
    ``auto_flat_max_items`` (exact and still well under a millisecond),
    ``ivfpq_fastscan`` above. Why not HNSW: ``./run bench ann`` (clustered 64-d vectors, one thread
    per query) measured IVF-PQ with exact refinement ahead at every size tried:
    200k items, nprobe 32 / refine 16 gave recall@100 0.965 at p99 1.05 ms while
    HNSW (M 32, efConstruction 80) needed efSearch 1024 for 0.968 at p99 2.25 ms;
    at 1M items nprobe 128 / refine 16 gave 0.963 at p99 1.50 ms and HNSW missed
    the 0.95 @ 2 ms goal, after a ~10 min build against ~1 min for IVF-PQ.
    Why FastScan over 8-bit IVF-PQ: the same lists and settings (4096 lists, nprobe
    128, refine 16, refine budget 2000) on ``bench.ann.make_data(1_000_000, 4096)``
    (2,000 queries for recall, 1,000 single queries on one thread for latency, the two
    indexes taking turns in blocks of 20 queries in one run; quick runs by hand on the
    shared 2-core machine, load average ~1.4-1.6): 64 x 4-bit codes (by residual) gave
    recall@100 0.981 vs 0.963 at p50 1.20 vs 1.86 ms, p99 2.12 vs 2.87 ms; at k = 830
    (the embedding channel's ask in a 1,000-candidate recall_service request)
    recall@830 0.961 vs 0.916 at p50 1.36 vs 2.28 ms, p99 2.60 vs 3.72 ms. On the
    recall_service catalogue's own 1M vectors (generator latents, queries the mean of
    a user's last 20 clicks, same run): recall@830 0.980 vs 0.973, p50 1.54 vs 2.43 ms,
    p99 2.72 vs 3.74 ms. 32 x 4-bit codes (the 16 bytes of ivfpq's 16 x 8) were fast
    but reached only recall@100 0.90 (0.92 by residual) at nprobe 128. Not a win
    everywhere: on ``bench ann --quick`` (200k items, 1024 lists, so nprobe 128 scans an
    eighth of them) p50 was 0.68x at both k but p99 worse (k = 100: 3.0 vs 2.8 ms,
    k = 830: 4.7 vs 4.0 ms, quiet machine); FAISS's other FastScan search
    implementations (``implem`` 10, 12, 14) were slower than its default at both sizes.

``flat``
    Exact search (``IndexFlatIP``): the ground truth, and fine up to ~100k items.
``hnsw``
    ``IndexHNSWFlat`` (graph over the full vectors). Inner product is not a metric,
    so for ``metric="ip"`` the vectors are lifted to L2 with one extra coordinate
    (Bachrach et al. 2014): ``x' = [x, sqrt(M^2 - |x|^2)]`` with M the largest item
    norm, ``q' = [q, 0]``; then ``|q' - x'|^2 = |q|^2 + M^2 - 2 q.x``, so the L2
    neighbours are exactly the inner-product ones and the graph search keeps its
    metric guarantees. Scores come back as inner products.
``ivfpq``
    ``IndexIVFPQ`` (``ivf_nlist`` lists, ``pq_m`` sub-quantizers of 8 bits) wrapped
    in ``IndexRefineFlat``: the PQ scan proposes ``refine_factor * k`` candidates
    and the exact vectors re-rank them (the memory of the full vectors is the price).
``ivfpq_fastscan``
    ``IndexIVFPQFastScan`` (the same lists, nprobe and exact re-ranking as ``ivfpq``;
    ``fastscan_pq_m`` sub-quantizers of 4 bits, codes laid out in blocks of
    ``fastscan_bbs`` and scored with SIMD in-register lookup tables of 8-bit
    distances). The 4-bit codes are coarser, so it takes more of them (64 x 4 bits,
    32 bytes, against ivfpq's 16 x 8 bits) and relies on the re-ranking.

``metric="cosine"`` L2-normalises items and queries, after which it is inner
product on unit vectors (ranked by L2 on the same vectors, no lift needed).

Ids are the caller's int64 item ids; FAISS's internal row numbers never leave
this module. ``search`` returns ``(ids, scores)`` of shape ``(n, k)``, best first;
when fewer than k items exist the tail holds id -1 and score -inf.

Concurrency: searches on one index may run in many threads at once (FAISS
search is read-only). ``set_search_params`` mutates the index: call it before
serving, never during searches. FAISS's OpenMP thread count is process-wide
(``faiss.omp_set_num_threads``): serving sets it to 1 per query (see the
embedding channel); building leaves it at the machine's cores.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

KINDS = ("flat", "hnsw", "ivfpq", "ivfpq_fastscan")
_IVF_KINDS = ("ivfpq", "ivfpq_fastscan")
AUTO = "auto"  # resolved to one of KINDS by catalogue size at build time
METRICS = ("ip", "cosine")
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index.json"
_ADD_CHUNK = 50_000  # vectors per add() call (progress granularity)
_SMALL_BUILD = 50_000  # builds below this many vectors run single-threaded


@dataclass(frozen=True)
class IndexParams:
    """How to build and search an index; `from_config` reads ``RecallConfig``."""

    kind: str = AUTO
    metric: str = "ip"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 4096
    ivf_nprobe: int = 32
    pq_m: int = 16
    pq_nbits: int = 8
    refine_factor: int = 16  # ivfpq: PQ candidates per result re-ranked exactly (0: no re-ranking)
    refine_budget: int = 2000  # ivfpq: ...but no more than about this many in all (large k: factor shrinks, >= 2)
    auto_flat_max_items: int = 20_000  # auto: exact search up to this many items, IVF-PQ FastScan above
    fastscan_pq_m: int = 64  # ivfpq_fastscan: 4-bit sub-quantizers (64 x 4 bits = 32 code bytes; 32 x 4 lost recall)
    fastscan_bbs: int = 32  # ivfpq_fastscan: codes per SIMD block (a multiple of 32)
    fastscan_by_residual: bool = True  # ivfpq_fastscan: encode residuals to the list centroid (FAISS "x4fsr")

    def __post_init__(self) -> None:
        if self.kind not in KINDS + (AUTO,):
            raise ValueError(f"index kind must be one of {KINDS + (AUTO,)}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe", "pq_m", "pq_nbits",
                     "fastscan_pq_m"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"IndexParams.{name} must be positive")
        if self.refine_factor < 0:
            raise ValueError("IndexParams.refine_factor must be >= 0")
        if self.fastscan_bbs <= 0 or self.fastscan_bbs % 32:
            raise ValueError("IndexParams.fastscan_bbs must be a positive multiple of 32")

    @classmethod
    def from_config(cls, recall_config: Any, **overrides: Any) -> IndexParams:
        """Parameters from ``config.recall`` (fields it lacks keep their defaults), then `overrides`."""
        values = {f: getattr(recall_config, name) for f, name in _CONFIG_FIELDS.items() if hasattr(recall_config, name)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, n_items: int) -> IndexParams:
        """The concrete kind for a catalogue of `n_items` (``auto`` picks by size; others stay)."""
        if self.kind != AUTO:
            return self
        return replace(self, kind="flat" if n_items <= self.auto_flat_max_items else "ivfpq_fastscan")


_CONFIG_FIELDS = {
    "kind": "index_kind", "metric": "metric", "hnsw_m": "hnsw_m", "hnsw_ef_construction": "hnsw_ef_construction",
    "hnsw_ef_search": "hnsw_ef_search", "ivf_nlist": "ivf_nlist", "ivf_nprobe": "ivf_nprobe", "pq_m": "pq_m",
    "refine_factor": "ivf_refine_factor", "refine_budget": "ivf_refine_budget", "auto_flat_max_items": "auto_flat_max_items",
    "fastscan_pq_m": "fastscan_pq_m", "fastscan_bbs": "fastscan_bbs", "fastscan_by_residual": "fastscan_by_residual",
}


@dataclass
class BuildInfo:
    """What a build did (kept in ``index.json`` and the artifact manifest)."""

    build_s: float = 0.0
    train_s: float = 0.0
    effective: dict[str, Any] = field(default_factory=dict)  # parameters after fitting to the data (nlist, nbits, ...)


def _as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"expected a (n, dim) matrix, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got {a.shape[1]}")
    return np.ascontiguousarray(a)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _pq_m_for(dim: int, want: int) -> int:
    """The largest divisor of `dim` not above `want` (PQ needs equal sub-vectors)."""
    for m in range(min(want, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


class ItemIndex:
    """Item vectors searchable by inner product or cosine; see the module docstring."""

    def __init__(self, index: faiss.Index, ids: np.ndarray, params: IndexParams, dim: int, *,
                 max_norm: float = 0.0, info: BuildInfo | None = None) -> None:
        self._index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        self.params = params
        self.dim = int(dim)
        self.max_norm = float(max_norm)
        self.info = info or BuildInfo()
        self._lifted = params.kind == "hnsw" and params.metric == "ip"
        self._exact: faiss.Index | None = None  # same vectors and metric, searched exhaustively
        if params.kind == "hnsw":
            self._exact = faiss.downcast_index(faiss.downcast_index(index).storage)
        elif isinstance(index, faiss.IndexRefine):
            self._exact = faiss.downcast_index(index.refine_index)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray | None = None, params: IndexParams | None = None, *,
              progress: bool = False, seed: int = 0, threads: int | None = None, **overrides: Any) -> ItemIndex:
        """Index `vectors` (n, dim) under `ids` (default 0..n-1); `overrides` replace fields of `params`.

        `threads`: FAISS OpenMP threads for the build (restored afterwards; default:
        1 below 50k vectors, where threads cost more than they give on a busy
        machine, else the process's setting).
        """
        params = replace(params or IndexParams(), **overrides) if overrides else (params or IndexParams())
        n_rows = int(np.shape(vectors)[0]) if np.ndim(vectors) == 2 else 1
        if threads is None and n_rows < _SMALL_BUILD:
            threads = 1
        if threads is None:
            return cls._build(vectors, ids, params, progress, seed)
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(int(threads))
        try:
            return cls._build(vectors, ids, params, progress, seed)
        finally:
            faiss.omp_set_num_threads(before)

    @classmethod
    def _build(cls, vectors: np.ndarray, ids: np.ndarray | None, params: IndexParams, progress: bool, seed: int) -> ItemIndex:
        x = _as_matrix(vectors)
        n, dim = x.shape
        ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
        if n and np.unique(ids).size != n:
            raise ValueError("item ids must be unique")
        params = params.resolved(n)
        if params.metric == "cosine":
            x = _normalise(x)
        began = time.perf_counter()
        info = BuildInfo()
        max_norm = 0.0
        if params.kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(dim)
            data = x
        elif params.kind == "hnsw":
            if params.metric == "ip":
                norms = np.linalg.norm(x, axis=1) if n else np.zeros(0, np.float32)
                max_norm = float(norms.max()) if n else 0.0
                data = _lift_items(x, norms, max_norm)
                index = faiss.IndexHNSWFlat(dim + 1, params.hnsw_m, faiss.METRIC_L2)
            else:
                data = x
                index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_L2)
            index.hnsw.efConstruction = params.hnsw_ef_construction
            index.hnsw.efSearch = params.hnsw_ef_search
            info.effective = {"hnsw_m": params.hnsw_m, "ef_construction": params.hnsw_ef_construction}
        else:
            index, info.effective = _ivfpq(x, params) if params.kind == "ivfpq" else _ivfpq_fastscan(x, params)
            data = x
            t = time.perf_counter()
            if n:
                rng = np.random.default_rng(seed)
                sample = x if n <= _train_size(info.effective) else x[np.sort(rng.choice(n, _train_size(info.effective), replace=False))]
                if sample.shape[0] < 1 << info.effective["pq_nbits"]:  # 4-bit codes: 16 centroids need 16 points
                    sample = np.resize(sample, (1 << info.effective["pq_nbits"], dim))
                index.train(sample)
            info.train_s = time.perf_counter() - t
        _add(index, data, progress, f"index {params.kind}")
        info.build_s = time.perf_counter() - began
        out = cls(index, ids, params, dim, max_norm=max_norm, info=info)
        out.set_search_params()
        return out

    # ----------------------------------------------------------------- search
    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None,
                          refine_factor: int | None = None) -> None:
        """Change search-time parameters (not while searches run; see the module docstring)."""
        self.params = replace(self.params, **{k: v for k, v in (("hnsw_ef_search", ef_search), ("ivf_nprobe", nprobe),
                                                                 ("refine_factor", refine_factor)) if v is not None})
        if self.params.kind == "hnsw":
            faiss.downcast_index(self._index).hnsw.efSearch = self.params.hnsw_ef_search
        elif self.params.kind in _IVF_KINDS:
            refine = self._index if isinstance(self._index, faiss.IndexRefine) else None
            base = faiss.downcast_index(refine.base_index) if refine is not None else faiss.downcast_index(self._index)
            faiss.extract_index_ivf(base).nprobe = min(self.params.ivf_nprobe, faiss.extract_index_ivf(base).nlist)
            if refine is not None:
                refine.k_factor = float(max(1, self.params.refine_factor))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores per query, best first: ``(ids int64 (n, k), scores float32 (n, k))``."""
        q = _as_matrix(queries, self.dim)
        k = int(k)
        if k <= 0:
            return np.empty((q.shape[0], 0), np.int64), np.empty((q.shape[0], 0), np.float32)
        if self.params.metric == "cosine":
            q = _normalise(q)
        # Asked for (nearly) everything: scan the stored vectors exactly; a graph walk or a probe of some
        # lists would return fewer than the whole catalogue.
        index = self._exact if k >= len(self) and self._exact is not None else self._index
        if self._lifted:
            qx = np.zeros((q.shape[0], self.dim + 1), dtype=np.float32)
            qx[:, : self.dim] = q
            dist, rows = index.search(qx, k)
            scores = (np.einsum("ij,ij->i", q, q)[:, None] + self.max_norm**2 - dist) * 0.5
        elif self.params.kind == "hnsw":  # cosine: L2 on unit vectors
            dist, rows = index.search(q, k)
            scores = 1.0 - dist * 0.5
        elif index is self._index and isinstance(index, faiss.IndexRefine):
            scores, rows = index.search(q, k, params=self._refine_params(k))
        else:
            scores, rows = index.search(q, k)
        found = rows >= 0
        ids = np.where(found, self.ids[np.where(found, rows, 0)], -1)
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        return ids.astype(np.int64), scores

    def refine_factor_for(self, k: int) -> int:
        """Refine factor of a k-search: the configured one, shrunk to keep about ``refine_budget`` exact re-scores.

        Measured once by hand, not by a recorded benchmark (``bench.ann.make_data(1_000_000, 64)``:
        1M items in 64 clusters, 64-d, nprobe 128, one thread, 100 queries): k = 750 with
        factor 16 took p50 5.0 / p99 11.1 ms for recall@750 0.896; factor 4 took
        2.2 / 4.2 ms for 0.880 -- the heap of k x factor PQ candidates, not the
        exact re-scoring, is what grows. k = 100 keeps 16 (recall@100 0.91 vs 0.79).
        The budget went from 3000 to 2000 so the embedding channel's usual asks (k ~ 750-970
        on the recall_service benchmark) take factor 3, not 4: on that benchmark's 1M-item
        index (nprobe 128, one thread, 200 user queries, also measured by hand, on a busy
        machine) k = 828 took p50 1.68 vs 2.10 ms for recall@828 0.947 vs 0.949, the top 100
        of the list the same (0.985); factor 2 dropped to 0.929. k <= 133 keeps 16.
        """
        factor = max(1, self.params.refine_factor)
        return max(min(factor, 2), min(factor, -(-self.params.refine_budget // max(1, k))))

    def _refine_params(self, k: int) -> Any:
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(self.refine_factor_for(k))
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = min(self.params.ivf_nprobe, faiss.extract_index_ivf(faiss.downcast_index(self._index.base_index)).nlist)
        params.base_index_params = ivf
        return params

    # ------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        return self.params.kind

    @property
    def metric(self) -> str:
        return self.params.metric

    @property
    def faiss_index(self) -> faiss.Index:
        """The underlying FAISS index (for inspection; search through `search`)."""
        return self._index

    def memory_bytes(self) -> int:
        """Size of the serialised index plus the id map: what loading it costs in RAM."""
        return int(faiss.serialize_index(self._index).nbytes) + int(self.ids.nbytes)

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> list[Path]:
        """Write ``index.faiss``, ``ids.npy`` and ``index.json`` into `directory`; returns the paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(d / INDEX_FILE))
        np.save(d / IDS_FILE, self.ids)
        meta = {"format": 1, "params": self.params.to_dict(), "dim": self.dim, "max_norm": self.max_norm,
                "ntotal": len(self), "faiss_version": faiss.__version__,
                "build": {"build_s": round(self.info.build_s, 3), "train_s": round(self.info.train_s, 3),
                          "effective": self.info.effective}}
        (d / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return [d / INDEX_FILE, d / IDS_FILE, d / META_FILE]

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text())
        params = IndexParams(**meta["params"])
        index = faiss.read_index(str(d / INDEX_FILE))
        ids = np.load(d / IDS_FILE, allow_pickle=False)
        if ids.shape != (index.ntotal,):
            raise ValueError(f"{d}: {ids.shape[0]} ids for {index.ntotal} vectors")
        build = meta.get("build", {})
        info = BuildInfo(build.get("build_s", 0.0), build.get("train_s", 0.0), build.get("effective", {}))
        out = cls(index, ids, params, meta["dim"], max_norm=meta.get("max_norm", 0.0), info=info)
        out.set_search_params()
        return out

    def __repr__(self) -> str:
        return f"<ItemIndex {self.kind}/{self.metric} {len(self)} x {self.dim}>"


# ---------------------------------------------------------------------- helpers


def _lift_items(x: np.ndarray, norms: np.ndarray, max_norm: float) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = np.sqrt(np.maximum(max_norm**2 - norms.astype(np.float64) ** 2, 0.0))
    return out


def _nlist_for(n: int, params: IndexParams) -> int:
    """At most n/39 lists: FAISS's k-means wants ~39 points per centroid."""
    return max(1, min(params.ivf_nlist, n // 39 if n >= 39 else 1))


def _coarse(dim: int) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.this.disown()  # owned by the IVF index (own_fields)
    return quantizer


def _with_refine(ivf: faiss.IndexIVF, params: IndexParams) -> faiss.Index:
    """`ivf` wrapped in ``IndexRefineFlat`` (exact re-ranking) unless ``refine_factor`` is 0."""
    ivf.own_fields = True
    ivf.cp.min_points_per_centroid = 1  # tiny sets: no warnings, the sizes chosen already keep k-means sane
    ivf.pq.cp.min_points_per_centroid = 1
    if params.refine_factor <= 0:
        return ivf
    refine = faiss.IndexRefineFlat(ivf)
    refine.own_fields = True
    ivf.this.disown()
    refine.k_factor = float(params.refine_factor)
    return refine


def _ivfpq(x: np.ndarray, params: IndexParams) -> tuple[faiss.Index, dict[str, Any]]:
    """IVF-PQ sized to the data: at most n/39 lists, fewer PQ bits for tiny sets."""
    n, dim = x.shape
    nlist = _nlist_for(n, params)
    m = _pq_m_for(dim, params.pq_m)
    nbits = params.pq_nbits
    while nbits > 1 and n < 39 * (1 << nbits):  # each sub-quantizer's k-means needs ~39 points per centroid
        nbits -= 1
    ivf = faiss.IndexIVFPQ(_coarse(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    return _with_refine(ivf, params), {"nlist": nlist, "pq_m": m, "pq_nbits": nbits, "refine_factor": params.refine_factor}


def _ivfpq_fastscan(x: np.ndarray, params: IndexParams) -> tuple[faiss.Index, dict[str, Any]]:
    """IVF-PQ FastScan: 4-bit codes laid out in blocks of ``fastscan_bbs`` and scanned with SIMD lookup tables."""
    n, dim = x.shape
    nlist = _nlist_for(n, params)
    m = _pq_m_for(dim, params.fastscan_pq_m)
    ivf = faiss.IndexIVFPQFastScan(_coarse(dim), dim, nlist, m, 4, faiss.METRIC_INNER_PRODUCT, params.fastscan_bbs)
    ivf.by_residual = bool(params.fastscan_by_residual)
    return _with_refine(ivf, params), {"nlist": nlist, "pq_m": m, "pq_nbits": 4, "bbs": params.fastscan_bbs,
                                       "by_residual": bool(params.fastscan_by_residual),
                                       "refine_factor": params.refine_factor}


def _train_size(effective: dict[str, Any]) -> int:
    """Training points for IVF-PQ: enough for the coarse k-means and the PQ codebooks, bounded."""
    return int(max(64 * effective["nlist"], 256 * (1 << effective["pq_nbits"]), 10_000))


def _add(index: faiss.Index, data: np.ndarray, progress: bool, desc: str) -> None:
    n = data.shape[0]
    if not progress or n <= _ADD_CHUNK:
        if n:
            index.add(data)
        return
    from tqdm import tqdm

    with tqdm(total=n, unit="vec", unit_scale=True, desc=desc) as bar:
        for lo in range(0, n, _ADD_CHUNK):
            hi = min(lo + _ADD_CHUNK, n)
            index.add(data[lo:hi])
            bar.update(hi - lo)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip",
                 ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (the ground truth): ``ItemIndex.build(..., kind="flat").search`` in one call."""
    return ItemIndex.build(vectors, ids, IndexParams(kind="flat", metric=metric)).search(queries, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (rows of ids; -1 entries ignored)."""
    total, hits = 0, 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        if t.size == 0:
            continue
        hits += np.intersect1d(f[f >= 0], t, assume_unique=False).size
        total += t.size
    return hits / total if total else math.nan


__all__ = ["IndexParams", "ItemIndex", "KINDS", "METRICS", "exact_search", "recall_at_k"]
