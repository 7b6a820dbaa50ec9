"""LoRA on a causal LM: an unlearning step moves adapter weights only."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from obliviate.methods import MethodContext, build_method
from obliviate.models.adapters import CausalLMAdapter
from obliviate.models.lora import apply_lora


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_graddiff_with_lora_trains_adapters_only():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    model = apply_lora(LlamaForCausalLM(cfg), r=4, alpha=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    method = build_method("GradDiff")
    ctx = MethodContext(adapter=CausalLMAdapter())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        loss, _ = method.loss(model, {"forget": _batch(step), "retain": _batch(100 + step)}, ctx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        assert torch.equal(p, before[name]), f"base weight {name} moved"
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora_B" in n)
