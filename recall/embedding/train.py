"""Train item and user embeddings from the offline store: `train_embeddings(...)`.

Data, all through the feature store:

1. interactions: the rows of the source of ``spec.events_view`` (MovieLens
   ratings, synthetic clicks), split by global time (`temporal_split`, 80/10/10);
2. user features: ``OfflineStore.get_training_set`` for every training
   interaction *one microsecond before* it, so the recent-items list is the one
   the online store served just before that click (a window includes its end
   point: at the event's own time the list would already hold the target);
3. items: the latest row of ``spec.item_view`` per item (side features), plus
   every item id the interactions mention.

Evaluation (the metrics returned, computed with the numpy `QueryEncoder`, i.e.
the serving code path, and exact search over all items):

* ``next_item_hr@K`` -- for test interactions (up to `max_eval_events`, sampled
  with the seed) with an item new to the user, whether the item is in the top K
  of the query built from the user's features just before it (the history then
  includes earlier test-period events, as online serving would), excluding items
  the user interacted with before (the merge filters them);
* ``user_recall@K`` -- per test user, the share of their test-period items in
  the top K of the query built as of the test period's start;
* the same two for a popularity baseline (training counts), to read them against.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recall.embedding.query import QueryEncoder
from recall.embedding.spec import TowerSpec, bucket, tower_spec

log = logging.getLogger("cascade.recall.train")

_US = pa.scalar(1, pa.duration("us"))


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters; `dim` defaults to ``config.recall.embedding_dim``, `history_len` to ``recent_items``."""

    epochs: int = 6
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    dim: int | None = None
    id_dim: int = 64
    feat_dim: int = 16
    hidden: int = 128
    history_len: int | None = None
    negatives: int = 1024  # sampled negatives per batch, on top of the in-batch ones
    neg_alpha: float = 0.75  # negatives ~ count^alpha
    temperature: float = 0.1
    logq_weight: float = 1.0
    normalize: bool = False
    buckets: int = 1009
    splits: tuple[float, ...] = (0.8, 0.1, 0.1)
    seed: int = 0
    eval_k: int = 100
    max_eval_events: int = 5000
    max_eval_users: int = 5000


@dataclass
class TrainedEmbeddings:
    """The result: item vectors for the index, the user tower as a `QueryEncoder`, and metrics."""

    spec: TowerSpec
    params: TrainParams
    item_ids: np.ndarray  # int64, sorted
    item_vectors: np.ndarray  # (n_items, dim) float32, aligned with item_ids
    encoder: QueryEncoder
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    model: Any = None  # the torch TwoTowerModel
    eval_queries: np.ndarray | None = None  # query vectors of evaluation users (for ANN recall checks)

    def build_info(self) -> dict[str, Any]:
        return {"dataset": self.spec.dataset, "spec": self.spec.to_dict(), "train_params": asdict(self.params),
                "n_items": int(self.item_ids.size), "losses": [round(x, 5) for x in self.losses]}


# ----------------------------------------------------------------------------- data


@dataclass
class _Data:
    spec: TowerSpec
    item_ids: np.ndarray
    item_tokens: np.ndarray  # (n_items + 1, T) side-feature rows, -1 = padding
    n_side_tokens: int
    events: pa.Table  # all interactions: user_id, item_id, event_ts (time order)
    parts: tuple[pa.Table, ...]  # temporal split
    item_column: str


