"""End-to-end: `obliviate prune` (IMP with rewinding) and `obliviate unlearn ... pruning=... lora...` on digits."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

OBLIVIATE = shutil.which("obliviate", path=str(Path(sys.executable).parent)) or "obliviate"
FAST = ["train.args.num_train_epochs=2", "trainer.args.num_train_epochs=1", "+train.args.disable_tqdm=true",
        "+trainer.args.disable_tqdm=true"]


def run(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OBLIVIATE_DEBUG": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([OBLIVIATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"obliviate {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _masked_zero(model_file, mask_file):
    from safetensors.torch import load_file

    state, masks = load_file(str(model_file)), load_file(str(mask_file))
    return all(state[k][~m.bool()].count_nonzero() == 0 for k, m in masks.items()) and len(masks) > 0


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune")
    proc = run("prune", "pruning=imp", "pruning.rate=0.75", "pruning.rounds=2", "pruning.rewind_epoch=1", "pruning.retrain_epochs=1",
               f"paths.output_dir={out}", *FAST, cwd=out)
    assert "sparsity" in proc.stdout
    return out


def test_prune_imp_reaches_the_rate_with_rewinding(pruned):
    m = json.loads((pruned / "metrics.json").read_text())
    p = m["pruning"]
    assert abs(p["sparsity"] - 0.75) < 1 / p["prunable_weights"] + 1e-12
    assert m["pruned"]["sparsity"] == p["sparsity"] and m["original"]["sparsity"] == 0
    assert [h["round"] for h in p["history"]] == [1, 2] and p["rewound"] and p["retrained"]
    assert (pruned / "original" / "rewind_epoch1.safetensors").is_file()
    assert _masked_zero(pruned / "pruned" / "model.safetensors", pruned / "pruned" / "mask.safetensors")
    assert m["pruned"]["test_accuracy"] > 20  # still a classifier
    assert json.loads((pruned / "manifest.json").read_text())["status"] == "completed"


def test_unlearn_with_omp_keeps_the_measured_rate(pruned, tmp_path):
    out = tmp_path / "omp"
    run("unlearn", "experiment=vision/digits", "trainer=FT", "forget_class=9", "pruning=omp", "pruning.rate=0.9",
        f"original_checkpoint={pruned / 'original' / 'model.safetensors'}", f"paths.output_dir={out}", *FAST, cwd=tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    assert m["sparsity"]["original"] == 0
    assert abs(m["sparsity"]["before_unlearning"] - 0.9) < 0.005
    assert abs(m["sparsity"]["after_unlearning"] - 0.9) < 0.005
    assert m["pruning"]["method"] == "omp" and "UA" in m["pruned"]
    assert _masked_zero(out / "unlearned" / "model.safetensors", out / "pruned" / "mask.safetensors")


@pytest.mark.slow
def test_unlearn_reusing_a_mask_with_lora(pruned, tmp_path):
    out = tmp_path / "lora"
    run("unlearn", "trainer=RL", "forget_class=9", f"original_checkpoint={pruned / 'pruned' / 'model.safetensors'}",
        "pruning=mask", f"pruning.mask_file={pruned / 'pruned' / 'mask.safetensors'}", "lora.enabled=true", "lora.r=4",
        f"paths.output_dir={out}", *FAST, cwd=tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    expected = json.loads((pruned / "metrics.json").read_text())["pruning"]["sparsity"]
    assert m["sparsity"]["before_unlearning"] == pytest.approx(expected)
    assert m["sparsity"]["after_unlearning"] == pytest.approx(expected)  # merged adapters are masked too
    assert m["lora"]["trainable_params"] < m["lora"]["total_params"] / 5
    assert (out / "unlearned" / "adapter" / "adapter_model.safetensors").is_file()
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(out / "unlearned" / "model.safetensors"))
    assert not any("lora" in k for k in state) and isinstance(state["features.0.weight"], torch.Tensor)
