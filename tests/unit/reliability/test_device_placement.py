"""A model loaded to be evaluated goes to the GPU in a single-process run.

The HF Trainer moves a model to the GPU when it trains it; a model only evaluated (the
``initial`` NLL probes of ``obliviate train``, ``obliviate eval``, the tuner's reference
objective) ran on the CPU of a GPU machine, ~100x slower. This machine has no GPU: the
placement decision is tested as a pure function, and the loaders are tested to move the
model where that function says (a ``meta`` device stands in for ``cuda``).
"""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from obliviate import distributed
from obliviate.distributed import accelerator_device

TINY = {"builder": "tiny-llama", "config_args": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                                 "num_attention_heads": 2, "num_key_value_heads": 1}}


@pytest.fixture
def cuda(monkeypatch):
    """CUDA reported as available; a launch environment without launcher variables."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for var in ("WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_no_gpu_no_move(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert accelerator_device(nn.Linear(2, 2)) is None


def test_single_process_goes_to_its_local_gpu(cuda):
    assert accelerator_device(nn.Linear(2, 2)) == torch.device("cuda", 0)
    cuda.setenv("WORLD_SIZE", "1")
    cuda.setenv("LOCAL_RANK", "1")  # torchrun --nproc_per_node 1 on a chosen GPU
    assert accelerator_device(nn.Linear(2, 2)) == torch.device("cuda", 1)


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"ACCELERATE_USE_FSDP": "true"}, {"ACCELERATE_USE_DEEPSPEED": "true"}])
def test_distributed_launches_leave_placement_to_accelerate(cuda, env):
    for k, v in env.items():
        cuda.setenv(k, v)
    assert accelerator_device(nn.Linear(2, 2)) is None


def test_device_mapped_and_quantized_models_stay_where_they_are(cuda):
    mapped = nn.Linear(2, 2)
    mapped.hf_device_map = {"": 0}
    assert accelerator_device(mapped) is None
    quantized = nn.Linear(2, 2)
    quantized.config = type("C", (), {"quantization_config": {"quant_method": "bitsandbytes"}})()
    assert accelerator_device(quantized) is None
    eight_bit = nn.Linear(2, 2)
    eight_bit.is_loaded_in_8bit = True
    assert accelerator_device(eight_bit) is None


def test_a_gguf_loaded_model_moves_like_any_model(cuda):
    """transformers dequantises a GGUF file (SmolLM2-135M-Instruct) into plain tensors; a model whose
    config still carries a gguf quantization_config must go to the GPU like any model."""
    gguf = nn.Linear(2, 2)
    gguf.config = type("C", (), {"quantization_config": {"quant_method": "gguf"}})()
    assert accelerator_device(gguf) == torch.device("cuda", 0)


def test_load_causal_lm_moves_the_model_to_the_decided_device(monkeypatch, caplog):
    from obliviate.models.llm import load_causal_lm

    seen = []
    monkeypatch.setattr(distributed, "accelerator_device", lambda m: seen.append(m) or torch.device("meta"))
    with caplog.at_level(logging.INFO, logger="obliviate.distributed"):
        model, _ = load_causal_lm(TINY)
    assert len(seen) == 1 and {p.device.type for p in model.parameters()} == {"meta"}
    assert any("placed on meta" in r.getMessage() for r in caplog.records)


def test_load_causal_lm_leaves_the_model_alone_without_a_device(monkeypatch):
    from obliviate.models.llm import load_causal_lm

    monkeypatch.setattr(distributed, "accelerator_device", lambda m: None)
    model, _ = load_causal_lm(TINY)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


def test_vision_build_model_moves_the_model_to_the_decided_device(monkeypatch):
    from types import SimpleNamespace

    from obliviate.pipelines.vision_stages import build_model

    monkeypatch.setattr(distributed, "accelerator_device", lambda m: torch.device("meta"))
    data = SimpleNamespace(num_classes=10, in_chans=1)
    model = build_model(OmegaConf.create({"model": {"builder": "digits_cnn", "track": "vision"}}), data, 0)
    assert {p.device.type for p in model.parameters()} == {"meta"}
