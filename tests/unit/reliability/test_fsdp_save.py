"""Saving a model sharded by FSDP2 (``fully_shard``: DTensor parameters), as
``accelerate launch --config_file accelerate/fsdp.yaml`` leaves it after training.

``save_pretrained`` / safetensors cannot write DTensors ("Attempted to access the data pointer
on an invalid python storage"); the full state is gathered on every rank (a collective) and
rank 0 writes it. These tests run a one-process gloo group on the CPU.
"""

from __future__ import annotations

import socket

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
try:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
except ImportError:  # older torch
    pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) is not available", allow_module_level=True)

from obliviate.models.llm import load_causal_lm, save_causal_lm

TINY = {"builder": "tiny-llama", "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                                 "num_attention_heads": 4, "num_key_value_heads": 2}}
IDS = torch.tensor([[259, 72, 105, 257, 260]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_group():
    """A one-process gloo group (rank 0 of 1), destroyed afterwards whatever happens."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _shard_llama(model: nn.Module) -> nn.Module:
    """What accelerate's FSDP2 plugin does with TRANSFORMER_BASED_WRAP: each decoder layer, then the root."""
    layers = model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    assert any(isinstance(p, DTensor) for p in model.parameters())
    return model


def _weights(path) -> dict[str, torch.Tensor]:
    model, _ = load_causal_lm({**TINY, "model_args": {"pretrained_model_name_or_path": str(path)}})
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_sharded_llm_saves_its_current_full_weights(gloo_group, tmp_path):
    from obliviate.pipelines.llm_stages import save_model_dir

    model, tok = load_causal_lm(TINY)
    expected = {k: v.detach().clone() * 1.5 for k, v in model.state_dict().items()}
    _shard_llama(model)
    with torch.no_grad():  # change the sharded weights: the saved ones must be these, not the initial ones
        for p in model.parameters():
            p.mul_(1.5)
    out = save_model_dir(model, tok, tmp_path / "model", OmegaConf.create({}))
    saved = _weights(out)
    assert set(saved) == set(expected)
    for k, v in expected.items():
        assert torch.allclose(saved[k], v), k


def test_sharded_gguf_marked_llm_rebuilds_from_the_gathered_state(gloo_group, tmp_path):
    """A GGUF-loaded model is rebuilt from its config to be saved: sharded, it must load the
    gathered state, not its own DTensor state dict. Gathered here by save_causal_lm itself
    (one process: no other rank to wait for)."""
    model, tok = load_causal_lm(TINY)
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _shard_llama(model)
    model.config.quantization_config = {"quant_method": "gguf"}
    save_causal_lm(model, tok, tmp_path / "gguf")
    saved = _weights(tmp_path / "gguf")
    for k, v in expected.items():
        assert torch.allclose(saved[k], v), k


def test_sharded_lora_model_saves_adapters_and_merged_model(gloo_group, tmp_path):
    from obliviate.models.lora import apply_lora
    from obliviate.pipelines.llm_stages import save_model_dir

    model, tok = load_causal_lm(TINY)
    peft_model = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # make the adapters change the output
        expected = peft_model(IDS).logits
    _shard_llama(peft_model)
    out = save_model_dir(peft_model, tok, tmp_path / "model", OmegaConf.create({"lora": {"merge": True}}))
    assert out == str(tmp_path / "model")
    for path in (tmp_path / "model_adapter", tmp_path / "model"):  # adapters (applied and merged on load), merged model
        loaded, _ = load_causal_lm({**TINY, "model_args": {"pretrained_model_name_or_path": str(path)}})
        assert not hasattr(loaded, "peft_config")
        with torch.no_grad():
            assert torch.allclose(loaded(IDS).logits, expected, atol=1e-5), path


def test_vision_checkpoint_of_a_sharded_model(gloo_group, tmp_path):
    from obliviate.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    expected = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fully_shard(model[0])
    fully_shard(model)
    save_model(model, tmp_path / "model.safetensors")
    fresh = load_model(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), tmp_path / "model.safetensors")
    for k, v in fresh.state_dict().items():
        assert torch.allclose(v, expected[k]), k


def test_every_rank_gathers_before_rank_zero_saves(tmp_path, monkeypatch):
    """Gathering is a collective: a non-zero rank must take part although it writes nothing
    (gathering on rank 0 only would wait for the other ranks forever)."""
    from obliviate.pipelines import llm_stages

    calls = []
    monkeypatch.setattr("obliviate.distributed.full_state_dict", lambda m: calls.append(m) or {})
    monkeypatch.setenv("RANK", "1")
    model, tok = load_causal_lm(TINY)
    assert llm_stages.save_model_dir(model, tok, tmp_path / "model", OmegaConf.create({})) == str(tmp_path / "model")
    assert calls == [model] and not (tmp_path / "model").exists()


def test_sharded_save_without_gathered_state_in_a_multi_process_group_is_refused(gloo_group, tmp_path, monkeypatch):
    model, tok = load_causal_lm(TINY)
    _shard_llama(model)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    with pytest.raises(RuntimeError, match="full_state_dict"):
        save_causal_lm(model, tok, tmp_path / "m")
    assert not (tmp_path / "m").exists()
