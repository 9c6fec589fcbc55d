"""DeepFM (Guo et al., 2017): first-order + FM second-order over shared field embeddings + a deep MLP.

logit = bias + first-order(ids, bags, numeric values)
        + 0.5 * sum_e[(sum_f v_fe)^2 - sum_f v_fe^2]       (FM, all field pairs)
        + MLP([v_1 .. v_F, dense])                          (deep part)

Fields are the categorical ids, mean-pooled bags, behaviour sequences
(mean-pooled: DeepFM has no attention) and numeric features (value x vector);
see :class:`ranking.models.layers.FieldInputs`. The deep part also sees the
raw dense block (normalised values and missing indicators).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ranking.models.layers import MLP, FieldInputs, masked_mean


class DeepFM(nn.Module):
    kind = "deepfm"

    def __init__(self, layout: dict[str, Any], *, embedding_dim: int = 16, mlp_hidden: Sequence[int] = (400, 400, 400),
                 dropout: float = 0.2, **_: Any) -> None:
        super().__init__()
        self.layout = dict(layout)
        self.hparams = {"embedding_dim": embedding_dim, "mlp_hidden": list(mlp_hidden), "dropout": dropout}
        self.embed = FieldInputs(layout, embedding_dim)
        n_seq = int(layout.get("n_seq", 0))
        self.n_seq = n_seq
        n_fields = self.embed.n_fields + n_seq
        n_dense = 2 * self.embed.n_num
        self.first_order = nn.Embedding(int(layout["hash_buckets"]), 1, padding_idx=0, sparse=True)
        nn.init.zeros_(self.first_order.weight)
        self.dense_linear = nn.Linear(n_dense, 1) if n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))
        self.mlp = MLP(n_fields * embedding_dim + n_dense, mlp_hidden, 1, dropout)
        self.n_fields = n_fields

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        fields = self.embed.fields(inputs)
        first = self.first_order(inputs["cat_ids"]).sum(dim=(1, 2))
        if self.embed.n_bag:
            first = first + masked_mean(self.first_order(inputs["bag_ids"]), inputs["bag_mask"]).sum(dim=(1, 2))
        if self.n_seq:
            seq = self.embed.table(inputs["seq_ids"])
            fields = torch.cat([fields, masked_mean(seq, inputs["seq_mask"])], dim=1)
            first = first + masked_mean(self.first_order(inputs["seq_ids"]), inputs["seq_mask"]).sum(dim=(1, 2))
        deep_in = [fields.flatten(1)]
        dense = self.embed.dense(inputs)
        if dense is not None and self.dense_linear is not None:
            first = first + self.dense_linear(dense).squeeze(-1)
            deep_in.append(dense)
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_square = fields.pow(2).sum(dim=1)
        fm = 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
        deep = self.mlp(torch.cat(deep_in, dim=1)).squeeze(-1)
        return self.bias + first + fm + deep

    def macs_per_sample(self) -> int:
        """Multiply-accumulates per row of the dense math (MLP, FM, pooling), for FLOP accounting."""
        e = self.hparams["embedding_dim"]
        macs = _linear_macs(self.mlp)
        macs += self.n_fields * e * 2  # FM: square-of-sum and sum-of-squares
        if self.dense_linear is not None:
            macs += self.dense_linear.in_features + self.embed.n_num * e
        lay = self.layout
        macs += int(lay.get("n_bag", 0)) * int(lay.get("bag_len", 0)) * (e + 1)
        macs += int(lay.get("n_seq", 0)) * int(lay.get("seq_len", 0)) * (e + 1)
        return int(macs)


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))
