"""Stacked (a linear correction on a base model): equals the base at zero weights, rebuilds from its config as kind ftrl."""

from __future__ import annotations

import pytest
import torch

from ranking.models import Linear, Stacked, build_model, from_config, model_config

LAYOUT = {"hash_buckets": 97, "n_cat": 3, "n_num": 2, "n_bag": 1, "bag_len": 4, "n_seq": 0, "seq_len": 0}


def inputs(batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bag_mask = (torch.arange(4) < torch.randint(0, 5, (batch, 1, 1), generator=g)).float()
    return {"cat_ids": torch.randint(1, 97, (batch, 3), generator=g), "dense": torch.randn(batch, 4, generator=g),
            "bag_ids": torch.randint(1, 97, (batch, 1, 4), generator=g) * bag_mask.long(), "bag_mask": bag_mask}


def _base() -> torch.nn.Module:
    torch.manual_seed(0)
    base = build_model("deepfm", LAYOUT, embedding_dim=4, mlp_hidden=(8,), dropout=0.0)
    with torch.no_grad():  # logits well away from 0
        for p in base.parameters():
            p.normal_(0, 0.3)
    return base.eval()


def test_with_zero_linear_weights_the_stacked_model_is_the_base_model() -> None:
    base = _base()
    model = Stacked({**LAYOUT, "crosses": [[0, "cat", 1]]}, base=base).eval()
    x = inputs()
    with torch.inference_mode():
        want = base(x)
        assert want.abs().max() > 0.5
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    # then: (1 + w_b) * base + the linear terms
    with torch.no_grad():
        model.base_weight.fill_(-0.25)
        model.linear.bias.fill_(0.7)
        model.linear.first_order.weight.normal_(0, 0.1)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), 0.75 * want + model.linear(x))


def test_stacked_rebuilds_from_its_config_as_kind_ftrl() -> None:
    model = Stacked(dict(LAYOUT), base=_base())
    with torch.no_grad():
        model.base_weight.fill_(0.3)
        model.linear.first_order.weight.normal_(0, 0.1)
    config = model_config(model)
    assert config["kind"] == "ftrl" and config["hparams"]["base"]["kind"] == "deepfm"
    clone = from_config(config)
    assert isinstance(clone, Stacked)
    clone.load_state_dict(model.state_dict())
    x = inputs(batch=9, seed=1)
    with torch.inference_mode():
        torch.testing.assert_close(clone.eval()(x), model.eval()(x))
    assert isinstance(build_model("ftrl", LAYOUT), Linear)  # without a base: the plain linear model
    assert model.macs_per_sample() > model.base.macs_per_sample()


def test_a_base_over_another_table_is_refused() -> None:
    with pytest.raises(ValueError, match="same encoder"):
        Stacked({**LAYOUT, "hash_buckets": 101}, base=_base())
