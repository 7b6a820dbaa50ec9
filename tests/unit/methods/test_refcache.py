"""NPO / IdkDPO reference log-probs: computed once, then no reference forward and no reference
model in memory."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

import obliviate.engine.trainer as trainer_mod
from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.engine import build_trainer
from obliviate.methods import build_method
from obliviate.methods._common import pad_collate
from obliviate.methods.base import MethodContext
from obliviate.models.adapters import CausalLMAdapter

from .conftest import forget_items, make_ctx, pair_batch, retain_items, tiny_llama


@pytest.fixture
def counted_refs(monkeypatch):
    """Patches the trainer's ``frozen_copy``: records weakrefs to the built references and
    counts their forward calls."""
    info = {"calls": 0, "refs": []}
    original = trainer_mod.frozen_copy

    def counting_copy(model):
        ref = original(model)
        ref.register_forward_pre_hook(lambda *_: info.__setitem__("calls", info["calls"] + 1))
        info["refs"].append(weakref.ref(ref))
        return ref

    monkeypatch.setattr(trainer_mod, "frozen_copy", counting_copy)
    return info


class _CallsPerStep(TrainerCallback):
    def __init__(self, info):
        self.info, self.history = info, []

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append(self.info["calls"])


def _trainer(name, method_args, tmp_path, max_steps=6):
    trainer_cls, method = build_trainer(name, method_args)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                             learning_rate=1e-3, max_steps=max_steps, report_to="none", save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
    pairs = ForgetRetainDataset(forget_items(), retain_items(), seed=0)
    return trainer_cls(tiny_llama(0), args, method=method, adapter=CausalLMAdapter(), train_dataset=pairs,
                       data_collator=PairCollator(pad_collate))


@pytest.mark.parametrize(("name", "sides"), [("NPO", 1), ("IdkDPO", 2)])
def test_precompute_runs_the_reference_once_then_releases_it(name, sides, counted_refs, tmp_path):
    trainer = _trainer(name, {}, tmp_path)
    n_batches = 2  # 4 forget samples, ref_batch_size 2
    assert counted_refs["calls"] == n_batches * sides
    assert trainer.ref_model is None and trainer.ctx.ref_model is None
    gc.collect()
    assert counted_refs["refs"][0]() is None, "the reference model is still alive somewhere"
    per_step = _CallsPerStep(counted_refs)
    trainer.add_callback(per_step)
    trainer.train()
    assert per_step.history == [n_batches * sides] * 6  # not one reference forward while training
    assert trainer.method.ref_cache.ref_forwards == n_batches * sides


def test_lazy_cache_stops_reference_forwards_after_the_first_pass(counted_refs, tmp_path):
    trainer = _trainer("NPO", {"ref_cache": "lazy"}, tmp_path)
    assert counted_refs["calls"] == 0 and trainer.ref_model is not None
    per_step = _CallsPerStep(counted_refs)
    trainer.add_callback(per_step)
    trainer.train()
    # epoch 1 (2 steps) fills the cache; epochs 2-3 run no reference forward
    assert per_step.history == [1, 2, 2, 2, 2, 2]
    assert trainer.ref_model is None
    gc.collect()
    assert counted_refs["refs"][0]() is None


def test_kl_retain_term_keeps_the_reference(tmp_path, counted_refs):
    trainer = _trainer("NPO", {"retain_loss_type": "KL"}, tmp_path, max_steps=2)
    assert trainer.ref_model is not None
    trainer.train()
    assert trainer.ref_model is not None


def test_methods_without_reference_never_build_one(tmp_path, counted_refs):
    for name in ("SimNPO", "GradDiff", "IdK", "WGA"):
        trainer = _trainer(name, {}, tmp_path, max_steps=1)
        assert trainer.ref_model is None
    assert counted_refs["refs"] == []


def test_cached_and_live_reference_give_the_same_loss():
    model, ref = tiny_llama(1), tiny_llama(0)
    batch = pair_batch()
    precomputed = build_method("NPO")
    ctx_pre = make_ctx(precomputed, model, ref)
    assert ctx_pre.ref_model is None
    lazy = build_method("NPO", {"ref_cache": "lazy"})
    ctx_lazy = MethodContext(adapter=CausalLMAdapter(), ref_model=ref)  # no forget dataset: lazy, never released
    with torch.no_grad():
        a = precomputed.loss(model, batch, ctx_pre)[0]
        b = lazy.loss(model, batch, ctx_lazy)[0]
        c = lazy.loss(model, batch, ctx_lazy)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-6) and b.item() == c.item()
    assert lazy.ref_cache.ref_forwards == 1 and ctx_lazy.ref_model is ref


def test_unknown_sample_after_release_fails_clearly():
    model = tiny_llama(1)
    method = build_method("NPO")
    ctx = make_ctx(method, model, tiny_llama(0))
    batch = pair_batch()
    batch["forget"]["input_ids"][0, 0] = 63  # a sample that was never in the forget set
    with pytest.raises(RuntimeError, match="not in the reference cache"):
        method.loss(model, batch, ctx)
