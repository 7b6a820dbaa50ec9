"""Every LLM method that makes sense on raw text runs on MUSE- and WMDP-format data through the
unlearn pipeline (the reference experiments' configs, tiny-llama), and moves the forget text."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from obliviate.data.text.synthetic_bench import write_synthetic_muse, write_synthetic_wmdp
from obliviate.methods import METHODS
from obliviate.pipelines.llm import run_unlearning

#: Methods that need QA structure (a refusal answer per question) are not raw-text methods.
RAW_TEXT_METHODS = sorted(n for n in METHODS.names(tracks="llm") if not getattr(METHODS.get(n), "needs_idk", False))
FAST = ["model=tiny-llama", "model.model_args.pretrained_model_name_or_path=null", "++trainer.args.max_steps=3",
        "++trainer.args.learning_rate=1e-3", "++trainer.args.gradient_accumulation_steps=1", "++trainer.args.per_device_train_batch_size=2",
        "++trainer.args.logging_steps=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return write_synthetic_muse(root / "muse"), write_synthetic_wmdp(root / "wmdp")


def _compose(overrides):
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=overrides)
    with open_dict(cfg):
        cfg.eval = None  # the experiments' evaluators are tested elsewhere
    return cfg


def test_the_raw_text_methods_are_the_expected_ones():
    assert {"GA", "GradDiff", "NPO", "SimNPO", "RMU", "TaskVector", "KL", "UNDIAL", "WGA", "SatImp", "CEU"} <= set(RAW_TEXT_METHODS)
    assert "IdK" not in RAW_TEXT_METHODS and "IdkDPO" not in RAW_TEXT_METHODS


@pytest.mark.parametrize("method", RAW_TEXT_METHODS)
def test_method_unlearns_muse_raw_text(method, data, tmp_path):
    muse, _ = data
    extra = ["trainer.method_args.layer=1", "trainer.method_args.trainable=layers", "trainer.method_args.trainable_layers=[0,1]", "trainer.method_args.tokens=all"] if method == "RMU" else []
    if method == "TaskVector":
        extra = ["trainer.method_args.finetune_max_steps=3", "trainer.method_args.finetune_lr=1e-2"]
    cfg = _compose(["experiment=unlearn/muse/default", *FAST, f"trainer={method}", f"paths.muse={muse}",
                    f"paths.output_dir={tmp_path}", "data.forget.MUSE_forget.args.max_length=128",
                    "data.retain.MUSE_retain.args.max_length=128", *extra])
    res = run_unlearning(cfg, tmp_path)
    assert res["status"] == "completed" and res["method"] == method
    assert res["data"]["forget"]["n"] > 2 and res["data"]["retain"]["n"] > 2  # 128-token blocks of the raw documents
    assert res["nll"]["after"]["forget"] != pytest.approx(res["nll"]["before"]["forget"], abs=1e-6)  # the model moved on the forget text
    if method in ("GA", "NPO", "TaskVector"):  # forget-driven from the first step (GradDiff's effect: tests/integration)
        assert res["nll"]["delta"]["forget"] > 0


def test_wmdp_rmu_trains_only_the_configured_down_projections(data, tmp_path):
    _, wmdp = data
    cfg = _compose(["experiment=unlearn/wmdp/default", *FAST, f"paths.wmdp={wmdp}", f"paths.output_dir={tmp_path}",
                    "trainer.method_args.layer=1", "trainer.method_args.trainable_layers=[0,1]"])
    assert cfg.trainer.method_args.steering_coeff == 6.5 and cfg.trainer.method_args.alpha == 1200.0  # the WMDP reference's
    res = run_unlearning(cfg, tmp_path)
    assert res["status"] == "completed" and res["method"] == "RMU"
    import torch

    from obliviate.models.llm import load_causal_lm

    before, _ = load_causal_lm({"builder": "tiny-llama", "config_args": dict(cfg.model.config_args)})
    after, _ = load_causal_lm({"builder": "tiny-llama", "model_args": {"pretrained_model_name_or_path": res["model_dir"]}})
    changed = {n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)}
    assert changed == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
