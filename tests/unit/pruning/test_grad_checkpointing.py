"""Gradient checkpointing does not change what LoRAPrune or the dual sensitivity see.

Checkpointing recomputes activations in the backward pass; the importance estimates read the
parameters' gradients after it, so scores, masks and trained weights must equal a run without
it (to float tolerance)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from obliviate.models.lora import apply_lora  # noqa: E402
from obliviate.pruning.groups import discover_groups  # noqa: E402
from obliviate.pruning.loraprune import LoRAPruneConfig, LoRAPruner, loraprune_callback  # noqa: E402
from obliviate.pruning.unlearning import UnlearningPruneConfig, dual_sensitivity, lora_warmup  # noqa: E402

from tests.unit.pruning.test_loraprune import Tokens, tiny_llama  # noqa: E402



def _loraprune_run(tmp_path, checkpointing: bool):
    model = apply_lora(tiny_llama(), r=4, alpha=8)
    pruner = LoRAPruner(model, total_steps=8, cfg=LoRAPruneConfig(target_ratio=0.5, warmup_steps=2, cooldown_steps=2, prune_freq=2))
    args = transformers.TrainingArguments(str(tmp_path / str(checkpointing)), max_steps=8, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no",
                                          use_cpu=True, disable_tqdm=True, seed=0, data_seed=0, gradient_checkpointing=checkpointing,
                                          gradient_checkpointing_kwargs={"use_reentrant": False})
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[loraprune_callback(pruner)]).train()
    return model, pruner


def test_loraprune_with_gradient_checkpointing_matches_without(tmp_path):
    plain_model, plain = _loraprune_run(tmp_path, False)
    ckpt_model, ckpt = _loraprune_run(tmp_path, True)
    assert ckpt_model.base_model.model.is_gradient_checkpointing and not plain_model.base_model.model.is_gradient_checkpointing
    assert plain.masks.pruned() == ckpt.masks.pruned() and plain.masks.sparsity() == pytest.approx(0.5)
    for key, score in plain.tracker.scores.items():
        torch.testing.assert_close(ckpt.tracker.scores[key], score, rtol=1e-4, atol=1e-6)
    for (name, p), (_, q) in zip(plain_model.named_parameters(), ckpt_model.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("metric", ["grad", "lora", "taylor"])
def test_dual_sensitivity_with_gradient_checkpointing_matches_without(metric):
    gen = torch.Generator().manual_seed(0)
    forget = [torch.randint(0, 32, (2, 8), generator=gen) for _ in range(2)]
    retain = [torch.randint(32, 64, (2, 8), generator=gen) for _ in range(2)]
    lm = lambda m, ids: m(input_ids=ids, labels=ids).loss  # noqa: E731
    scores = []
    for checkpointing in (False, True):
        model = tiny_llama()
        calls = []
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for layer in model.model.layers:  # count the checkpointed layer calls of the sensitivity passes
                inner = layer._gradient_checkpointing_func
                layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: (calls.append(1), _f(*a, **k))[1]
        if metric == "lora":
            torch.manual_seed(1)
            model = apply_lora(model, r=4, alpha=8)
            lora_warmup(model, forget + retain, lm, steps=3, lr=1e-2)
        model.train()  # checkpointing is only active in train mode; dual_sensitivity switches to eval and back
        s_f, s_r, dual = dual_sensitivity(model, forget, retain, lm, UnlearningPruneConfig(prune_metric=metric), discover_groups(model))
        assert model.training
        if checkpointing:  # 2 layers x (2 forget + 2 retain micro-batches); lora: warm-up steps too
            assert len(calls) >= 8
        scores.append((s_f, s_r))
    for a, b in zip(scores[0], scores[1]):
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-7)


def test_a_mask_used_in_an_inference_mode_pass_still_trains():
    """An evaluation pass under torch.inference_mode (the metrics runner's) before training must
    not leave an inference tensor in the mask hooks' cache (autograd refuses to save it)."""
    from obliviate.pruning.groups import GroupMasks

    model = tiny_llama()
    masks = GroupMasks(discover_groups(model)).attach(model)
    key = next(iter(masks.keep))
    masks.keep[key][0] = False
    masks.version += 1
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.inference_mode():
        model(input_ids=ids)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # raised "Inference tensors cannot be saved for backward" before the fix
    assert any(p.grad is not None for p in model.parameters())
