"""TOFU formulas against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from obliviate.metrics import METRICS
from obliviate.metrics.tofu import (
    MODEL_UTILITY_KEYS,
    answer_probability,
    forget_quality,
    mean_nll,
    model_utility,
    normalised_probability,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_forget_agg,
    truth_ratio_retain_agg,
)

ln = math.log


def test_probability_is_exp_minus_mean_nll():
    assert mean_nll([-1.0, -2.0, -3.0]) == pytest.approx(2.0)
    assert answer_probability([-1.0, -2.0, -3.0]) == pytest.approx(math.exp(-2.0))
    assert math.isnan(answer_probability([]))


def test_normalised_probability():
    # p_correct = 0.5, perturbed 0.25 + 0.25 -> 0.5 / (0.5 + 0.5)
    assert normalised_probability(ln(0.5), [ln(0.25), ln(0.25)]) == pytest.approx(0.5)
    assert normalised_probability(ln(0.6), [ln(0.1), ln(0.2), ln(0.1)]) == pytest.approx(0.6 / 1.0)
    # tiny probabilities do not underflow (log space)
    assert normalised_probability(-2000.0, [-2000.0 + ln(3.0)]) == pytest.approx(0.25)


def test_truth_ratio_known_probs():
    # geomean(0.1, 0.4) = 0.2; p_true = 0.5 -> 0.4
    assert truth_ratio(ln(0.5), [ln(0.1), ln(0.4)]) == pytest.approx(0.4)
    assert truth_ratio(ln(0.2), [ln(0.2)] * 5) == pytest.approx(1.0)
    assert math.isnan(truth_ratio(ln(0.5), []))


def test_truth_ratio_aggregations():
    assert truth_ratio_forget_agg([0.5, 2.0, 1.0]) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert truth_ratio_retain_agg([0.5, 2.0, 0.25]) == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    assert truth_ratio_retain_agg([0.5, float("nan")]) == pytest.approx(0.5)


def test_forget_quality_is_ks_pvalue():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    assert forget_quality(a, b) == pytest.approx(0.1)  # D = 1, exact p = 2 / C(6, 3)
    rng = np.random.default_rng(0)
    x, y = rng.lognormal(size=40), rng.lognormal(0.3, size=35)
    assert forget_quality(x, y) == pytest.approx(ks_2samp(x, y).pvalue)
    # invariant under TR -> 1/TR (the reference framework tests 1/TR)
    assert forget_quality(x, y) == pytest.approx(ks_2samp(1 / x, 1 / y).pvalue)
    assert forget_quality(x, x) == pytest.approx(1.0)


def test_model_utility_harmonic_mean():
    assert model_utility([0.5] * 9) == pytest.approx(0.5)
    assert model_utility([1.0, 2.0, 4.0]) == pytest.approx(3 / 1.75)
    vals = dict(zip(MODEL_UTILITY_KEYS, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]))
    assert model_utility(vals) == pytest.approx(9 / sum(1 / v for v in vals.values()))
    assert model_utility([0.5, 0.0, 0.9]) == 0.0
    with pytest.raises(KeyError, match="wf_Truth_Ratio"):
        model_utility({k: 0.5 for k in MODEL_UTILITY_KEYS[:-1]})


def test_rouge_l_recall_with_stemming():
    assert rouge_l_recall(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx([0.5])
    assert rouge_l_recall(["running cats"], ["run cat"]) == pytest.approx([1.0])
    assert rouge_l_recall([""], ["anything"]) == [0.0]


def test_registered_with_metadata():
    for name in ("probability", "probability_normalised", "truth_ratio", "rouge", "forget_quality", "model_utility"):
        assert METRICS.meta(name)["track"] == "llm"
        assert "needs" in METRICS.meta(name) and "higher_is_better" in METRICS.meta(name)
    assert METRICS.meta("forget_quality")["higher_is_better"] is True
    assert METRICS.meta("model_utility")["higher_is_better"] is True
    assert METRICS.get("exact_memorisation") is METRICS.get("exact_memorization")
