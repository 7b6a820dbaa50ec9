"""Training defaults of the LLM track are the reference framework's: its finetune.yaml + TOFU
experiment (batch 8 x 4, one warm-up epoch from the data set and world size, paged AdamW, bf16,
lr 1e-5, weight decay 0.01, 10 epochs), the per-method YAML values, and HF's token-mean loss."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from obliviate.engine.trainer import SupervisedTrainer
from obliviate.errors import ConfigError
from obliviate.methods._common import pad_collate
from obliviate.models.adapters import CausalLMAdapter
from obliviate.pipelines.common import training_arguments


@pytest.fixture
def hydra_ctx():
    GlobalHydra.instance().clear()
    with initialize_config_module("obliviate.configs", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


REFERENCE_ARGS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "learning_rate": 1e-5, "weight_decay": 0.01,
                  "warmup_epochs": 1.0, "num_train_epochs": 10, "optim": "paged_adamw_32bit", "bf16": True, "lr_scheduler_type": "linear",
                  "per_device_eval_batch_size": 16, "logging_steps": 5}
# the reference framework's configs/trainer/<name>.yaml args (they override finetune.yaml)
PER_METHOD = {"SatImp": {"num_train_epochs": 5}, "WGA": {"num_train_epochs": 5}, "UNDIAL": {"learning_rate": 1e-4}}


@pytest.mark.parametrize("method", ["GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "IdkDPO", "IdK", "KL", "WGA", "SatImp", "UNDIAL",
                                    "CEU", "RMU"])
def test_tofu_experiment_uses_the_reference_training_arguments(hydra_ctx, method):
    cfg = compose(config_name="unlearn", overrides=["experiment=llm/tofu", f"trainer={method}"])
    args = OmegaConf.to_container(cfg.trainer.args, resolve=True)
    expected = {**REFERENCE_ARGS, **PER_METHOD.get(method, {})}
    assert {k: args.get(k) for k in expected} == expected


def test_finetune_defaults_are_the_reference_finetune_experiment(hydra_ctx):
    cfg = compose(config_name="train", overrides=["experiment=llm/tofu"])
    args = OmegaConf.to_container(cfg.train.args, resolve=True)
    expected = {**REFERENCE_ARGS, "num_train_epochs": 5}
    assert {k: args.get(k) for k in expected} == expected


def test_tiny_offline_experiment_keeps_its_own_small_settings(hydra_ctx):
    cfg = compose(config_name="unlearn", overrides=["experiment=llm/tofu_synthetic", "trainer=UNDIAL"])
    args = cfg.trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.learning_rate, args.warmup_epochs) == (4, 1, 1e-3, 0)
    assert cfg.train.args.warmup_epochs == 0
    vision = compose(config_name="unlearn", overrides=["trainer=GradDiff"])  # the shared GradDiff.yaml on the vision track
    # the vision experiments' own optimizer (SGD as Unlearn-Sparse/Saliency), no warm-up, no bf16
    assert (vision.trainer.args.warmup_epochs, vision.trainer.args.bf16, vision.trainer.args.optim) == (0, False, "sgd")


def test_warmup_epochs_become_steps_from_the_data_set_and_the_world_size(tmp_path, monkeypatch):
    args = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "warmup_epochs": 1.0}
    # the reference: int(warmup_epochs * len(dataset) // (batch * accumulation * devices))
    assert training_arguments(args, tmp_path, 0, n_train=400).warmup_steps == 400 // 32
    assert training_arguments({**args, "warmup_epochs": 2.5}, tmp_path, 0, n_train=4000).warmup_steps == int(2.5 * 4000 // 32)
    monkeypatch.setenv("WORLD_SIZE", "2")  # processes, not GPUs (the reference counts torch.cuda.device_count())
    monkeypatch.setattr("obliviate.distributed.training_defaults", lambda: {})
    assert training_arguments(args, tmp_path, 0, n_train=400).warmup_steps == 400 // 64
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert training_arguments({**args, "warmup_epochs": 0, "warmup_steps": 7}, tmp_path, 0, n_train=400).warmup_steps == 7
    with pytest.raises(ConfigError, match="warmup_epochs"):
        training_arguments(args, tmp_path, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
def test_half_precision_and_paged_optimizer_fall_back_on_cpu(tmp_path):
    args = training_arguments({"bf16": True, "bf16_full_eval": True, "optim": "paged_adamw_32bit"}, tmp_path, 0)
    assert not args.bf16 and not args.bf16_full_eval and args.optim == "adamw_torch"


def _tiny_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64))


def _item(prompt, answer):
    ids = torch.tensor(prompt + answer)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([-100] * len(prompt) + answer)}


ITEMS = [_item([5, 6, 7], [20, 21]), _item([8, 9], [24, 25, 26, 27, 28]), _item([12], [30, 31, 32])]


def test_fine_tuning_loss_is_the_hf_token_mean(tmp_path):
    model = _tiny_lm()
    batch = pad_collate(ITEMS)
    args = training_arguments({"use_cpu": True}, tmp_path, 0)
    trainer = SupervisedTrainer(model, args, CausalLMAdapter(), train_dataset=ITEMS, data_collator=pad_collate)
    with torch.no_grad():
        ours = trainer.compute_loss(model, batch).item()
        hf = model(**batch).loss.item()
        seq = SupervisedTrainer(model, args, CausalLMAdapter(), reduction="sequence", train_dataset=ITEMS,
                                data_collator=pad_collate).compute_loss(model, batch).item()
    assert ours == pytest.approx(hf, rel=1e-6)
    assert abs(seq - hf) > 1e-4  # answers of 2, 5 and 3 tokens: the per-sequence mean is another number


def _one_step(tmp_path, items, batch_size, accumulation):
    model = _tiny_lm()
    before = [p.detach().clone() for p in model.parameters()]
    args = training_arguments({"use_cpu": True, "optim": "sgd", "learning_rate": 0.1, "per_device_train_batch_size": batch_size,
                               "gradient_accumulation_steps": accumulation, "max_steps": 1, "max_grad_norm": 0.0,
                               "lr_scheduler_type": "constant", "disable_tqdm": True}, tmp_path, 0)
    SupervisedTrainer(model, args, CausalLMAdapter(), train_dataset=items, data_collator=pad_collate).train()
    return [(p.detach() - b) for p, b in zip(model.parameters(), before, strict=True)]


def test_gradient_accumulation_averages_the_micro_batch_losses(tmp_path):
    """Two micro-batches of the same sequence give one step equal to a single micro-batch's
    (transformers 4.45's scaling, the reference's): the loss is divided by the accumulation
    steps, not summed over them."""
    once = _one_step(tmp_path / "a", ITEMS[1:2], 1, 1)
    twice = _one_step(tmp_path / "b", [ITEMS[1], ITEMS[1]], 1, 2)
    assert max((a - b).abs().max().item() for a, b in zip(once, twice, strict=True)) < 1e-6
    assert max(a.abs().max().item() for a in once) > 1e-3
