"""Ranking models: DeepFM, DIN and the linear (FTRL) model over the encoder's inputs (:mod:`ranking.encoding`).

Every model takes a dict of tensors named as :data:`ranking.encoding.INPUT_NAMES`
and returns logits [B]. :func:`build_model` rebuilds one from the
``{"kind", "layout", "hparams"}`` stored next to its state dict
(:func:`model_config`). Kind ``ftrl`` is what the streaming trainer publishes:
a :class:`Linear`, or a :class:`Stacked` (a Linear correcting a base model)
when its hparams name a ``base``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ranking.models.deepfm import DeepFM
from ranking.models.din import DIN
from ranking.models.linear import Linear
from ranking.models.stacked import Stacked


def _ftrl(layout: dict[str, Any], **hparams: Any) -> nn.Module:
    """Kind ``ftrl``: a Stacked model when `hparams` name its base, else the plain Linear."""
    return Stacked(layout, **hparams) if hparams.get("base") else Linear(layout, **hparams)


MODELS: dict[str, Callable[..., nn.Module]] = {"deepfm": DeepFM, "din": DIN, "ftrl": _ftrl}


def build_model(kind: str, layout: dict[str, Any], **hparams: Any) -> nn.Module:
    try:
        cls = MODELS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}") from None
    return cls(layout, **hparams)


def model_config(model: nn.Module) -> dict[str, Any]:
    """What :func:`build_model` needs to rebuild `model` (saved in the artifact)."""
    return {"kind": model.kind, "layout": dict(model.layout), "hparams": dict(model.hparams)}


def from_config(config: dict[str, Any]) -> nn.Module:
    hp = dict(config["hparams"])
    return build_model(config["kind"], config["layout"], **hp)


def build_from_settings(kind: str, layout: dict[str, Any], ranking: Any) -> nn.Module:
    """A model of `kind` with the sizes of a ``RankingConfig``."""
    return build_model(kind, layout, embedding_dim=ranking.embedding_dim, mlp_hidden=tuple(ranking.mlp_hidden),
                       dropout=ranking.dropout, attention_hidden=tuple(ranking.din_attention_hidden))


__all__ = ["DIN", "MODELS", "DeepFM", "Linear", "Stacked", "build_from_settings", "build_model", "from_config", "model_config"]
