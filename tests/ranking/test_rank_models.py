"""DeepFM and DIN on hand-made inputs: shapes, the FM identity, DIN's masked, unnormalised attention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ranking.metrics import auc, logloss
from ranking.models import DIN, DeepFM, build_model, from_config, model_config

LAYOUT = {"hash_buckets": 97, "n_cat": 3, "n_num": 2, "n_bag": 1, "bag_len": 4, "n_seq": 1, "seq_len": 5, "seq_query": [1]}


def inputs(batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 6, (batch, 1), generator=g)
    seq_mask = (torch.arange(5) < lengths.unsqueeze(-1)).float()
    bag_mask = (torch.arange(4) < torch.randint(0, 5, (batch, 1, 1), generator=g)).float()
    return {
        "cat_ids": torch.randint(1, 97, (batch, 3), generator=g),
        "dense": torch.randn(batch, 4, generator=g),
        "bag_ids": torch.randint(1, 97, (batch, 1, 4), generator=g) * bag_mask.long(),
        "bag_mask": bag_mask,
        "seq_ids": torch.randint(1, 97, (batch, 1, 5), generator=g) * seq_mask.long(),
        "seq_mask": seq_mask,
    }


@pytest.mark.parametrize("kind", ["deepfm", "din"])
def test_forward_gives_one_logit_per_row_and_rebuilds_from_config(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(kind, LAYOUT, embedding_dim=4, mlp_hidden=(8, 8), dropout=0.0).eval()
    x = inputs()
    out = model(x)
    assert out.shape == (6,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    clone = from_config(model_config(model))
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(x), out)
    assert model.macs_per_sample() > 0


def test_deepfm_fm_term_is_the_sum_over_field_pairs() -> None:
    torch.manual_seed(1)
    model = DeepFM(LAYOUT, embedding_dim=4, mlp_hidden=(8,), dropout=0.0).eval()
    x = inputs(batch=3)
    with torch.no_grad():
        fields = model.embed.fields(x)
        from ranking.models.layers import masked_mean

        fields = torch.cat([fields, masked_mean(model.embed.table(x["seq_ids"]), x["seq_mask"])], dim=1)
        pairs = sum((fields[:, i] * fields[:, j]).sum(-1) for i, j in itertools.combinations(range(fields.shape[1]), 2))
        # remove everything but the FM term: zero the deep output layer, first order and bias
        model.mlp[-1].weight.zero_()
        model.mlp[-1].bias.zero_()
        model.first_order.weight.zero_()
        model.dense_linear.weight.zero_()
        model.dense_linear.bias.zero_()
        torch.testing.assert_close(model(x), pairs, rtol=1e-5, atol=1e-5)


def test_din_ignores_padded_behaviours_and_does_not_normalise() -> None:
    torch.manual_seed(2)
    model = DIN(LAYOUT, embedding_dim=4, mlp_hidden=(8,), dropout=0.0, attention_hidden=(6,)).eval()
    x = inputs(batch=4, seed=3)
    x["seq_mask"][:] = 0
    x["seq_mask"][:, 0, :2] = 1
    base = model(x)
    noisy = dict(x)
    noisy["seq_ids"] = x["seq_ids"].clone()
    noisy["seq_ids"][:, 0, 2:] = torch.randint(1, 97, (4, 3))  # ids in masked slots change nothing
    torch.testing.assert_close(model(noisy), base)
    # without softmax, the pooled interest is the plain weighted sum: repeating a behaviour doubles its share
    seq = model.embed.table(x["seq_ids"][:, 0])
    cand = model.embed.fields(x)[:, LAYOUT["seq_query"][0]]
    w = model.attention[0](seq, cand) * x["seq_mask"][:, 0]
    pooled = (w.unsqueeze(-1) * seq).sum(1)
    twice = dict(x)
    twice["seq_ids"] = x["seq_ids"].clone()
    twice["seq_ids"][:, 0, 2:4] = x["seq_ids"][:, 0, 0:2]
    twice["seq_mask"] = x["seq_mask"].clone()
    twice["seq_mask"][:, 0, 2:4] = 1
    seq2 = model.embed.table(twice["seq_ids"][:, 0])
    w2 = model.attention[0](seq2, cand) * twice["seq_mask"][:, 0]
    torch.testing.assert_close((w2.unsqueeze(-1) * seq2).sum(1), 2 * pooled)


def test_din_activation_unit_equals_the_concatenated_form() -> None:
    torch.manual_seed(4)
    model = DIN(LAYOUT, embedding_dim=4, mlp_hidden=(8,), dropout=0.0, attention_hidden=(6, 3)).eval()
    unit = model.attention[0]
    b, c = torch.randn(5, 7, 4), torch.randn(5, 4)
    torch.testing.assert_close(unit(b, c), unit.concatenated(b, c), rtol=1e-5, atol=1e-6)


def test_din_needs_a_sequence_with_a_candidate() -> None:
    with pytest.raises(ValueError, match="behaviour sequence"):
        DIN({**LAYOUT, "n_seq": 0, "seq_query": []})
    with pytest.raises(ValueError, match="candidate"):
        DIN({**LAYOUT, "seq_query": [-1]})


def test_auc_and_logloss() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)  # ties count half
    assert np.isnan(auc(np.ones(3), np.arange(3)))
    assert logloss(y, np.array([0.5] * 4)) == pytest.approx(np.log(2))
    rng = np.random.default_rng(0)
    s = rng.random(500)
    yy = rng.random(500) < s
    pos, neg = s[yy], s[~yy]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert auc(yy, s) == pytest.approx(brute)
