"""LLM configs: track-aware defaults, model configs, dataset configs, experiments."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import obliviate.configs
from obliviate.data.text.tofu import DATASET_CONFIG_DIR
from obliviate.models import MODELS
from obliviate.models.llm import load_causal_lm

CONFIG_DIR = Path(obliviate.configs.__file__).parent
LLM_MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if yaml.safe_load(p.read_text()).get("track") == "llm")


@pytest.fixture(autouse=True)
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_the_expected_llm_models_ship():
    for name in ("tiny-llama", "SmolLM2-135M-Instruct", "Llama-3.2-1B-Instruct", "Llama-3.1-8B-Instruct", "Llama-2-7b-chat-hf",
                 "Qwen2.5-0.5B-Instruct", "phi-1_5"):
        assert name in LLM_MODELS


@pytest.mark.parametrize("command", ["unlearn", "train"])
@pytest.mark.parametrize("name", LLM_MODELS)
def test_llm_model_selects_llm_defaults_without_an_experiment(name, command):
    cfg = compose(config_name=command, overrides=[f"model={name}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model = resolved["model"]
    assert model["track"] == "llm" and model.get("builder", "hf") in MODELS.names(track="llm")
    assert set(model) >= {"model_args", "tokenizer_args", "template_args"}
    assert model["tokenizer_args"]["pretrained_model_name_or_path"] == model["model_args"]["pretrained_model_name_or_path"]
    assert resolved["data"]["forget"] == "TOFU_QA_FORGET10" and resolved["data"]["full"] == "TOFU_QA_full"
    assert resolved["paths"]["tofu"] == "locuslab/TOFU" and resolved["lora"]["enabled"] is False
    assert resolved["lora"]["merge"] is False  # LLM default: keep adapters only
    assert resolved["collator"]["name"] == "DataCollatorForSupervisedDataset"
    assert resolved["train"]["stages"] == ["target", "retain"]


def test_model_path_override_moves_the_tokenizer_too():
    cfg = compose(config_name="unlearn", overrides=["model=Llama-3.2-1B-Instruct", "model.model_args.pretrained_model_name_or_path=/m"])
    assert cfg.model.tokenizer_args.pretrained_model_name_or_path == "/m"


def test_vision_defaults_are_unchanged():
    cfg = compose(config_name="unlearn")
    digits = OmegaConf.load(CONFIG_DIR / "experiment" / "vision" / "digits.yaml")  # the vision default experiment
    assert cfg.model.builder == "digits_cnn" and cfg.data.name == "digits" and cfg.lora.enabled is False
    assert cfg.presets == digits.presets and cfg.train == digits.train
    assert all(cfg.trainer.args[k] == v for k, v in digits.trainer.args.items())
    cfg = compose(config_name="unlearn", overrides=["experiment=vision/digits", "trainer=GA", "forget_class=9"])
    assert cfg.model.builder == "digits_cnn" and cfg.data.name == "digits" and cfg.forget_class == 9


def test_synthetic_experiment_generates_into_the_cache_dir():
    cfg = compose(config_name="unlearn", overrides=["experiment=llm/tofu_synthetic", "paths.cache_dir=/c"])
    assert cfg.model.builder == "tiny-llama" and cfg.paths.tofu == "/c/synthetic_tofu/a20_q4_s0"
    assert cfg.trainer.args.learning_rate == 1e-3 and cfg.train.args.learning_rate == 3e-3
    real = compose(config_name="unlearn", overrides=["experiment=llm/tofu", "model=SmolLM2-135M-Instruct"])
    assert real.model.model_args.gguf_file.endswith(".gguf") and real.data.retain == "TOFU_QA_RETAIN90"


def test_tiny_llama_config_instantiates():
    cfg = compose(config_name="unlearn", overrides=["model=tiny-llama"])
    model, tok = load_causal_lm(OmegaConf.to_container(cfg.model, resolve=True))
    assert model.config.hidden_size == 64 and tok.chat_template


@pytest.mark.parametrize("path", sorted(DATASET_CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_configs_use_the_reference_layout(path):
    data = yaml.safe_load(path.read_text())
    assert list(data) == [path.stem], "the top-level key must equal the file name"
    spec = data[path.stem]
    hf = spec["args"]["hf_args"]
    if path.stem.startswith(("TOFU_", "QA_")):
        assert spec["handler"] in ("QADataset", "QAwithIdkDataset")
        # TOFU configs read paths.tofu; the QA_* configs (your own QA files, experiment=llm/qa_jsonl) read paths.qa
        assert hf["path"] == ("${paths.qa}" if path.stem.startswith("QA_") else "${paths.tofu}")
        assert spec["args"]["max_length"] == 512
    elif path.stem.startswith("MUSE_"):  # the reference's MUSE configs: raw text in 2048-token blocks, knowmem QA at 512
        assert hf["path"] == "${paths.muse}" and spec["handler"] in ("PretrainingDataset", "CompletionDataset", "QADataset")
        assert spec["args"]["max_length"] == (512 if spec["handler"] == "QADataset" else 2048)
    else:  # WMDP corpora: the reference's `text` files under paths.wmdp, 512-token blocks
        assert path.stem.startswith("WMDP_") and spec["handler"] == "PretrainingDataset"
        assert hf["path"] == "text" and hf["data_files"].startswith("${paths.wmdp}/wmdp-corpora/") and spec["args"]["max_length"] == 512


def test_collator_config():
    cfg = OmegaConf.load(CONFIG_DIR / "collator" / "DataCollatorForSupervisedDataset.yaml")
    assert cfg.name == "DataCollatorForSupervisedDataset" and cfg.collator_args.padding_side == "right"
