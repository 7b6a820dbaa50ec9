"""TOFU evaluation wiring: the eval config group, split loading, during-training callback, rescoring."""

import json
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from obliviate.data.text.synthetic import write_synthetic_tofu
from obliviate.errors import ConfigError, DataError
from obliviate.models.llm import load_causal_lm
from obliviate.pipelines import llm_eval

TINY = {"builder": "tiny-llama", "template_args": {"apply_chat_template": True},
        "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "num_key_value_heads": 1, "init_seed": 0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_tofu(tmp_path_factory.mktemp("syn") / "tofu", 20, 4, 0)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(TINY)


def compose_cfg(command, overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("obliviate.configs", version_base="1.3"):
            return compose(config_name=command, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def eval_cfg(data, **over):
    cfg = compose_cfg("eval", ["experiment=llm/tofu_synthetic", f"paths.tofu={data}"] + [f"{k}={v}" for k, v in over.items()])
    return llm_eval.selected_evaluators(cfg)["tofu"]


def test_eval_config_defaults_and_split_selection(data):
    ecfg = eval_cfg(data)
    assert ecfg["forget_split"] == "forget10" and ecfg["splits"]["forget"]["name"] == "forget10_perturbed"
    assert ecfg["splits"]["holdout"]["name"] == "holdout10" and ecfg["splits"]["retain"]["name"] == "retain_perturbed"
    assert ecfg["data_path"] == str(data) and ecfg["retain_logs_path"] is None
    ecfg = eval_cfg(data, forget_split="forget01", holdout_split="holdout01", retain_logs_path="/x/TOFU_EVAL.json")
    assert ecfg["splits"]["forget"]["name"] == "forget01_perturbed" and ecfg["splits"]["holdout"]["name"] == "holdout01"
    assert ecfg["retain_logs_path"] == "/x/TOFU_EVAL.json"


def test_unlearn_and_train_select_no_evaluator_by_default():
    for command in ("unlearn", "train"):
        cfg = compose_cfg(command, ["experiment=llm/tofu_synthetic"])
        assert llm_eval.selected_evaluators(cfg) == {}
        cfg = compose_cfg(command, ["experiment=llm/tofu_synthetic", "eval=tofu", "forget_split=forget05"])
        assert llm_eval.selected_evaluators(cfg)["tofu"]["splits"]["forget"]["name"] == "forget05_perturbed"
    assert llm_eval.selected_evaluators(compose_cfg("unlearn", ["experiment=vision/digits"])) == {}


def test_load_eval_splits_counts_and_fields(data, tiny):
    _, tok = tiny
    splits, files = llm_eval.load_eval_splits(eval_cfg(data, forget_split="forget05"), tok, TINY["template_args"])
    n_rows = {k: sum(1 for _ in open(f)) for k, f in files.items()}
    assert {k: len(v) for k, v in splits.items()} == n_rows
    assert files["forget"].endswith("forget05_perturbed.json") and files["holdout"].endswith("holdout05.json")  # holdout follows forget_split
    s = splits["forget"][0]
    assert len(s["perturbed"]) == 5 and "paraphrased" in s and isinstance(s["answer"], str) and s["index"] == 0
    assert "paraphrased" not in splits["ra"][0] and len(splits["ra"][0]["perturbed"]) == 3
    assert "perturbed" not in splits["holdout"][0]
    ecfg = eval_cfg(data, **{"eval.tofu.max_samples": 2, "eval.tofu.splits.wf": "null"})
    splits, _ = llm_eval.load_eval_splits(ecfg, tok, TINY["template_args"])
    assert set(splits) == {"forget", "retain", "ra", "holdout"} and all(len(v) == 2 for v in splits.values())


def test_missing_split_file_is_a_data_error(data, tiny):
    with pytest.raises(DataError, match="forget02_perturbed"):
        llm_eval.load_eval_splits(eval_cfg(data, forget_split="forget02"), tiny[1], TINY["template_args"])


@pytest.fixture(scope="module")
def small_eval(data, tiny):
    ecfg = eval_cfg(data, **{"eval.tofu.max_samples": 3, "eval.tofu.max_new_tokens": 3})
    return llm_eval.Evaluation("tofu", ecfg, *llm_eval.load_eval_splits(ecfg, tiny[1], TINY["template_args"]))


def test_evaluate_without_retain_logs_warns_and_writes(small_eval, tiny, tmp_path):
    out = llm_eval.evaluate(*tiny, small_eval, tmp_path, retain_logs_path=str(tmp_path / "missing.json"))
    assert out["summary"]["forget_quality"] is None and any("forget_quality" in w for w in out["warnings"])
    assert json.loads((tmp_path / "TOFU_SUMMARY.json").read_text()) == out["summary"]
    full = json.loads((tmp_path / "TOFU_EVAL.json").read_text())
    assert len(full["forget_Q_A_Prob"]["value_by_index"]) == 3
    # rescoring against a "retain" eval fills forget quality and PrivLeak from the retain logs
    (tmp_path / "retain").mkdir()
    llm_eval.evaluate(*tiny, small_eval, tmp_path / "retain", retain_logs_path=None, generate=False)
    summary = llm_eval.rescore_with_retain(tmp_path, tmp_path / "retain")
    assert summary["forget_quality"] == pytest.approx(1.0)  # same model, same truth ratios
    assert json.loads((tmp_path / "TOFU_EVAL.json").read_text())["privleak"]["ref_source"] == "retain_logs"


def test_callback_evaluates_every_n_steps_and_per_epoch(small_eval, tiny, tmp_path):
    model, tok = tiny
    cb = llm_eval.TofuEvalCallback([small_eval], tok, tmp_path, every_steps=2, per_epoch=True, generate=False)
    for step in (1, 2, 3):
        cb.on_step_end(None, SimpleNamespace(global_step=step, epoch=step / 3), None, model=model)
    cb.on_epoch_end(None, SimpleNamespace(global_step=3, epoch=1.0), None, model=model)
    cb.on_epoch_end(None, SimpleNamespace(global_step=3, epoch=1.0), None, model=model)  # same step: once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_3"]
    assert [h["step"] for h in cb.history] == [2, 3]
    summary = json.loads((tmp_path / "step_2" / "TOFU_SUMMARY.json").read_text())
    assert "forget_truth_ratio" in summary and not (tmp_path / "step_2" / "TOFU_EVAL.json").exists()


def test_training_callbacks_config(small_eval, tmp_path):
    def cfg(**node):
        return OmegaConf.create({"eval_during_training": {"every_steps": None, "per_epoch": False, "generate": None, **node}})

    assert llm_eval.training_callbacks(cfg(), [], None, tmp_path) == []
    with pytest.raises(ConfigError, match="eval=tofu"):
        llm_eval.training_callbacks(cfg(every_steps=5), [], None, tmp_path)
    (cb,) = llm_eval.training_callbacks(cfg(per_epoch=True), [small_eval], None, tmp_path)
    assert cb.per_epoch and cb.every_steps == 0 and cb.out_dir == tmp_path / "eval"


def test_unknown_handler_is_rejected():
    cfg = OmegaConf.create({"eval": {"x": {"handler": "NopeEvaluator"}}})
    with pytest.raises(ConfigError, match="TOFUEvaluator, MUSEEvaluator, LMEvalEvaluator"):
        llm_eval.selected_evaluators(cfg)


def test_real_tofu_files_load(shared_data, tiny):
    ecfg = eval_cfg(shared_data / "tofu", forget_split="forget01", holdout_split="holdout01", **{"eval.tofu.max_samples": 2})
    splits, files = llm_eval.load_eval_splits(ecfg, tiny[1], TINY["template_args"])
    assert {k: len(v) for k, v in splits.items()} == {"forget": 2, "retain": 2, "ra": 2, "wf": 2, "holdout": 2}
    assert len(splits["forget"][0]["perturbed"]) == 5 and files["forget"].endswith("forget01_perturbed.json")
