"""Masks stay enforced: AdamW with weight decay, the HF Trainer, save/load, deepcopy, PEFT."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from obliviate.checkpoint import load_model, save_model
from obliviate.errors import ConfigError
from obliviate.models.vision import DigitsCNN
from obliviate.pruning import PRUNERS, attach_masks, detach_masks, enforce_masks, load_masks, measure_sparsity, save_masks


def _pruned(rate=0.8, seed=0):
    torch.manual_seed(seed)
    model = DigitsCNN()
    result = PRUNERS.get("omp")(model, rate=rate)
    return model, result.masks


def _adamw_steps(model, steps=5, two_forwards=True):
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.5)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        if two_forwards:  # e.g. forget + retain forwards before one backward
            loss = loss - 0.5 * nn.functional.cross_entropy(model(x.flip(-1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _zeros_where_pruned(model, masks):
    return all(model.get_parameter(k)[~m].count_nonzero() == 0 for k, m in masks.items())


def test_masks_stay_zero_under_adamw_with_weight_decay():
    model, masks = _pruned()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _adamw_steps(model)
    assert _zeros_where_pruned(model, masks)  # exact zeros *after* the last step (no forward since)
    assert measure_sparsity(model).sparsity == pytest.approx(0.8, abs=1e-4)
    assert not torch.equal(before["features.0.weight"], model.features[0].weight)  # survivors trained


def test_masks_survive_deepcopy_and_save_load(tmp_path):
    model, masks = _pruned()
    clone = copy.deepcopy(model)
    _adamw_steps(clone)
    assert _zeros_where_pruned(clone, masks)
    save_model(clone, tmp_path / "model.safetensors")
    save_masks(masks, tmp_path / "mask.safetensors")
    fresh = load_model(DigitsCNN(), tmp_path / "model.safetensors")
    assert measure_sparsity(fresh).sparsity == pytest.approx(0.8, abs=1e-4)  # zeros are in the checkpoint
    loaded = load_masks(tmp_path)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[k], masks[k]) for k in masks)
    attach_masks(fresh, loaded)
    _adamw_steps(fresh)
    assert _zeros_where_pruned(fresh, masks)


def test_external_writes_are_rezeroed_and_detach_stops_enforcement():
    model, masks = _pruned()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # e.g. a one-shot method adding noise
    model(torch.zeros(1, 1, 8, 8))  # the forward pre-hook re-zeroes
    assert _zeros_where_pruned(model, masks)
    with torch.no_grad():
        model.features[0].weight.add_(0.01)
    assert enforce_masks(model) == 1 and _zeros_where_pruned(model, masks)
    detach_masks(model)
    _adamw_steps(model, steps=2)
    assert measure_sparsity(model).sparsity < 0.1


def test_masks_enforced_through_the_hf_trainer(tmp_path):
    from obliviate.data import stack_collate
    from obliviate.data.vision import TensorImageDataset
    from obliviate.engine import SupervisedTrainer
    from obliviate.models.adapters import ClassifierAdapter
    from obliviate.pipelines.common import training_arguments

    model, masks = _pruned()
    ds = TensorImageDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    args = training_arguments({"max_steps": 6, "per_device_train_batch_size": 16, "learning_rate": 0.05, "weight_decay": 0.5,
                               "disable_tqdm": True, "logging_steps": 100}, tmp_path, seed=0)
    SupervisedTrainer(model, args, ClassifierAdapter(10), train_dataset=ds, data_collator=stack_collate).train()
    assert _zeros_where_pruned(model, masks)


def test_pruned_base_stays_sparse_under_lora():
    from obliviate.models.lora import apply_lora

    model, masks = _pruned()
    peft_model = apply_lora(model, r=2, alpha=4)
    _adamw_steps(peft_model)
    assert measure_sparsity(peft_model).sparsity == pytest.approx(0.8, abs=1e-4)  # base weights, adapters not counted
    merged = peft_model.merge_and_unload()
    merged(torch.zeros(1, 1, 8, 8))
    assert _zeros_where_pruned(merged, masks)  # the mask also holds on merged weights


def test_mask_mismatch_is_a_config_error():
    model, masks = _pruned()
    with pytest.raises(ConfigError, match="names no Linear/Conv"):
        attach_masks(model, {"nope.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="shape"):
        attach_masks(model, {"features.0.weight": torch.ones(3, dtype=torch.bool)})
    assert np.isclose(measure_sparsity(model).sparsity, 0.8, atol=1e-4)
