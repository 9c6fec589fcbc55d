"""Building blocks shared by the ranking models: the hashed embedding table, pooling, MLPs.

Every model reads the encoder's arrays (:mod:`ranking.encoding`) as a dict of
tensors: ``cat_ids`` [B, C], ``dense`` [B, 2N] (N values then N missing
indicators), ``bag_ids``/``bag_mask`` [B, G, L], ``seq_ids``/``seq_mask``
[B, S, T]. Row 0 of the shared table is padding; masks say which slots hold
an id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear -> ReLU -> Dropout per hidden layer, then an optional linear output."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None = 1, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), activation(inplace=True) if activation is nn.ReLU else activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim if out_dim is not None else d


def masked_mean(emb: Tensor, mask: Tensor) -> Tensor:
    """Mean over axis -2 of `emb` [..., L, E] where `mask` [..., L] is 1; zeros for an empty bag."""
    m = mask.unsqueeze(-1)
    total = (emb * m).sum(dim=-2)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return total / count


class FieldInputs(nn.Module):
    """The shared part of DeepFM and DIN: field embeddings [B, F, E] from every non-sequence input.

    Fields, in order: one per categorical id, one per bag (masked mean of its
    ids' rows), one per numeric feature (its normalised value times a learned
    vector, so FM can cross it). Sequences are left to the model (DeepFM
    mean-pools them, DIN attends over them).
    """

    def __init__(self, layout: dict, embedding_dim: int) -> None:
        super().__init__()
        self.n_cat = int(layout["n_cat"])
        self.n_num = int(layout["n_num"])
        self.n_bag = int(layout["n_bag"])
        self.n_seq = int(layout["n_seq"])
        self.embedding_dim = embedding_dim
        # sparse=True: a batch's gradient touches only its rows (SparseAdam), not all hash_buckets of them
        self.table = nn.Embedding(int(layout["hash_buckets"]), embedding_dim, padding_idx=0, sparse=True)
        nn.init.normal_(self.table.weight, std=0.01)
        with torch.no_grad():
            self.table.weight[0].zero_()
        self.num_vectors = nn.Parameter(torch.randn(self.n_num, embedding_dim) * 0.01) if self.n_num else None

    @property
    def n_fields(self) -> int:
        return self.n_cat + self.n_bag + self.n_num

    def fields(self, inputs: dict[str, Tensor]) -> Tensor:
        parts = [self.table(inputs["cat_ids"])]
        if self.n_bag:
            parts.append(masked_mean(self.table(inputs["bag_ids"]), inputs["bag_mask"]))
        if self.n_num and self.num_vectors is not None:
            values = inputs["dense"][:, : self.n_num]
            parts.append(values.unsqueeze(-1) * self.num_vectors)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def dense(self, inputs: dict[str, Tensor]) -> Tensor | None:
        return inputs["dense"] if self.n_num else None

    def used_rows_l2(self, inputs: dict[str, Tensor]) -> Tensor:
        """Sum of squared embedding rows this batch touches (an L2 penalty on used rows only)."""
        ids = [inputs["cat_ids"].reshape(-1)]
        for name in ("bag_ids", "seq_ids"):
            if name in inputs:
                ids.append(inputs[name].reshape(-1))
        rows = torch.unique(torch.cat(ids))
        return self.table(rows).pow(2).sum()
