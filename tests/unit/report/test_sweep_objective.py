"""The sweep objective read from finished (hand-made) run dirs."""

import json

import pytest

from obliviate.errors import ConfigError
from obliviate.pipelines.sweep import directions, objective_values
from tests.unit.report.test_report import make_llm_run, make_vision_run


def test_vision_objective_is_avg_gap_minimised(tmp_path):
    run = make_vision_run(tmp_path / "v", gap=3.25)
    assert directions("vision") == ["minimize"]
    assert objective_values(run, "vision") == [3.25]


def test_llm_objective_is_forget_quality_and_model_utility_maximised(tmp_path):
    run = make_llm_run(tmp_path / "l", fq=0.2, mu=0.5)
    assert directions("llm") == ["maximize", "maximize"]
    assert objective_values(run, "llm") == [0.2, 0.5]


def test_llm_objective_without_tofu_summary_is_a_clear_error(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "metrics.json").write_text(json.dumps({"track": "llm", "method": "NPO"}))
    with pytest.raises(ConfigError, match="forget_quality"):
        objective_values(tmp_path / "l", "llm")
