"""The two-tower retrieval model (PyTorch), trained with a popularity-corrected sampled softmax.

Item tower: ``v = P [E_id[item], mean(E_side[item's hashed side features])]``.
User tower: ``u = MLP([pool(E_id[recent items]), E_user[profile buckets]...])``, where
``pool`` is a weighted mean with learned per-position weights (most recent first).
The id table ``E_id`` is shared: a user's recent items are embedded by the very
vectors that place those items in the item tower, so the history signal needs
no separate vocabulary and a new click moves the query immediately.

Loss (`sampled_softmax_loss`): for a batch of (user, positive item) pairs the
candidates are the batch's positives (in-batch negatives) plus S items drawn
from the unigram^alpha distribution ("mixed negative sampling", Yang et al.
2020). Each logit is corrected by the log of the candidate's expected number of
occurrences, ``log(B p_data(j) + S p_neg(j))`` (Yi et al. 2019, "sampling-bias-
corrected neural modeling"), scaled by ``logq_weight`` (1 = full correction, 0 =
none: the model then also learns popularity). Accidental hits (a candidate equal
to the row's positive other than itself) are masked.

`export_encoder` turns the user tower into a numpy `QueryEncoder`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from recall.embedding.query import QueryEncoder
from recall.embedding.spec import TowerSpec


class TwoTowerModel(nn.Module):
    def __init__(self, *, n_items: int, item_tokens: np.ndarray, n_side_tokens: int, n_user_features: int,
                 buckets: int, dim: int = 64, id_dim: int = 64, feat_dim: int = 16, hidden: int = 128,
                 history_len: int = 20, normalize: bool = False, init_std: float = 0.05) -> None:
        super().__init__()
        self.n_items = n_items
        self.buckets = buckets
        self.n_user_features = n_user_features
        self.history_len = history_len
        self.normalize = normalize
        self.item_id = nn.Embedding(n_items + 1, id_dim, padding_idx=0)  # row 0: padding / unknown item
        nn.init.normal_(self.item_id.weight, std=init_std)
        with torch.no_grad():
            self.item_id.weight[0].zero_()
        self.side_pad = n_side_tokens
        self.item_side = nn.EmbeddingBag(n_side_tokens + 1, feat_dim, mode="mean", padding_idx=n_side_tokens)
        nn.init.normal_(self.item_side.weight, std=init_std)
        with torch.no_grad():
            self.item_side.weight[n_side_tokens].zero_()
        tokens = torch.as_tensor(np.where(item_tokens < 0, n_side_tokens, item_tokens), dtype=torch.long)
        self.register_buffer("item_tokens", tokens, persistent=False)  # (n_items + 1, T)
        self.item_proj = nn.Linear(id_dim + feat_dim, dim)
        self.user_feat = nn.Embedding(max(1, n_user_features) * buckets, feat_dim)
        nn.init.normal_(self.user_feat.weight, std=init_std)
        self.position_logits = nn.Parameter(torch.zeros(history_len))
        self.user_mlp = nn.Sequential(
            nn.Linear(id_dim + n_user_features * feat_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def item_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """Vectors of item rows (1-based; row 0 is the unknown item)."""
        side = self.item_side(self.item_tokens[rows])
        v = self.item_proj(torch.cat([self.item_id(rows), side], dim=-1))
        return nn.functional.normalize(v, dim=-1) if self.normalize else v

    def user_vectors(self, feature_rows: torch.Tensor, history_rows: torch.Tensor) -> torch.Tensor:
        """(B, F) user-feature rows and (B, L) history item rows (0 = padding) -> (B, dim)."""
        emb = self.item_id(history_rows)  # (B, L, id_dim); padding rows are zero
        w = torch.exp(self.position_logits)[None, :] * (history_rows > 0)
        pooled = (w[..., None] * emb).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-6)
        parts = [pooled]
        if self.n_user_features:
            parts.append(self.user_feat(feature_rows).reshape(feature_rows.shape[0], -1))
        u = self.user_mlp(torch.cat(parts, dim=-1))
        return nn.functional.normalize(u, dim=-1) if self.normalize else u

    @torch.no_grad()
    def all_item_vectors(self, batch: int = 65_536) -> np.ndarray:
        """(n_items, dim) float32 vectors of rows 1..n_items."""
        out = []
        for lo in range(1, self.n_items + 1, batch):
            rows = torch.arange(lo, min(lo + batch, self.n_items + 1))
            out.append(self.item_vectors(rows).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.item_proj.out_features), np.float32)


def sampled_softmax_loss(user: torch.Tensor, pos_vec: torch.Tensor, pos_rows: torch.Tensor,
                         neg_vec: torch.Tensor, neg_rows: torch.Tensor, log_expected: torch.Tensor,
                         temperature: float, logq_weight: float) -> torch.Tensor:
    """In-batch + sampled negatives softmax with the logQ correction (see the module docstring).

    `log_expected`: log of each candidate's expected occurrences among the
    candidates, aligned with ``cat(pos_rows, neg_rows)``.
    """
    cand_vec = torch.cat([pos_vec, neg_vec], dim=0)
    cand_rows = torch.cat([pos_rows, neg_rows], dim=0)
    logits = user @ cand_vec.T / temperature - logq_weight * log_expected[None, :]
    b = user.shape[0]
    hit = cand_rows[None, :] == pos_rows[:, None]
    hit[torch.arange(b), torch.arange(b)] = False
    logits = logits.masked_fill(hit, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(b))


@torch.no_grad()
def export_encoder(model: TwoTowerModel, spec: TowerSpec, item_ids: np.ndarray) -> QueryEncoder:
    """The user tower as a numpy `QueryEncoder` (weights copied; `item_ids[r-1]` is row r)."""
    linears: Sequence[nn.Linear] = [m for m in model.user_mlp if isinstance(m, nn.Linear)]
    return QueryEncoder(
        spec,
        buckets=model.buckets,
        history_len=model.history_len,
        normalize=model.normalize,
        item_ids=np.asarray(item_ids, dtype=np.int64),
        item_table=model.item_id.weight.detach().numpy().astype(np.float32).copy(),
        position_logits=model.position_logits.detach().numpy().copy(),
        user_table=model.user_feat.weight.detach().numpy().copy(),
        layers=[(lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()) for lin in linears],
    )


__all__ = ["TwoTowerModel", "export_encoder", "sampled_softmax_loss"]
