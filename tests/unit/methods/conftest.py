"""Tiny 2-layer Llama, hand-made QA batches (``-100`` on prompt/padding) and an independent
per-sequence reference implementation for the LLM method tests; the digits demo's trained
models (a session fixture) for the vision effect tests."""

from __future__ import annotations

import copy
import gc
from typing import Any

import pytest
import torch

from obliviate.engine.trainer import frozen_copy
from obliviate.methods._common import pad_collate
from obliviate.methods.base import MethodContext
from obliviate.models.adapters import CausalLMAdapter

VOCAB = 64
IDK_ANSWER = [60, 61, 62, 63]
# (prompt, answer) token lists of different lengths.
FORGET = [([5, 6, 7], [20, 21, 22, 23]), ([8, 9, 10, 11], [24, 25, 26]), ([12, 13], [27, 28, 29, 30, 31]), ([14, 15, 16], [32, 33])]
RETAIN = [([3, 4, 40], [41, 42, 43]), ([44, 45], [46, 47, 48, 49]), ([50, 51, 52, 53], [54, 55]),
          ([17, 18], [19, 56, 57]), ([58, 59, 2], [34, 35, 36]), ([37, 38], [39, 1, 2, 3])]


@pytest.fixture(scope="package", autouse=True)
def _fast_cpu():
    """Tiny models run ~40x faster on one thread on a shared CPU; ``gc.freeze`` makes the full
    ``gc.collect()`` that accelerate runs at the start of every ``Trainer.train`` cheap (it
    otherwise walks every object of the test session, ~1 s). Both restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(before)


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """The 2-layer random Llama of the method tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64))


def sharp_llama(seed: int = 0) -> torch.nn.Module:
    """:func:`tiny_llama` with a scaled-up output head: peaked next-token distributions, so
    per-token NLLs range from ~0 to tens of nats (token and per-sequence means differ)."""
    model = tiny_llama(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    return model


def make_item(prompt: list[int], answer: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.tensor(prompt + answer)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([-100] * len(prompt) + answer)}


def forget_items() -> list[dict[str, Any]]:
    """Forget items, each with its IDK sub-item (same question, refusal answer)."""
    return [{**make_item(p, a), "idk": make_item(p, IDK_ANSWER)} for p, a in FORGET]


def retain_items() -> list[dict[str, Any]]:
    return [make_item(p, a) for p, a in RETAIN]


def pad_more(batch: dict[str, Any], n: int) -> dict[str, Any]:
    """``batch`` with ``n`` extra right-padding columns (recursively)."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = pad_more(value, n)
        else:
            fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}[key]
            out[key] = torch.cat([value, torch.full((value.shape[0], n), fill, dtype=value.dtype)], dim=1)
    return out


def pair_batch(n_forget: int = 3, n_retain: int = 3, extra_pad: int = 0) -> dict[str, Any]:
    batch = {"forget": pad_collate(forget_items()[:n_forget]), "retain": pad_collate(retain_items()[:n_retain])}
    return pad_more(batch, extra_pad) if extra_pad else batch


def make_ctx(method: Any, model: torch.nn.Module, ref_model: torch.nn.Module | None = None) -> MethodContext:
    """A context like the trainer's (reference iff needed, forget set in extras) after ``setup``."""
    if ref_model is None and getattr(method, "needs_reference", False):
        ref_model = frozen_copy(model)
    forget = forget_items()
    ctx = MethodContext(adapter=CausalLMAdapter(), ref_model=ref_model,
                        extras={"forget_dataset": forget, "collate_forget": pad_collate, "ref_batch_size": 2})
    method.setup(model, ctx)
    return ctx


# ----------------------------------------------------------------------------- independent maths
@torch.no_grad()
def answer_rows(model: torch.nn.Module, sub: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence, run alone and unpadded: (float64 logits predicting each answer token [T, V], targets [T])."""
    out = []
    for i in range(sub["input_ids"].shape[0]):
        keep = sub["attention_mask"][i].bool()
        ids, labels = sub["input_ids"][i][keep], sub["labels"][i][keep]
        logits = model(input_ids=ids[None]).logits[0].double()  # [L, V]
        pos = [t for t in range(1, len(ids)) if labels[t] != -100]
        out.append((logits[[t - 1 for t in pos]], labels[pos]))
    return out


def seq_logprob(model, sub) -> torch.Tensor:
    """Summed answer log-prob per sequence, float64, by loops."""
    return torch.tensor([torch.log_softmax(z, -1)[range(len(y)), y].sum().item() for z, y in answer_rows(model, sub)], dtype=torch.float64)


def seq_nll(model, sub) -> torch.Tensor:
    """Mean answer-token NLL per sequence, float64, by loops."""
    return torch.tensor([-torch.log_softmax(z, -1)[range(len(y)), y].mean().item() for z, y in answer_rows(model, sub)], dtype=torch.float64)


@pytest.fixture(scope="package")
def memorised_state() -> dict[str, torch.Tensor]:
    """Weights of the tiny Llama after memorising the forget and retain answers (low NLL)."""
    model = tiny_llama(0)
    batch = pad_collate([{k: v for k, v in it.items() if k != "idk"} for it in forget_items()] + retain_items())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    adapter = CausalLMAdapter()
    model.train()
    for _ in range(60):
        loss = adapter.per_sample_nll(model, batch)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def memorised(memorised_state) -> torch.nn.Module:
    model = tiny_llama(0)
    model.load_state_dict(memorised_state)
    return model


# ----------------------------------------------------------------------------- the digits demo
DEMO_SETTINGS = {"random": {"forget_fraction": 0.1}, "class": {"forget_class": 9}}


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory) -> dict[str, Any]:
    """The quickstart's models, trained once per session: ``experiment=vision/digits`` (seed 0),
    the original and, per setting ("random": 10% random, "class": class 9), the split and the
    retrained model, plus ``compose(method, setting)`` giving the method's config with its
    preset, exactly as ``obliviate quickstart`` composes it."""
    from hydra import compose, initialize_config_module

    from obliviate.pipelines import vision
    from obliviate.pipelines.common import apply_method_preset

    root = tmp_path_factory.mktemp("digits_demo")
    torch.set_num_threads(1)
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        base = ["experiment=vision/digits", "seed=0", "++train.args.disable_tqdm=true", "++trainer.args.disable_tqdm=true"]
        cfg = compose(config_name="unlearn", overrides=base)
        data = vision.load_data(cfg)
        out: dict[str, Any] = {"data": data, "settings": {}}
        original, original_time = None, None
        for name, selection in DEMO_SETTINGS.items():
            scfg = compose(config_name="unlearn", overrides=[*base, *(f"{k}={v}" for k, v in selection.items())])
            split = vision.split_forget(data, selection, 0)
            refs = vision.obtain_reference_models(scfg, data, split, root / name, original=original, original_time=original_time)
            original, original_time = refs["original"], refs["original_time_s"]
            out["settings"][name] = {"split": split, "refs": refs, "selection": selection}

        def compose_method(method: str, setting: str):
            with initialize_config_module("obliviate.configs", version_base="1.3"):
                over = [*base, f"trainer={method}", *(f"{k}={v}" for k, v in DEMO_SETTINGS[setting].items())]
                sub = compose(config_name="unlearn", overrides=over)
            return apply_method_preset(sub, sub.get("presets"), method, over)

    out["compose"] = compose_method
    out["root"] = root
    return out
