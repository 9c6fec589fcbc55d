"""Logistic regression over the encoder's fields: the servable form of an FTRL-Proximal model (kind ``ftrl``).

logit = bias + sum of the first-order weights of every categorical id, the
mean weight of each bag's and sequence's ids, and a linear term over the dense
block (normalised values and missing indicators). One weight per hashed table
row (``first_order``, [hash_buckets, 1]), so a per-coordinate online learner
(streaming/, FTRL-Proximal over the same hashed rows) maps its weights 1:1
onto this module's state dict and publishes it with
:func:`ranking.artifact.save_artifact` (``kind="ftrl"``); every backend
(ONNX Runtime, AOTInductor, TensorRT) then serves it like the deep models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ranking.models.layers import masked_mean


class Linear(nn.Module):
    kind = "ftrl"

    def __init__(self, layout: dict[str, Any], **_: Any) -> None:
        super().__init__()
        self.layout = dict(layout)
        self.hparams: dict[str, Any] = {}
        self.n_num = int(layout.get("n_num", 0))
        self.n_bag = int(layout.get("n_bag", 0))
        self.n_seq = int(layout.get("n_seq", 0))
        self.first_order = nn.Embedding(int(layout["hash_buckets"]), 1, padding_idx=0, sparse=True)
        nn.init.zeros_(self.first_order.weight)
        self.dense_linear = nn.Linear(2 * self.n_num, 1) if self.n_num else None
        if self.dense_linear is not None:
            nn.init.zeros_(self.dense_linear.weight)
            nn.init.zeros_(self.dense_linear.bias)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        z = self.bias + self.first_order(inputs["cat_ids"]).sum(dim=(1, 2))
        if self.n_bag:
            z = z + masked_mean(self.first_order(inputs["bag_ids"]), inputs["bag_mask"]).sum(dim=(1, 2))
        if self.n_seq:
            z = z + masked_mean(self.first_order(inputs["seq_ids"]), inputs["seq_mask"]).sum(dim=(1, 2))
        if self.dense_linear is not None:
            z = z + self.dense_linear(inputs["dense"]).squeeze(-1)
        return z

    def macs_per_sample(self) -> int:
        lay = self.layout
        return int(2 * self.n_num + int(lay.get("n_cat", 0)) + self.n_bag * int(lay.get("bag_len", 0))
                   + self.n_seq * int(lay.get("seq_len", 0)))
