"""`obliviate prune` metrics.json carries the uniform keys (params, nonzero params, wall time,
forget/retain metrics before/after) on both tracks; run in process on tiny configs."""

import json

import pytest
import torch
from hydra import compose, initialize_config_module

from obliviate.checkpoint import load_model
from obliviate.pruning import attach_masks, load_masks
from obliviate.checkpoint import load_model as load_physical  # shrinks a fresh model to the stored sizes

VISION_LP = ["pruning=loraprune", "pruning.steps=12", "pruning.warmup_steps=2", "pruning.cooldown_steps=2",
             "pruning.prune_freq=2", "pruning.target_ratio=0.25", "pruning.latency_repeats=2", "train.args.num_train_epochs=1",
             "+train.args.disable_tqdm=true"]
LLM = ["experiment=llm/tofu_synthetic", "synthetic.n_authors=6", "synthetic.qa_per_author=2", "eval_batch_size=8"]
LLM_UP = ["pruning=unlearning_prune", "pruning.max_forget_batches=1", "pruning.lora_warmup_steps=3",
          "pruning.retain_eval_samples=8", "pruning.batch_size=4", "pruning.ratio=0.25"]
LLM_LP = ["pruning=loraprune", "pruning.steps=4", "pruning.warmup_steps=1", "pruning.cooldown_steps=1", "pruning.prune_freq=1",
          "pruning.latency_repeats=1", "pruning.batch_size=4", "pruning.eval_batches=1"]
COMMON = ("params_before", "params_after", "nonzero_params_before", "nonzero_params_after", "wall_time_s")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _cfg(overrides):
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        return compose(config_name="prune", overrides=overrides)


def _check_common(m):
    assert all(k in m for k in COMMON), [k for k in COMMON if k not in m]
    assert m["wall_time_s"] > 0 and m["params_before"] > 0 and m["nonzero_params_after"] <= m["params_after"]


def test_vision_physical_loraprune_and_omp_metrics(tmp_path):
    from obliviate.pipelines.prune import run_prune
    from obliviate.pipelines.vision import build_model, load_data, predict

    out = tmp_path / "lp"
    cfg = _cfg([*VISION_LP, "forget_class=9", f"paths.output_dir={out}"])
    res = run_prune(cfg, out)
    m = json.loads((out / "metrics.json").read_text())
    _check_common(m)
    assert m["params_after"] < m["params_before"] and m["pruning"]["removed"]
    assert m["params_after"] == m["pruning"]["pruned"]["params"] and m["params_before"] == m["pruning"]["original"]["params"]
    for k in ("forget_accuracy", "retain_accuracy"):
        assert 0 <= m[f"{k}_before"] <= 100 and 0 <= m[f"{k}_after"] <= 100
    assert set(m["pruning"]["removal"]["removed_sets"]) == {"features.0", "features.2"}
    assert m["pruned"]["sparsity"] > 0 and m["pruned"]["sparsity_physical"] < m["pruned"]["sparsity"]  # full-size vs shrunk
    # the full-size pruned/model.safetensors (+ mask) still loads into the configured architecture ...
    data = load_data(cfg)
    full = load_model(build_model(cfg, data, 0), out / "pruned" / "model.safetensors").eval()
    attach_masks(full, load_masks(out / "pruned" / "mask.safetensors"))
    # ... and so does the shrunk one, rebuilt from its metadata; both predict like the returned model
    shrunk = load_physical(build_model(cfg, data, 0), res["physical_model_file"]).eval()
    assert sum(p.numel() for p in shrunk.parameters()) == m["params_after"]
    x = torch.stack([data.test[i]["pixel_values"] for i in range(16)])
    with torch.no_grad():
        assert torch.allclose(full(x), shrunk(x), atol=1e-5)
    assert predict(shrunk, data.test)["pred"].tolist() == predict(full, data.test)["pred"].tolist()

    # zeroed-not-removed pruning (OMP) of the same original: same params, fewer non-zeros
    out2 = tmp_path / "omp"
    original = out / "original" / "model.safetensors"
    cfg2 = _cfg(["pruning=omp", "pruning.rate=0.5", "forget_class=9", f"original_checkpoint={original}", f"paths.output_dir={out2}"])
    m2 = run_prune(cfg2, out2)
    _check_common(m2)
    assert m2["params_after"] == m2["params_before"] and m2["nonzero_params_after"] < m2["nonzero_params_before"]
    assert m2["forget_accuracy_before"] == pytest.approx(m["forget_accuracy_before"]) and "retain_accuracy_after" in m2


def test_vision_without_forget_selection_has_no_forget_keys(tmp_path):
    from obliviate.pipelines.prune import run_prune

    out = tmp_path / "nf"
    m = run_prune(_cfg([*VISION_LP, "pruning.remove=false", f"paths.output_dir={out}"]), out)
    _check_common(m)
    assert not m["pruning"]["removed"] and m["params_after"] == m["params_before"]
    assert m["nonzero_params_after"] < m["nonzero_params_before"]
    assert not any(k.startswith(("forget_", "retain_")) for k in m if k != "forget_selection")


@pytest.mark.parametrize("method", ["unlearning_prune", "loraprune"])
def test_llm_prune_metrics(tmp_path, method):
    from obliviate.pipelines.prune_llm import run_prune_llm

    out = tmp_path / method
    run_prune_llm(_cfg([*LLM, *(LLM_UP if method == "unlearning_prune" else LLM_LP), f"paths.output_dir={out}",
                        f"paths.cache_dir={tmp_path / 'cache'}"]), out)
    m = json.loads((out / "metrics.json").read_text())
    _check_common(m)
    for k in ("forget_loss_before", "forget_loss_after", "retain_loss_before", "retain_loss_after"):
        assert m[k] > 0
    if method == "loraprune":
        assert m["params_after"] < m["params_before"] and m["params_after"] == m["pruned"]["params"]
    else:
        assert m["params_after"] == m["params_before"] and m["nonzero_params_after"] < m["nonzero_params_before"]
        assert m["forget_loss_before"] == m["pruning"]["loss"]["before"]["forget"]
