"""eval=tofu evaluates the forget split the run unlearns unless forget_split/holdout_split are given."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from obliviate.config_resolvers import tofu_holdout, tofu_split


@pytest.mark.parametrize(("overrides", "expected"), [
    (["data.forget=TOFU_QA_FORGET01"], ("forget01", "holdout01")),
    (["data.forget=TOFU_QA_FORGET05"], ("forget05", "holdout05")),
    ([], ("forget10", "holdout10")),  # experiment=llm/tofu: forget10
    (["data.forget=TOFU_QA_FORGET05", "forget_split=forget01"], ("forget01", "holdout01")),
    (["data.forget=TOFU_QA_FORGET05", "holdout_split=holdout10"], ("forget05", "holdout10")),
    (["data.forget=TOFU_QA_RA"], ("forget10", "holdout10")),  # not a forget split: the default
])
def test_splits_follow_data_forget(overrides, expected):
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=["experiment=llm/tofu", "eval=tofu", *overrides])
    GlobalHydra.instance().clear()
    assert (cfg.eval.tofu.forget_split, cfg.eval.tofu.holdout_split) == expected
    assert cfg.eval.tofu.splits.forget.name == f"{expected[0]}_perturbed" and cfg.eval.tofu.splits.holdout.name == expected[1]


def test_resolver_functions():
    assert tofu_split("TOFU_QA_FORGET01_PT", "forget10") == "forget01"
    assert tofu_split(None, "forget10") == "forget10" and tofu_split("my_set", "x") == "x"
    assert tofu_holdout("forget05", "holdout10") == "holdout05" and tofu_holdout("custom", "holdout10") == "holdout10"
