"""Memorisation and LLM MIA formulas on hand-made values."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from obliviate.metrics.memorisation import exact_memorisation, extraction_strength
from obliviate.metrics.mia_llm import (
    loss_score,
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    token_mu_sigma,
    zlib_score,
)

T, F = True, False


def test_exact_memorisation():
    assert exact_memorisation([T, F, T, T]) == pytest.approx(0.75)
    assert exact_memorisation([F, F]) == 0.0
    assert math.isnan(exact_memorisation([]))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([T, T, T, T], 1.0),  # full reproduction: k = 0
        ([F, T, T, T], 0.75),  # k = 1
        ([T, F, T, T], 0.5),  # k = 2: the suffix after the last miss
        ([T, T, T, F], 0.0),  # nothing reproduced -> 0, not 1/|y|
        ([F, F, F, F], 0.0),
        ([F], 0.0),
        ([T], 1.0),
        ([], 0.0),
    ],
)
def test_extraction_strength(flags, expected):
    assert extraction_strength(flags) == pytest.approx(expected)


def test_loss_and_zlib_scores():
    lp = [-1.0, -3.0]
    assert loss_score(lp) == pytest.approx(-2.0)
    text = "some answer text"
    assert zlib_score(lp, text) == pytest.approx(-2.0 / len(zlib.compress(text.encode())))


def test_min_k():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert min_k_score(lp, 0.4) == pytest.approx(-4.5)  # lowest floor(0.4*5) = 2
    assert min_k_score(lp, 0.2) == pytest.approx(-5.0)
    assert min_k_score(lp, 0.1) == pytest.approx(-5.0)  # at least one token
    assert min_k_score(lp, 1.0) == pytest.approx(-3.0)
    with pytest.raises(ValueError):
        min_k_score(lp, 0.0)


def test_min_k_plus_plus():
    logp, mu, sigma = [-1.0, -2.0], [-1.5, -1.0], [0.5, 2.0]  # z = [1.0, -0.5]
    assert min_k_plus_plus_score(logp, mu, sigma, k=0.5) == pytest.approx(-0.5)
    assert min_k_plus_plus_score(logp, mu, sigma, k=1.0) == pytest.approx(0.25)


def test_token_mu_sigma_by_hand():
    p = np.array([0.5, 0.25, 0.25])
    lp = np.log(p)
    mu_hand = float((p * lp).sum())
    var_hand = float((p * lp**2).sum() - mu_hand**2)
    mu, sigma = token_mu_sigma(torch.tensor(lp).unsqueeze(0))
    assert mu.item() == pytest.approx(mu_hand)
    assert sigma.item() == pytest.approx(math.sqrt(var_hand))
    _, flat = token_mu_sigma(torch.log(torch.tensor([[1.0, 0.0]]).clamp_min(1e-30)))
    assert flat.item() == pytest.approx(1e-3)  # variance floor 1e-6


def test_auc_separable_and_sign():
    members, non = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0]
    assert mia_auc(members, non) == 1.0
    assert mia_auc(non, members) == 0.0
    assert mia_auc([1.0, 2.0], [1.0, 2.0]) == 0.5
    # members have lower loss -> higher LOSS score -> AUC 1
    assert mia_auc([loss_score([-0.1]), loss_score([-0.2])], [loss_score([-3.0]), loss_score([-4.0])]) == 1.0


def test_privleak():
    assert privleak(0.75, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)
