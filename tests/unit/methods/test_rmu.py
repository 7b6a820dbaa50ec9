"""RMU: every parameter trains by default (the reference framework's config), only the chosen
blocks' MLP (or down-projection) weights with trainable=layers/wmdp, on any HF decoder naming,
with the forward stopped after the steered block."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from obliviate.data import ForgetRetainDataset, PairCollator
from obliviate.engine import build_trainer
from obliviate.engine.trainer import frozen_copy
from obliviate.methods import build_method
from obliviate.methods._common import pad_collate
from obliviate.methods.rmu import find_decoder_layers, layer_output
from obliviate.models.adapters import CausalLMAdapter

from .conftest import VOCAB, forget_items, make_ctx, pad_more, pair_batch, retain_items, tiny_llama


def _tiny(arch: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        return tiny_llama(0)
    if arch == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=64))
    if arch == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                num_key_value_heads=2, intermediate_size=64, pad_token_id=0))
    raise ValueError(arch)


LAYER_LISTS = {"llama": "model.layers", "gpt2": "transformer.h", "qwen2": "model.layers", "phi3": "model.layers"}


def test_only_the_chosen_mlp_weights_change_during_training(tmp_path):
    model = tiny_llama(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer_cls, method = build_trainer("RMU", {"layer": 1, "trainable": "layers", "trainable_layers": [1], "steering_coeff": 5.0})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=3,
                             weight_decay=0.1, report_to="none", save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
    trainer = trainer_cls(model, args, method=method, adapter=CausalLMAdapter(),
                          train_dataset=ForgetRetainDataset(forget_items(), retain_items()), data_collator=PairCollator(pad_collate))
    trainer.train()
    chosen = {n for n in before if n.startswith("model.layers.1.mlp.")}
    assert chosen == {f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    assert set(method.trained_names) == chosen
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in chosen), name
        assert p.requires_grad == (name in chosen)


def test_default_trains_every_parameter_and_only_those_below_the_steered_block_move(tmp_path):
    """The reference framework's RMU.yaml: trainable_params_regex ['.*']. Blocks above ℓ and the
    LM head get no gradient, so AdamW (even with weight decay) leaves them unchanged."""
    model = tiny_llama(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer_cls, method = build_trainer("RMU", {"layer": 0, "steering_coeff": 5.0})
    assert method.cfg.trainable == "all"
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=2,
                             weight_decay=0.1, report_to="none", save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, dataloader_pin_memory=False)
    trainer = trainer_cls(model, args, method=method, adapter=CausalLMAdapter(),
                          train_dataset=ForgetRetainDataset(forget_items(), retain_items()), data_collator=PairCollator(pad_collate))
    trainer.train()
    assert set(method.trained_names) == set(before)
    assert all(p.requires_grad for p in model.parameters())
    for name, p in model.named_parameters():
        below = name.startswith(("model.embed_tokens.", "model.layers.0."))
        assert (not torch.equal(p.detach(), before[name])) == below, name


def test_layers_mode_defaults_to_the_steered_block_and_two_below():
    model = _tiny("qwen2")
    method = build_method("RMU", {"layer": 2, "trainable": "layers"})
    make_ctx(method, model)
    layers = {n.split(".")[2] for n in method.trained_names}
    assert layers == {"0", "1", "2"} and all(".mlp." in n for n in method.trained_names)
    method = build_method("RMU", {"layer": -2, "trainable": "layers"})
    make_ctx(method, _tiny("qwen2"))
    assert method.layer_index == 1 and {n.split(".")[2] for n in method.trained_names} == {"0", "1"}


@pytest.mark.parametrize(("arch", "name"), [("llama", "mlp.down_proj"), ("qwen2", "mlp.down_proj"), ("gpt2", "mlp.c_proj"),
                                            ("phi3", "mlp.down_proj")])
def test_wmdp_mode_trains_the_down_projection_of_three_blocks(arch, name):
    """The WMDP authors' choice: model.layers.(ℓ-2..ℓ).mlp.down_proj.weight only."""
    model = _tiny(arch)
    last = model.config.num_hidden_layers - 1
    method = build_method("RMU", {"layer": last, "trainable": "wmdp"})
    make_ctx(method, model)
    prefix = LAYER_LISTS[arch]
    assert method.trained_names == [f"{prefix}.{i}.{name}.weight" for i in range(max(0, last - 2), last + 1)]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(method.trained_names)


