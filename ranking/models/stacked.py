"""A linear (FTRL) correction stacked on a batch model: the servable form of a stacked FTRL trainer (kind ``ftrl``).

logit = base(x) + base_weight * base(x) + linear(x)

``base`` is a ranking model (DeepFM, DIN) as published in the registry, with
its trained weights; ``linear`` is :class:`ranking.models.linear.Linear` over
the *same* encoder inputs (the same hashed rows, crosses included);
``base_weight`` is the FTRL weight of the base logit as a dense input. The base
logit is also an offset (weight 1, not learned), so a model whose FTRL weights
are all zero predicts exactly what the base model does, and the online learner
only learns what the batch model gets wrong (a shift of the click rate, new
items, a user's last hour) and how far to trust the base (``base_weight`` in
(-1, ...) rescales it). The streaming trainer learns these weights with the
base's logit computed on every sample (:mod:`streaming.trainer_stacking`).

The module is one graph, so an artifact of it is served like any other model
(ONNX Runtime, AOTInductor, TensorRT, eager). Its config is ``{"kind": "ftrl",
"layout": <the Linear's layout>, "hparams": {"base": <the base's config>}}``:
kind ``ftrl`` because it is what the FTRL trainer publishes (the registry and
the RankResponse name it so); :func:`ranking.models.build_model` builds a
``Stacked`` when ``hparams`` name a base, a plain ``Linear`` otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ranking.models.linear import Linear


class Stacked(nn.Module):
    kind = "ftrl"

    def __init__(self, layout: dict[str, Any], *, base: dict[str, Any] | nn.Module, **_: Any) -> None:
        """`base`: the base model's config (rebuilt with fresh weights, to be loaded from a state dict) or the module itself."""
        super().__init__()
        from ranking.models import from_config, model_config

        self.base = base if isinstance(base, nn.Module) else from_config(base)
        base_buckets = int(self.base.layout["hash_buckets"])
        if base_buckets != int(layout["hash_buckets"]):
            raise ValueError(f"the linear part has {layout['hash_buckets']} hashed rows, the base model "
                             f"{base_buckets}: both must read the same encoder")
        self.linear = Linear(layout)
        self.base_weight = nn.Parameter(torch.zeros(1))
        self.layout = dict(self.linear.layout)
        self.hparams: dict[str, Any] = {"base": model_config(self.base)}

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        b = self.base(inputs)
        return b + self.base_weight * b + self.linear(inputs)

    def macs_per_sample(self) -> int:
        base = int(self.base.macs_per_sample()) if hasattr(self.base, "macs_per_sample") else 0
        return base + int(self.linear.macs_per_sample()) + 2


__all__ = ["Stacked"]
