"""Logistic regression over the encoder's fields: the servable form of an FTRL-Proximal model (kind ``ftrl``).

logit = bias + sum of the first-order weights of every categorical id, the
mean weight of each bag's and sequence's ids, and a linear term over the dense
block (normalised values and missing indicators). One weight per hashed table
row (``first_order``, [hash_buckets, 1]), so a per-coordinate online learner
(streaming/, FTRL-Proximal over the same hashed rows) maps its weights 1:1
onto this module's state dict and publishes it with
:func:`ranking.artifact.save_artifact` (``kind="ftrl"``); every backend
(ONNX Runtime, AOTInductor, TensorRT) then serves it like the deep models.

Crosses (optional, ``layout["crosses"]``): a linear model over single fields
cannot personalise (a user's weight is the same for every item), so the
learner may add hashed crosses of a categorical field with another
categorical field (user x item) or with a bag (user x genre). Each cross
``k = [a, kind, b]`` (``a`` a ``cat_ids`` column, ``kind`` ``"cat"`` or
``"bag"``, ``b`` a ``cat_ids`` column or a ``bag_ids`` field) maps the two
rows it combines onto a row of the same table with :func:`cross_rows`, an
integer formula that numpy (the learner), PyTorch and ONNX compute alike; a
bag cross is mean-pooled like the bag. Without ``crosses`` the model is
exactly the field-only one above.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ranking.models.layers import masked_mean

# cross_rows: 1 + (a * M1 + b * M2 + (k + 1) * M3) mod (buckets - 1). Primes below 2**30 (coprime with any bucket
# count below them), rows below 2**31: every product stays below 2**61, so int64 never overflows.
CROSS_M1 = 1_000_000_007
CROSS_M2 = 998_244_353
CROSS_M3 = 754_974_721
MAX_CROSS_BUCKETS = 2**31


def cross_rows(a: Any, b: Any, k: int, buckets: int) -> Any:
    """Table row of the cross of rows `a` and `b` (int64 arrays or tensors, broadcast) for cross number `k`."""
    return 1 + (a * CROSS_M1 + b * CROSS_M2 + (k + 1) * CROSS_M3) % (buckets - 1)


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
        self.crosses = [(int(a), str(kind), int(b)) for a, kind, b in layout.get("crosses", ())]
        if self.crosses and int(layout["hash_buckets"]) > MAX_CROSS_BUCKETS:
            raise ValueError(f"crosses need hash_buckets <= {MAX_CROSS_BUCKETS}")
        bad = [c for c in self.crosses if c[1] not in ("cat", "bag")]
        if bad:
            raise ValueError(f"cross kinds are 'cat' or 'bag', got {bad}")

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        z = self.bias + self.first_order(inputs["cat_ids"]).sum(dim=(1, 2))
        if self.n_bag:
            z = z + masked_mean(self.first_order(inputs["bag_ids"]), inputs["bag_mask"]).sum(dim=(1, 2))
        if self.n_seq:
            z = z + masked_mean(self.first_order(inputs["seq_ids"]), inputs["seq_mask"]).sum(dim=(1, 2))
        if self.dense_linear is not None:
            z = z + self.dense_linear(inputs["dense"]).squeeze(-1)
        buckets = self.first_order.num_embeddings
        cat = inputs["cat_ids"]
        for k, (a, kind, b) in enumerate(self.crosses):
            if kind == "cat":
                z = z + self.first_order(cross_rows(cat[:, a], cat[:, b], k, buckets)).squeeze(-1)
            else:
                mask = inputs["bag_mask"][:, b, :]
                rows = cross_rows(cat[:, a : a + 1], inputs["bag_ids"][:, b, :], k, buckets) * mask.to(cat.dtype)
                z = z + masked_mean(self.first_order(rows), mask).squeeze(-1)
        return z

    def macs_per_sample(self) -> int:
        lay = self.layout
        crosses = sum(1 if kind == "cat" else int(lay.get("bag_len", 0)) for _, kind, _ in self.crosses)
        return int(2 * self.n_num + int(lay.get("n_cat", 0)) + self.n_bag * int(lay.get("bag_len", 0))
                   + self.n_seq * int(lay.get("seq_len", 0)) + crosses)
