"""DIN (Zhou et al., 2018): attention over the user's behaviour sequence, keyed by the candidate.

For each behaviour sequence (ids of past items, most recent first) and its
candidate field (the ``item_id`` of the same vocabulary, named by the
encoder's ``seq_query``):

    a_t = MLP_att([b_t, c, b_t - c, b_t * c])          the paper's activation unit
    interest = sum_t mask_t * a_t * b_t                 no softmax, as in the paper

so the pooled interest keeps the intensity of the user's relevant history
(its scale grows with how much of the history matches the candidate). The
interest vectors are concatenated with every other field embedding and the
dense block and fed to the MLP. The activation unit uses PReLU, the deep MLP
ReLU with dropout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ranking.models.deepfm import _linear_macs
from ranking.models.layers import MLP, FieldInputs


class ActivationUnit(nn.Module):
    """Score of each behaviour against the candidate: MLP over [b, c, b - c, b * c] -> [B, T].

    The first layer is evaluated in an equivalent, cheaper form. With its weight
    split into four blocks, ``W [b, c, b - c, b * c] = (W1 + W3) b + (W2 - W3) c
    + W4 (b * c)``: the candidate's term is computed once per row instead of
    once per behaviour, and no [B, T, 4E] tensor is built, halving the unit's
    dominant matmul. Parameters (and so the state dict) are exactly the
    paper's; outputs equal the concatenated form up to float rounding (tested).
    """

    def __init__(self, embedding_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.mlp = MLP(4 * embedding_dim, hidden, 1, 0.0, activation=nn.PReLU)

    def forward(self, behaviours: Tensor, candidate: Tensor) -> Tensor:
        e = self.embedding_dim
        first = self.mlp[0]
        w = first.weight  # [H, 4E]
        w_b = w[:, :e] + w[:, 2 * e:3 * e]
        w_c = w[:, e:2 * e] - w[:, 2 * e:3 * e]
        w_p = w[:, 3 * e:]
        per_row = nn.functional.linear(candidate, w_c, first.bias)  # [B, H]
        pairs = torch.cat([behaviours, behaviours * candidate.unsqueeze(1)], dim=-1)  # [B, T, 2E]
        h = nn.functional.linear(pairs, torch.cat([w_b, w_p], dim=1)) + per_row.unsqueeze(1)
        for layer in list(self.mlp)[1:]:
            h = layer(h)
        return h.squeeze(-1)

    def concatenated(self, behaviours: Tensor, candidate: Tensor) -> Tensor:
        """The paper's literal form (reference for tests)."""
        c = candidate.unsqueeze(1).expand_as(behaviours)
        return self.mlp(torch.cat([behaviours, c, behaviours - c, behaviours * c], dim=-1)).squeeze(-1)


class DIN(nn.Module):
    kind = "din"

    def __init__(self, layout: dict[str, Any], *, embedding_dim: int = 16, mlp_hidden: Sequence[int] = (400, 400, 400),
                 dropout: float = 0.2, attention_hidden: Sequence[int] = (80, 40), **_: Any) -> None:
        super().__init__()
        n_seq = int(layout.get("n_seq", 0))
        if n_seq == 0:
            raise ValueError("DIN needs a behaviour sequence in its feature set (a LAST_N list of a join key)")
        queries = [int(q) for q in layout.get("seq_query", [])]
        if len(queries) != n_seq or any(q < 0 for q in queries):
            raise ValueError(f"every behaviour sequence needs a candidate field of its vocabulary (seq_query={queries})")
        self.layout = dict(layout)
        self.hparams = {"embedding_dim": embedding_dim, "mlp_hidden": list(mlp_hidden), "dropout": dropout,
                        "attention_hidden": list(attention_hidden)}
        self.embed = FieldInputs(layout, embedding_dim)
        self.queries = queries
        self.attention = nn.ModuleList(ActivationUnit(embedding_dim, attention_hidden) for _ in range(n_seq))
        self.n_seq = n_seq
        n_dense = 2 * self.embed.n_num
        self.mlp = MLP((self.embed.n_fields + n_seq) * embedding_dim + n_dense, mlp_hidden, 1, dropout)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        fields = self.embed.fields(inputs)
        seq = self.embed.table(inputs["seq_ids"])  # [B, S, T, E]
        mask = inputs["seq_mask"]
        pooled = []
        for s, unit in enumerate(self.attention):
            cand = fields[:, self.queries[s]]
            weights = unit(seq[:, s], cand) * mask[:, s]
            pooled.append((weights.unsqueeze(-1) * seq[:, s]).sum(dim=1))
        deep_in = [fields.flatten(1), torch.stack(pooled, dim=1).flatten(1)]
        dense = self.embed.dense(inputs)
        if dense is not None:
            deep_in.append(dense)
        return self.mlp(torch.cat(deep_in, dim=1)).squeeze(-1)

    def macs_per_sample(self) -> int:
        e = self.hparams["embedding_dim"]
        lay = self.layout
        t = int(lay.get("seq_len", 0))
        macs = _linear_macs(self.mlp)
        first = self.attention[0].mlp[0]
        per_behaviour = _linear_macs(self.attention[0]) - first.in_features * first.out_features // 2  # first layer at 2E
        macs += self.n_seq * (t * (per_behaviour + 2 * e) + e * first.out_features)  # unit, pooling, candidate term
        macs += int(lay.get("n_bag", 0)) * int(lay.get("bag_len", 0)) * e
        macs += self.embed.n_num * e
        return int(macs)
