"""teacher_forced_results (obliviate tune's per-trial pass) equals the TOFU runner without generation."""

import pytest

from obliviate.metrics.retrain_free import teacher_forced_results
from obliviate.metrics.runner import evaluate_tofu
from tests.unit.metrics.conftest import make_split


def _scores(entry):
    return [v["score"] for v in entry["value_by_index"].values()]


def test_same_values_as_evaluate_tofu_and_holdout_perturbations_scored(model, tok, splits):
    mine = teacher_forced_results(model, tok, splits, batch_size=3)
    ref = evaluate_tofu(model, tok, splits, batch_size=5, generate=False)
    for key in ("forget_Q_A_Prob", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_truth_ratio", "retain_Q_A_Prob",
                "retain_Truth_Ratio", "ra_Q_A_Prob_normalised", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio"):
        assert _scores(mine[key]) == pytest.approx(_scores(ref[key]), rel=1e-5), key
        assert mine[key]["agg_value"] == pytest.approx(ref[key]["agg_value"], rel=1e-5), key
    assert "holdout_Truth_Ratio" not in mine  # the fixture's holdout has no perturbed answers
    # a holdout with paraphrased / perturbed answers: its truth ratios are the forget formula's on the same samples
    rich = make_split(tok, 5, 11)
    mine = teacher_forced_results(model, tok, {"holdout": rich}, batch_size=4)
    as_forget = evaluate_tofu(model, tok, {"forget": rich}, batch_size=4, generate=False)
    assert _scores(mine["holdout_Truth_Ratio"]) == pytest.approx(_scores(as_forget["forget_truth_ratio"]), rel=1e-5)
    assert _scores(mine["holdout_Q_A_PERT_Prob"]) == pytest.approx(_scores(as_forget["forget_Q_A_PERT_Prob"]), rel=1e-5)
    assert model.training is False
