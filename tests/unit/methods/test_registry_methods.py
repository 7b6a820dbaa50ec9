"""Checks every registered LLM loss-object method gets for free (parametrised over the registry):
documented config, a YAML with the same defaults, padding invariance, no gradient through
prompt/padding positions, and a short UnlearningTrainer run that raises the forget NLL."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import TrainingArguments

import obliviate.configs
from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.engine import UnlearningTrainer, build_trainer
from obliviate.methods import METHODS, build_method
from obliviate.methods._common import pad_collate
from obliviate.methods.base import UnlearningMethod
from obliviate.models.adapters import CausalLMAdapter

from .conftest import forget_items, make_ctx, pad_more, pair_batch, retain_items, tiny_llama

CONFIG_DIR = Path(obliviate.configs.__file__).parent / "trainer"
LLM_METHODS = sorted(
    n for n in METHODS.names(tracks="llm")
    if isinstance(METHODS.get(n), type) and issubclass(METHODS.get(n), UnlearningMethod) and not METHODS.get(n).one_shot
)
# Arguments a method needs on the 2-layer test model (its defaults target 16+ layer models; SatImp's
# reference forget weight gamma = 0.1 moves it too little in the 10-step run below).
TINY_ARGS = {"RMU": {"layer": 1}, "SatImp": {"gamma": 1.0}}
# Methods that do not target the forget set directly, so one short run need not raise its NLL.
INDIRECT = {"FT": "fine-tunes on retain only; forgetting is a side effect"}


def _method(name: str):
    return build_method(name, TINY_ARGS.get(name))


@pytest.mark.parametrize("name", sorted(
    n for n in METHODS.names(tracks="llm") if isinstance(METHODS.get(n), type) and issubclass(METHODS.get(n), UnlearningMethod)
))
def test_config_fields_are_documented_and_yaml_has_the_defaults(name):
    cls = METHODS.get(name)
    fields = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    doc = cls.Config.__doc__ or ""
    undocumented = [f for f in fields if not re.search(rf"^\s+{f}:", doc, re.MULTILINE)]
    assert not undocumented, f"{name}.Config fields missing from its Attributes docs: {undocumented}"
    yaml = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert yaml.handler == name
    shipped = OmegaConf.to_container(yaml.method_args) if yaml.get("method_args") else {}
    assert shipped == fields, f"configs/trainer/{name}.yaml method_args differ from {name}.Config defaults"


@pytest.mark.parametrize("name", LLM_METHODS)
def test_build_trainer_resolves_loss_objects(name):
    trainer_cls, method = build_trainer(name, TINY_ARGS.get(name))
    assert trainer_cls is UnlearningTrainer and isinstance(method, METHODS.get(name))


@pytest.mark.parametrize("name", LLM_METHODS)
def test_padding_does_not_change_the_loss(name):
    model = tiny_llama(1)
    method = _method(name)
    ctx = make_ctx(method, model)
    with torch.no_grad():
        plain, _ = method.loss(model, pair_batch(), ctx)
        padded, _ = method.loss(model, pair_batch(extra_pad=3), ctx)
    assert torch.isfinite(plain)
    assert padded.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)


def _pad_to(sub: dict, width: int) -> dict:
    return pad_more(sub, width - sub["input_ids"].shape[1])


@pytest.mark.parametrize("name", LLM_METHODS)
def test_prompt_and_padding_positions_get_no_gradient(name):
    model = tiny_llama(1)
    method = _method(name)
    ctx = make_ctx(method, model)
    batch = pair_batch()
    # distinct widths tell the sub-batches apart in the captured logits
    idk = _pad_to(batch["forget"].pop("idk"), 11)
    batch = {"forget": {**_pad_to(batch["forget"], 9), "idk": idk}, "retain": _pad_to(batch["retain"], 13)}
    labels = {9: batch["forget"]["labels"], 11: idk["labels"], 13: batch["retain"]["labels"]}
    captured = []

    def hook(_m, _i, out):
        if out.requires_grad:
            out.retain_grad()
            captured.append(out)

    handle = model.lm_head.register_forward_hook(hook)
    try:
        loss, _ = method.loss(model, batch, ctx)
        loss.backward()
    finally:
        handle.remove()
    if not captured:
        pytest.skip(f"{name} never computes logits (checked by its own test)")
    for logits in captured:
        live = torch.zeros(logits.shape[:2], dtype=torch.bool)
        live[:, :-1] = labels[logits.shape[1]][:, 1:] != -100  # logits at t predict token t+1
        assert logits.grad is not None
        dead = logits.grad[~live]
        assert dead.abs().max().item() == 0.0, f"{name}: prompt/padding positions receive gradient"
        assert logits.grad[live].abs().sum() > 0


@pytest.mark.parametrize("name", LLM_METHODS)
def test_short_training_run_raises_forget_nll(name, memorised, tmp_path):
    if name in INDIRECT:
        pytest.skip(INDIRECT[name])
    trainer_cls, method = build_trainer(name, TINY_ARGS.get(name))
    adapter = CausalLMAdapter()
    forget, retain = forget_items(), retain_items()
    probe = pad_collate([{k: v for k, v in it.items() if k != "idk"} for it in forget])
    with torch.no_grad():
        before = adapter.per_sample_nll(memorised, probe)[0].mean().item()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=10,
                             weight_decay=0.0, report_to="none", save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False, seed=0)
    pairs = ForgetRetainDataset(forget, retain if method.needs_retain else None, anchor=method.anchor, seed=0)
    trainer = trainer_cls(memorised, args, method=method, adapter=adapter, train_dataset=pairs,
                          data_collator=PairCollator(pad_collate))
    trainer.train()
    with torch.no_grad():
        after = adapter.per_sample_nll(memorised, probe)[0].mean().item()
    assert after > before + 0.5, f"{name}: forget NLL {before:.4f} -> {after:.4f}"
