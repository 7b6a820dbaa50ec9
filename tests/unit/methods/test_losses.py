"""Pure tensor losses of methods/_losses.py against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from obliviate.methods import _losses as L
from obliviate.methods._common import pad_collate, select_rows
from obliviate.methods._refcache import sample_keys


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_npo_loss_by_hand():
    logp, ref, beta = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5]), 0.1
    expected = (2 / beta) * (_softplus(beta * 0.5) + _softplus(beta * -0.5)) / 2
    assert L.npo_loss(logp, ref, beta).item() == pytest.approx(expected, rel=1e-6)
    # at logπ = logπ_ref the loss is (2/β)·log 2 for any β
    assert L.npo_loss(ref, ref, 0.3).item() == pytest.approx(2 / 0.3 * math.log(2), rel=1e-6)


def test_simnpo_loss_by_hand():
    nll, beta, delta = torch.tensor([0.2, 1.7, 3.0]), 4.5, 0.5
    expected = -(2 / beta) * sum(_logsig(beta * (x - delta)) for x in (0.2, 1.7, 3.0)) / 3
    assert L.simnpo_loss(nll, beta, delta).item() == pytest.approx(expected, rel=1e-6)


def test_dpo_loss_by_hand():
    w, w_ref, lo, lo_ref, beta = torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -3.0]), torch.tensor([-1.0, -2.5]), torch.tensor([-1.2, -2.0]), 0.1
    margins = [(-3.0 + 3.5) - (-1.0 + 1.2), (-4.0 + 3.0) - (-2.5 + 2.0)]
    expected = -(2 / beta) * sum(_logsig(beta * m) for m in margins) / 2
    assert L.dpo_loss(w, w_ref, lo, lo_ref, beta).item() == pytest.approx(expected, rel=1e-6)


def test_sequence_mean_ignores_masked_values():
    values = torch.tensor([[1.0, 2.0, 1e9], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    values = torch.where(mask, values, torch.zeros_like(values))  # callers zero masked slots
    assert L.sequence_mean(values, mask).tolist() == [1.5, 5.0]
    assert L.sequence_mean(torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool)).tolist() == [0.0]


def test_wga_and_satimp_weights_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    assert torch.allclose(L.wga_weights(logp, 2.0), torch.tensor([[0.25, 0.0625]]))
    assert torch.allclose(L.wga_weights(logp, 0.0), torch.ones(1, 2))
    assert torch.allclose(L.satimp_weights(logp, 2.0, 1.0), torch.tensor([[0.25 * 0.5, 0.0625 * 0.75]]))


def test_reweighted_ascent_by_hand_and_weights_detached():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]])).requires_grad_()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    w = L.wga_weights(logp, 1.0)

    def nll(p):
        return -math.log(p)

    # token mean (the default): every answer token of the batch weighs the same
    loss = L.reweighted_ascent_loss(logp, mask, w)
    expected = -(0.5 * nll(0.5) + 0.25 * nll(0.25) + 0.1 * nll(0.1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # d/dlogp of −w·(−logp)/n with w detached = w/n, n = 3 answer tokens
    assert logp.grad[0, 0].item() == pytest.approx(0.5 / 3, rel=1e-6)
    assert logp.grad[0, 2].item() == 0.0
    # per-sequence means, then the batch mean
    logp.grad = None
    loss = L.reweighted_ascent_loss(logp, mask, w, reduction="sequence")
    expected = -((0.5 * nll(0.5) + 0.25 * nll(0.25)) / 2 + 0.1 * nll(0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(0.5 / 2 / 2, rel=1e-6)
    assert logp.grad[0, 2].item() == 0.0


def test_soft_cross_entropy_and_targets_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    q = torch.tensor([[0.2, 0.3, 0.5]])
    logz = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    expected = -(0.2 * (1.0 - logz) + 0.3 * (2.0 - logz) + 0.5 * (0.5 - logz))
    assert L.soft_cross_entropy(logits, q).item() == pytest.approx(expected, rel=1e-6)

    target = torch.tensor([1])
    und = L.undial_targets(logits, target, beta=2.0)
    z = [1.0, 0.0, 0.5]
    expected_und = [math.exp(v) / sum(math.exp(u) for u in z) for v in z]
    assert und[0].tolist() == pytest.approx(expected_und, rel=1e-6)

    ceu = L.ceu_targets(logits, target)
    s = math.exp(1.0) + math.exp(0.5)
    assert ceu[0].tolist() == pytest.approx([math.exp(1.0) / s, 0.0, math.exp(0.5) / s], rel=1e-6)


def test_minus_100_is_never_used_as_an_index():
    logits = torch.randn(2, 3, 5)
    target = torch.tensor([[-100, 1, 2], [3, -100, -100]])
    assert torch.isfinite(L.undial_targets(logits, target, 10.0)).all()
    assert torch.isfinite(L.ceu_targets(logits, target)).all()


def test_activation_mse_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # [1, 3, 2]
    target = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[True, True, False]])
    expected = ((0 + 4) / 2 + (4 + 16) / 2) / 2
    assert L.activation_mse(h, target, mask).item() == pytest.approx(expected)


def test_sample_keys_ignore_padding_and_position_in_batch():
    a = {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.ones(3, dtype=torch.long), "labels": torch.tensor([-100, 2, 3])}
    b = {"input_ids": torch.tensor([4, 5]), "attention_mask": torch.ones(2, dtype=torch.long), "labels": torch.tensor([-100, 5])}
    k1 = sample_keys(pad_collate([a, b]))
    k2 = sample_keys(pad_collate([b, a]))
    assert k1 == k2[::-1] and k1[0] != k1[1]
    padded = pad_collate([a, b])
    padded = {k: torch.cat([v, torch.zeros(2, 4, dtype=v.dtype) + (-100 if k == "labels" else 0)], 1) for k, v in padded.items()}
    assert sample_keys(padded) == k1
    assert sample_keys(select_rows(padded, [1])) == k1[1:]
    c = {**a, "labels": torch.tensor([-100, -100, 3])}  # same tokens, different answer span
    assert sample_keys(pad_collate([c]))[0] != k1[0]