def test_trainable_layers_without_layers_mode_is_a_config_error():
    from obliviate.errors import ConfigError

    with pytest.raises(ConfigError, match="trainable=layers"):
        build_method("RMU", {"trainable_layers": [1]})
    with pytest.raises(ConfigError):
        build_method("RMU", {"trainable": "some"})


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "phi3"])
def test_layer_discovery_and_hook_on_any_decoder(arch):
    model = _tiny(arch).eval()  # no dropout: two forwards must agree
    name, layers = find_decoder_layers(model)
    assert name == LAYER_LISTS[arch] and len(layers) == model.config.num_hidden_layers
    batch = pair_batch()["forget"]
    h = layer_output(model, layers[0], batch)
    with torch.no_grad():
        hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True).hidden_states
    assert torch.allclose(h, hs[1], atol=1e-5)
    method = build_method("RMU", {"layer": 1, "trainable": "layers", "trainable_layers": [1]})
    ctx = make_ctx(method, model)
    assert method.trained_names and all(n.startswith(f"{LAYER_LISTS[arch]}.1.") for n in method.trained_names)
    loss, _ = method.loss(model, pair_batch(), ctx)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == set(method.trained_names)


def test_forward_stops_after_the_steered_block():
    model = tiny_llama(0)
    method = build_method("RMU", {"layer": 0})
    ctx = make_ctx(method, model)
    seen = []
    model.model.layers[1].register_forward_pre_hook(lambda *_: seen.append(1))
    model.lm_head.register_forward_pre_hook(lambda *_: seen.append(2))
    method.loss(model, pair_batch(), ctx)
    assert seen == []


def test_prompt_and_padding_hidden_states_get_no_gradient():
    model = tiny_llama(1)
    method = build_method("RMU", {"layer": 1})
    ctx = make_ctx(method, model, frozen_copy(tiny_llama(0)))  # a different reference: non-zero retain term
    batch = pair_batch()
    batch = {"forget": pad_more(batch["forget"], 2), "retain": pad_more(batch["retain"], 5)}
    labels = {batch[s]["input_ids"].shape[1]: batch[s]["labels"] for s in ("forget", "retain")}
    captured = []

    def hook(_m, _i, out):
        if out.requires_grad:
            out.retain_grad()
            captured.append(out)

    model.model.layers[1].register_forward_hook(hook)  # runs before RMU's own (stopping) hook
    loss, _ = method.loss(model, batch, ctx)
    loss.backward()
    assert len(captured) == 2
    for h in captured:
        dead = labels[h.shape[1]] == -100
        assert h.grad[dead].abs().max().item() == 0.0
        assert h.grad[~dead].abs().sum() > 0


def test_control_vector_is_seeded_unit_direction():
    a, b, c = (build_method("RMU", {"vector_seed": s, "steering_coeff": 3.0}) for s in (0, 0, 1))
    ua, ub, uc = (m.control_vector(16, torch.device("cpu")) for m in (a, b, c))
    assert torch.equal(ua, ub) and not torch.equal(ua, uc)
    assert ua.norm().item() == pytest.approx(3.0)


def test_peft_model_trains_only_the_mlp_adapters_of_the_chosen_blocks():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(0), LoraConfig(r=4, target_modules=["down_proj", "q_proj"]))
    method = build_method("RMU", {"layer": 1, "trainable": "layers", "trainable_layers": [1]})
    ctx = make_ctx(method, model)
    assert method.trained_names == [f"base_model.model.model.layers.1.mlp.down_proj.lora_{x}.default.weight" for x in "AB"]
    loss, _ = method.loss(model, pair_batch(), ctx)
    loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(method.trained_names)