def _rows_of(item_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return ids
    pos = np.minimum(np.searchsorted(item_ids, ids), item_ids.size - 1)
    return np.where(item_ids[pos] == ids, pos + 1, 0).astype(np.int64)


def _history_column(column: pa.ChunkedArray | pa.Array, item_ids: np.ndarray, length: int) -> np.ndarray:
    """(n, length) item rows of a list<int64> column (first `length` entries: the most recent)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    out = np.zeros((n, length), dtype=np.int64)
    if n == 0:
        return out
    arr = arr.fill_null(pa.scalar([], type=arr.type)) if arr.null_count else arr
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    start, stop = offsets[:-1], offsets[1:]
    for p in range(length):
        idx = start + p
        ok = idx < stop
        if not ok.any():
            break
        out[ok, p] = _rows_of(item_ids, values[idx[ok]])
    return out


def _feature_rows(table: pa.Table, spec: TowerSpec, buckets: int) -> np.ndarray:
    cols = []
    for j, ref in enumerate(spec.user_features):
        name = ref.replace(":", "__", 1)
        cols.append([j * buckets + bucket(ref, v, buckets) for v in table[name].to_pylist()])
    return np.asarray(cols, dtype=np.int64).T.reshape(table.num_rows, len(spec.user_features))


def _point_in_time(store: Any, repo: Any, spec: TowerSpec, labels: pa.Table) -> pa.Table:
    """User features and history as served just before each label (ts - 1 µs)."""
    lab = pa.table({"user_id": labels["user_id"], "event_ts": pc.subtract(labels["event_ts"], _US)})
    return store.get_training_set(lab, list(spec.online_features), repo.views)


def _load_data(spec: TowerSpec, store: Any, repo: Any, params: TrainParams) -> _Data:
    from featurestore.data.movielens import temporal_split
    from featurestore.definitions import AggregationFunction

    view = repo.view(spec.events_view)
    item_column = next((a.column for a in view.aggregations if a.function is AggregationFunction.LAST_N), "item_id")
    rel = store.relation(view.source)
    events = rel.select(f"user_id, {item_column} AS item_id, event_ts").to_arrow_table()
    events = events.filter(pc.and_(pc.is_valid(events["item_id"]), pc.is_valid(events["event_ts"])))
    events = events.sort_by([("event_ts", "ascending")])
    parts = temporal_split(events, params.splits)

    item_view = repo.view(spec.item_view)
    batches = list(store.latest_rows(item_view))
    catalogue = pa.Table.from_batches(batches) if batches else None
    ids = events["item_id"].to_numpy()
    if catalogue is not None and catalogue.num_rows:
        ids = np.concatenate([ids, catalogue["item_id"].to_numpy()])
    item_ids = np.unique(ids.astype(np.int64))

    b = params.buckets
    per_item: list[list[int]] = [[] for _ in range(item_ids.size + 1)]
    if catalogue is not None and catalogue.num_rows:
        rows = _rows_of(item_ids, catalogue["item_id"].to_numpy())
        for f, name in enumerate(spec.item_features):
            ref = f"{spec.item_view}:{name}"
            for r, value in zip(rows.tolist(), catalogue[name].to_pylist()):
                vals = value if isinstance(value, list) else [value]
                for v in vals:
                    bk = bucket(ref, v, b)
                    if bk:
                        per_item[r].append(f * b + bk)
    width = max(1, max((len(t) for t in per_item), default=1))
    tokens = np.full((item_ids.size + 1, width), -1, dtype=np.int64)
    for r, t in enumerate(per_item):
        if t:
            tokens[r, : len(t)] = t
    return _Data(spec, item_ids, tokens, max(1, len(spec.item_features)) * b, events, parts, item_column)


# ----------------------------------------------------------------------------- training


def train_embeddings(dataset: str = "movielens", *, config: Any = None, root: Path | str | None = None,
                     store: Any = None, repo: Any = None, params: TrainParams | None = None,
                     progress: bool = True, evaluate: bool = True, threads: int | None = None,
                     **overrides: Any) -> TrainedEmbeddings:
    """Train the two towers on `dataset`'s training part; `overrides` replace `params` fields.

    `store` (an ``OfflineStore``) defaults to one over `root` (default: the
    config's offline root); `repo` to the config's feature definitions.
    Deterministic for a seed on one machine (fixed torch and numpy seeds,
    single data order). `threads`: torch intra-op threads while training
    (restored afterwards; default: torch's setting).
    """
    import torch

    if threads is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        try:
            return train_embeddings(dataset, config=config, root=root, store=store, repo=repo, params=params,
                                    progress=progress, evaluate=evaluate, threads=None, **overrides)
        finally:
            torch.set_num_threads(before)

    from recall.embedding.model import TwoTowerModel, export_encoder, sampled_softmax_loss

    if config is None:
        from cascade.config import get_config

        config = get_config()
    params = params or TrainParams()
    if overrides:
        params = replace(params, **overrides)
    params = replace(params, dim=params.dim or config.recall.embedding_dim,
                     history_len=params.history_len or config.recall.recent_items)
    spec = tower_spec(dataset)
    if repo is None:
        from featurestore.repository import get_repo

        repo = get_repo(config.features.definitions)
    own_store = store is None
    if own_store:
        from featurestore.offline import OfflineStore

        store = OfflineStore(Path(root) if root is not None else config.offline_root)
    try:
        began = time.perf_counter()
        data = _load_data(spec, store, repo, params)
        train = data.parts[0]
        if train.num_rows == 0:
            raise ValueError(f"{dataset}: no training interactions in {store.root}")
        feats = _point_in_time(store, repo, spec, train)
        b = params.buckets
        user_rows = _feature_rows(feats, spec, b)
        hist_rows = _history_column(feats[spec.history_feature.replace(":", "__", 1)], data.item_ids, params.history_len)
        pos_rows = _rows_of(data.item_ids, train["item_id"].to_numpy())
        prep_s = time.perf_counter() - began

        n_items = data.item_ids.size
        counts = np.bincount(pos_rows, minlength=n_items + 1).astype(np.float64)
        counts[0] = 0.0
        p_data = counts / counts.sum()
        neg_w = counts ** params.neg_alpha
        neg_w[0] = 0.0
        p_neg = neg_w / neg_w.sum()

        torch.manual_seed(params.seed)
        gen = torch.Generator().manual_seed(params.seed)
        model = TwoTowerModel(n_items=n_items, item_tokens=data.item_tokens, n_side_tokens=data.item_tokens.max() + 1
                              if data.item_tokens.size and data.item_tokens.max() >= 0 else 1,
                              n_user_features=len(spec.user_features), buckets=b, dim=params.dim, id_dim=params.id_dim,
                              feat_dim=params.feat_dim, hidden=params.hidden, history_len=params.history_len,
                              normalize=params.normalize)
        opt = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        t_user = torch.as_tensor(user_rows)
        t_hist = torch.as_tensor(hist_rows)
        t_pos = torch.as_tensor(pos_rows)
        log_p_data = torch.as_tensor(p_data, dtype=torch.float32)
        t_p_neg = torch.as_tensor(p_neg, dtype=torch.float32)
        n = t_pos.shape[0]
        bs = min(params.batch_size, n)
        steps = n // bs if n >= bs else 1
        losses: list[float] = []
        from tqdm import tqdm

        t_train = time.perf_counter()
        model.train()
        with tqdm(total=params.epochs * steps, desc=f"train {dataset}", unit="step", disable=not progress) as bar:
            for epoch in range(params.epochs):
                order = torch.randperm(n, generator=gen)
                total = 0.0
                for s in range(steps):
                    idx = order[s * bs:(s + 1) * bs]
                    pos = t_pos[idx]
                    neg = torch.multinomial(t_p_neg, params.negatives, replacement=True, generator=gen) if params.negatives else pos[:0]
                    cand = torch.cat([pos, neg])
                    log_expected = torch.log(len(idx) * log_p_data[cand] + params.negatives * t_p_neg[cand] + 1e-12)
                    u = model.user_vectors(t_user[idx], t_hist[idx])
                    loss = sampled_softmax_loss(u, model.item_vectors(pos), pos, model.item_vectors(neg), neg,
                                                log_expected, params.temperature, params.logq_weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    bar.update(1)
                losses.append(total / steps)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.4f}")
        train_s = time.perf_counter() - t_train
        model.eval()
        item_vectors = model.all_item_vectors()
        encoder = export_encoder(model, spec, data.item_ids)
        metrics: dict[str, Any] = {"train_interactions": int(n), "n_items": int(n_items), "prep_s": round(prep_s, 2),
                                   "train_s": round(train_s, 2), "final_loss": round(losses[-1], 5) if losses else None}
        queries = None
        if evaluate and len(data.parts) > 1:
            found, queries = evaluate_embeddings(store, repo, data, encoder, item_vectors, counts[1:], params)
            metrics.update(found)
        return TrainedEmbeddings(spec, params, data.item_ids, item_vectors, encoder, metrics, losses, model, queries)
    finally:
        if own_store:
            store.close()


# ----------------------------------------------------------------------------- evaluation


def _rows_to_dicts(table: pa.Table, refs: tuple[str, ...]) -> list[dict[str, Any]]:
    cols = {ref: table[ref.replace(":", "__", 1)].to_pylist() for ref in refs}
    return [{ref: cols[ref][i] for ref in refs} for i in range(table.num_rows)]


class _History:
    """Each user's interactions in time order, for "items seen before t"."""

    def __init__(self, events: pa.Table, item_ids: np.ndarray) -> None:
        users = events["user_id"].to_numpy().astype(np.int64)
        ts = events["event_ts"].cast(pa.int64()).to_numpy()
        rows = _rows_of(item_ids, events["item_id"].to_numpy())
        order = np.lexsort((ts, users))
        self.users, self.ts, self.rows = users[order], ts[order], rows[order]

    def before(self, user: int, t_us: int) -> np.ndarray:
        lo, hi = np.searchsorted(self.users, [user, user + 1])
        cut = lo + np.searchsorted(self.ts[lo:hi], t_us, side="left")
        return self.rows[lo:cut]


def _scores(q: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    return q @ vecs.T


def evaluate_embeddings(store: Any, repo: Any, data: _Data, encoder: QueryEncoder, item_vectors: np.ndarray,
                        train_counts: np.ndarray, params: TrainParams) -> tuple[dict[str, Any], np.ndarray]:
    """Next-item hit rate and per-user recall at K on the last split part (see the module docstring).

    Returns the metrics and the next-item query vectors (up to 1,000 of them).
    """
    test = data.parts[-1]
    k = params.eval_k
    rng = np.random.default_rng(params.seed)
    hist = _History(data.events, data.item_ids)
    out: dict[str, Any] = {"eval_k": k}
    queries = np.zeros((0, encoder.dim), np.float32)
    pop = np.asarray(train_counts, dtype=np.float32)
    chunk = max(1, int(2e7 // max(1, item_vectors.shape[0])))

    # -- next item: features just before each test event
    m = test.num_rows
    pick = np.sort(rng.choice(m, min(m, params.max_eval_events), replace=False)) if m else np.zeros(0, np.int64)
    ev = test.take(pa.array(pick))
    if ev.num_rows:
        feats = _point_in_time(store, repo, data.spec, ev)
        q = encoder.encode_batch(_rows_to_dicts(feats, data.spec.online_features))
        queries = q[:1000]
        targets = _rows_of(data.item_ids, ev["item_id"].to_numpy()) - 1
        users = ev["user_id"].to_numpy().astype(np.int64)
        ts = ev["event_ts"].cast(pa.int64()).to_numpy()
        hits = np.zeros(ev.num_rows, bool)
        pop_hits = np.zeros(ev.num_rows, bool)
        valid = np.zeros(ev.num_rows, bool)
        for lo in range(0, ev.num_rows, chunk):
            hi = min(lo + chunk, ev.num_rows)
            s = _scores(q[lo:hi], item_vectors)
            for i in range(lo, hi):
                seen = np.unique(hist.before(int(users[i]), int(ts[i])) - 1)
                seen = seen[seen >= 0]
                t = targets[i]
                if t < 0 or np.isin(t, seen):
                    continue  # an unknown item, or a repeat (the merge filters seen items): not a retrieval target
                valid[i] = True
                row = s[i - lo]
                # rank among the items not seen before = items scoring higher, minus seen ones scoring higher
                hits[i] = np.count_nonzero(row > row[t]) - np.count_nonzero(row[seen] > row[t]) < k
                pop_hits[i] = np.count_nonzero(pop > pop[t]) - np.count_nonzero(pop[seen] > pop[t]) < k
        if valid.any():
            out[f"next_item_hr@{k}"] = round(float(hits[valid].mean()), 4)
            out[f"next_item_hr@{k}_popularity"] = round(float(pop_hits[valid].mean()), 4)
        out["next_item_events"] = int(valid.sum())

    # -- per user, as of the test period's start
    if test.num_rows:
        t0 = int(pc.min(test["event_ts"]).cast(pa.int64()).as_py())
        users_all = np.unique(test["user_id"].to_numpy().astype(np.int64))
        users = np.sort(rng.choice(users_all, min(users_all.size, params.max_eval_users), replace=False))
        lab = pa.table({"user_id": pa.array(users), "event_ts": pa.array(np.full(users.size, t0), pa.int64()).cast(test["event_ts"].type)})
        feats = _point_in_time(store, repo, data.spec, lab)  # strictly before the first test event
        q = encoder.encode_batch(_rows_to_dicts(feats, data.spec.online_features))
        tu = test["user_id"].to_numpy().astype(np.int64)
        tr = _rows_of(data.item_ids, test["item_id"].to_numpy()) - 1
        recalls, pop_recalls = [], []
        pop_order = np.argsort(-pop, kind="stable")
        for lo in range(0, users.size, chunk):
            hi = min(lo + chunk, users.size)
            s = _scores(q[lo:hi], item_vectors)
            for i in range(lo, hi):
                seen = hist.before(int(users[i]), t0) - 1
                seen = seen[seen >= 0]
                truth = np.setdiff1d(np.unique(tr[(tu == users[i]) & (tr >= 0)]), seen)
                if truth.size == 0:
                    continue
                row = s[i - lo]
                row[seen] = -np.inf  # a fresh matmul row: safe to edit in place
                top = np.argpartition(-row, min(k, row.size - 1))[:k]
                recalls.append(np.intersect1d(top, truth).size / truth.size)
                head = pop_order[: k + seen.size]
                ptop = head[~np.isin(head, seen)][:k]
                pop_recalls.append(np.intersect1d(ptop, truth).size / truth.size)
        if recalls:
            out[f"user_recall@{k}"] = round(float(np.mean(recalls)), 4)
            out[f"user_recall@{k}_popularity"] = round(float(np.mean(pop_recalls)), 4)
            out["eval_users"] = len(recalls)
    return out, queries


__all__ = ["TrainParams", "TrainedEmbeddings", "evaluate_embeddings", "train_embeddings"]

