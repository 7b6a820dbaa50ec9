"""Under accelerate/torchrun every rank runs the LLM pipeline; only rank 0 writes results."""

from __future__ import annotations

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from obliviate.data.text.synthetic import write_synthetic_tofu
from obliviate.pipelines import llm


def _cfg(tofu, out):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("obliviate.configs", version_base="1.3"):
            return compose(config_name="unlearn", overrides=[
                "experiment=llm/tofu_synthetic", f"paths.tofu={tofu}", f"paths.output_dir={out}", "trainer=GradDiff",
                "++trainer.args.max_steps=1", "++trainer.args.disable_tqdm=true", "data.cache_tokenized=false",
                "model.config_args.hidden_size=32", "model.config_args.intermediate_size=64",
                "model.config_args.num_hidden_layers=1", "model.config_args.num_attention_heads=2",
                "model.config_args.num_key_value_heads=1"])
    finally:
        GlobalHydra.instance().clear()


def test_only_rank_zero_writes_llm_results(tmp_path, monkeypatch):
    tofu = write_synthetic_tofu(tmp_path / "tofu", 10, 2, 0)
    monkeypatch.setenv("RANK", "1")  # what torchrun sets on the second process
    res = llm.run_unlearning(_cfg(tofu, tmp_path / "r1"), tmp_path / "r1")
    assert res["status"] == "completed"
    written = [p for p in (tmp_path / "r1").rglob("*") if p.is_file() and "trainer" not in p.parts]
    assert written == [], written  # no metrics.json, eval/*.json or model dir from a non-zero rank
    monkeypatch.setenv("RANK", "0")
    llm.run_unlearning(_cfg(tofu, tmp_path / "r0"), tmp_path / "r0")
    assert (tmp_path / "r0" / "metrics.json").is_file() and (tmp_path / "r0" / "model").is_dir()
    assert (tmp_path / "r0" / "eval" / "nll_after.json").is_file()
