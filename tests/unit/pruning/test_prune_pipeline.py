"""The unlearn-pipeline transforms (prepare_model / finalize_model) in process, on a tiny dataset."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from obliviate.data.vision import TensorImageDataset, VisionData
from obliviate.errors import ConfigError
from obliviate.models.vision import DigitsCNN
from obliviate.pipelines.prune import finalize_model, lora_options, prepare_model, pruning_options, transform_report
from obliviate.pruning import PRUNERS, measure_sparsity, save_masks


def _data():
    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % 10)
    return VisionData(ds, ds, 10, [str(i) for i in range(10)])


def _cfg(**blocks):
    base = {"seed": 0, "model": {"builder": "digits_cnn", "track": "vision"},
            "train": {"args": {"per_device_train_batch_size": 20, "learning_rate": 1e-2, "num_train_epochs": 1, "disable_tqdm": True}},
            "pruning": {"name": "none"}, "lora": {"enabled": False}}
    return OmegaConf.create({**base, **blocks})


def _steps(model, n=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.5)
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
        opt.step()


def test_none_is_a_noop(tmp_path):
    cfg = _cfg()
    assert pruning_options(cfg) is None and lora_options(cfg) is None
    model = DigitsCNN()
    out, state = prepare_model(cfg, model, _data(), tmp_path, 0)
    assert out is model
    finalize_model(out, state, tmp_path)
    assert set(transform_report(state)) == {"sparsity"} and state["sparsity"]["after_unlearning"] == 0.0


def test_mask_file_plus_lora_then_merge(tmp_path):
    torch.manual_seed(0)
    source = DigitsCNN()
    masks = PRUNERS.get("omp")(source, rate=0.85).masks
    save_masks(masks, tmp_path / "mask.safetensors")
    cfg = _cfg(pruning={"name": "mask", "mask_file": str(tmp_path / "mask.safetensors")},
               lora={"enabled": True, "r": 2, "alpha": 4, "merge": True, "target_modules": None})
    model, state = prepare_model(cfg, copy.deepcopy(source), _data(), tmp_path, 0, evaluate=lambda m: {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 4.0})
    assert state["sparsity"]["before_unlearning"] == pytest.approx(0.85, abs=1e-4)
    assert state["lora"]["trainable_params"] < state["lora"]["total_params"]
    _steps(model)
    merged = finalize_model(model, state, tmp_path)
    assert not any("lora" in n for n, _ in merged.named_modules())
    assert state["sparsity"]["after_unlearning"] == pytest.approx(0.85, abs=1e-4)
    assert (tmp_path / "unlearned" / "adapter" / "adapter_config.json").is_file()
    report = transform_report(state, {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 5.0})
    assert report["pruned"]["avg_gap"] == pytest.approx(0.25) and report["pruning"]["method"] == "mask"


def test_omp_with_finetune_and_imp_rewind_rules(tmp_path):
    cfg = _cfg(pruning={"name": "omp", "rate": 0.6, "finetune_epochs": 1})
    model, state = prepare_model(cfg, DigitsCNN(), _data(), tmp_path, 0)
    assert state["pruning"]["finetune_epochs"] == 1
    assert measure_sparsity(model).sparsity == pytest.approx(0.6, abs=1e-4)
    with pytest.raises(ConfigError, match="rewind_epoch=2"):
        prepare_model(_cfg(pruning={"name": "imp", "rate": 0.5, "rounds": 1, "rewind_epoch": 2}), DigitsCNN(), _data(), tmp_path, 0)
    with pytest.raises(ConfigError, match="mask_file"):
        prepare_model(_cfg(pruning={"name": "mask"}), DigitsCNN(), _data(), tmp_path, 0)
