"""End-to-end structured pruning: `obliviate prune pruning=loraprune|unlearning_prune` on tiny-llama
(random init + synthetic TOFU), prune-then-GradDiff in one `obliviate unlearn` run, and
`pruning=unlearning_prune` before FT on digits."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
LLM = ["experiment=llm/tofu_synthetic", "synthetic.n_authors=6", "synthetic.qa_per_author=2", "eval_batch_size=8"]
UP = ["pruning=unlearning_prune", "pruning.max_forget_batches=1", "pruning.lora_warmup_steps=3", "pruning.retain_eval_samples=8",
      "pruning.batch_size=4"]


def run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OBLIVIATE_DEBUG": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("loraprune")


def test_loraprune_shrinks_tiny_llama_and_the_saved_model_reloads(workdir):
    import torch
    from transformers import AutoModelForCausalLM

    out = workdir / "lp"
    proc = run("prune", *LLM, "pruning=loraprune", "pruning.steps=8", "pruning.warmup_steps=2", "pruning.cooldown_steps=2",
               "pruning.prune_freq=2", "pruning.latency_repeats=2", "pruning.batch_size=4", f"paths.output_dir={out}",
               f"paths.cache_dir={workdir / 'cache'}", cwd=workdir)
    assert "loraprune:" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["pruned"]["params"] < m["original"]["params"] and m["pruning"]["removed"] and m["pruning"]["uniform"]
    assert m["pruning"]["n_pruned"] > 0 and m["original"]["latency_ms"] > 0 and m["pruned"]["latency_ms"] > 0
    assert m["original"]["train_nll"] > 0 and m["pruned"]["train_nll"] > 0
    model = AutoModelForCausalLM.from_pretrained(m["model_dir"])
    assert sum(p.numel() for p in model.parameters()) == m["pruned"]["params"]
    assert model.config.intermediate_size == 64 and model.config.num_key_value_heads == 1  # tiny-llama: 128, 2 kv heads; 50 %
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_unlearning_prune_then_graddiff_in_one_run(workdir):
    out = workdir / "ug"
    proc = run("unlearn", *LLM, "trainer=GradDiff", *UP, "pruning.ratio=0.25", "trainer.args.num_train_epochs=1",
               f"paths.output_dir={out}", f"paths.cache_dir={workdir / 'cache'}", cwd=workdir)
    assert "after GradDiff" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    p = m["pruning"]
    assert m["status"] == "completed" and p["method"] == "unlearning_prune"
    assert set(p["loss"]["before"]) == {"forget", "retain"} and set(p["loss"]["after"]) == {"forget", "retain"}
    assert p["retain_metric"]["name"] == "retain_nll" and p["n_groups"] == 4 + 256  # 2 layers x (2 KV groups + 128 channels)
    assert sum(len(v) for v in p["pruned_groups"].values()) == p["n_pruned"] <= 2 * (0 + 32)


def test_vision_unlearning_prune_before_ft(workdir):
    out = workdir / "vu"
    run("unlearn", "experiment=vision/digits", "trainer=FT", "forget_class=9", *UP, "pruning.batch_size=64",
        "pruning.retain_eval_samples=128", "pruning.max_forget_batches=2", "train.args.num_train_epochs=1",
        "trainer.args.num_train_epochs=1", "+train.args.disable_tqdm=true", "+trainer.args.disable_tqdm=true",
        f"paths.output_dir={out}", cwd=workdir)
    m = json.loads((out / "metrics.json").read_text())
    p = m["pruning"]
    assert p["method"] == "unlearning_prune" and p["retain_metric"]["name"] == "retain_accuracy"
    assert "pruned" in m and m["status"] == "completed"
    if p["n_pruned"]:
        assert m["sparsity"]["before_unlearning"] > 0 and m["sparsity"]["after_unlearning"] >= m["sparsity"]["before_unlearning"] - 1e-9


def test_vision_loraprune_zeroes_conv_channels(workdir):
    out = workdir / "vlp"
    run("prune", "pruning=loraprune", "pruning.steps=12", "pruning.warmup_steps=2", "pruning.cooldown_steps=2", "pruning.prune_freq=2",
        "pruning.target_ratio=0.25", "pruning.latency_repeats=2", "train.args.num_train_epochs=1", "+train.args.disable_tqdm=true",
        f"paths.output_dir={out}", cwd=workdir)
    m = json.loads((out / "metrics.json").read_text())
    p = m["pruning"]
    assert p["method"] == "loraprune" and p["n_pruned"] == 16 and p["n_groups"] == 64  # digits_cnn: 64 conv channels
    assert p["pruned"]["nonzero_params"] < p["original"]["nonzero_params"] and m["pruned"]["sparsity"] > 0
    assert (out / "pruned" / "mask.safetensors").is_file()
