"""TaskVector: θ' = θ − α(θ_ft − θ) exactly; forget NLL rises; frozen weights and buffers kept."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from obliviate.methods import build_method
from obliviate.methods._common import pad_collate
from obliviate.models.adapters import CausalLMAdapter, ClassifierAdapter

from .conftest import forget_items, retain_items, tiny_llama

FT_ARGS = {"finetune_lr": 1e-2, "finetune_max_steps": 8, "finetune_batch_size": 2}


def _recording(method):
    """Wrap ``method.finetune`` to snapshot θ_ft right after fine-tuning."""
    snap = {}
    real = method.finetune

    def finetune(model, *args, **kwargs):
        real(model, *args, **kwargs)
        snap.update({n: p.detach().clone() for n, p in model.named_parameters()})

    method.finetune = finetune
    return snap


@pytest.mark.parametrize("alpha", [1.0, 0.37])
def test_arithmetic_is_exact(alpha):
    model = tiny_llama(0)
    model.model.embed_tokens.weight.requires_grad_(False)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = build_method("TaskVector", {**FT_ARGS, "alpha": alpha})
    theta_ft = _recording(method)
    out = method.apply(model, forget_items(), retain_items(), CausalLMAdapter(), seed=0)
    assert out is model and method.finetune_steps == 8
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":  # frozen: neither fine-tuned nor moved
            assert torch.equal(p, theta[name])
            continue
        assert not torch.equal(theta_ft[name], theta[name]), name
        assert torch.equal(p.detach(), theta[name] - alpha * (theta_ft[name] - theta[name])), name


def test_negated_task_vector_raises_forget_nll_more_than_retain(memorised):
    adapter = CausalLMAdapter()
    probe = pad_collate([{k: v for k, v in it.items() if k != "idk"} for it in forget_items()])
    retain_probe = pad_collate(retain_items())

    def nlls():
        with torch.no_grad():
            return tuple(adapter.per_sample_nll(memorised, b)[0].mean().item() for b in (probe, retain_probe))

    (f0, r0) = nlls()
    build_method("TaskVector", FT_ARGS).apply(memorised, forget_items(), None, adapter, seed=0)
    (f1, r1) = nlls()
    assert f1 > f0 + 0.5 and f1 - f0 > 2 * (r1 - r0), (f0, f1, r0, r1)


def test_deterministic_given_the_seed():
    a, b = tiny_llama(0), tiny_llama(0)
    for m in (a, b):
        build_method("TaskVector", FT_ARGS).apply(m, forget_items(), None, CausalLMAdapter(), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_vision_classifier_and_buffers_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    items = [{"pixel_values": torch.randn(2, 4), "labels": i % 3, "index": i} for i in range(6)]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    theta = copy.deepcopy(model.state_dict())
    build_method("TaskVector", FT_ARGS).apply(model, items, None, ClassifierAdapter(3), seed=0)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert not torch.equal(model[1].weight, theta["1.weight"])
