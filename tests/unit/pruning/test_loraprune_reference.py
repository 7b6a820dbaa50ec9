"""LoRAPrune against a port of the reference arithmetic (aim-uofa/LoRAPrune ``loraprune/utils.py``),
protected layers, per-layer widths saved zero-padded, float64 exactness of physical removal,
pruned groups that cannot regrow, and plain-text training data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError, DataError
from obliviate.pruning.groups import GroupMasks, discover_groups, remove_pruned_groups
from obliviate.pruning.loraprune import (
    ImportanceTracker,
    LoRAPruneConfig,
    LoRAPruner,
    group_importance,
    is_prune_step,
    protected_sets,
    rank_groups,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny(layers: int = 2, heads: int = 4, kv: int = 4, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv, intermediate_size=48)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def lora_model(model: nn.Module, seed: int = 1) -> nn.Module:
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)  # as after LoRA warm-up
    return pm


# ----------------------------------------------------------------------------- reference port
def ref_compute_sensitivity(layer: nn.Module, is_attn: bool, n_heads: int, transpose: bool) -> torch.Tensor:
    """``compute_sensitivity(layer, is_attn, 'lora', transpose, norm=True)`` of the reference, with the
    number of heads passed in (the reference hard-codes 32) and PEFT's module layout."""
    a, b = layer.lora_A["default"].weight.data, layer.lora_B["default"].weight.data
    grad_a, grad_b = layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad
    grad = grad_b @ a + b @ grad_a - grad_b @ grad_a
    weight = layer.base_layer.weight.data
    s = (grad * (b @ a * layer.scaling["default"] + weight)).abs()
    if transpose:
        s = s.t()
    if is_attn:
        head_dim = layer.base_layer.out_features // n_heads
        s = s.reshape(s.shape[0] // head_dim, -1)
    s = s.sum(1)
    return s / (torch.linalg.norm(s) + 1e-8)


def ref_update(model: nn.Module, s_dict: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """``update_sensitivity_dict``: per parent module, sum of the normalised module scores; EMA 0.9."""
    s_all: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in ALL or not hasattr(module, "lora_A"):
            continue
        is_attn = leaf in ("q_proj", "k_proj", "v_proj", "o_proj")
        s = ref_compute_sensitivity(module, is_attn, n_heads, leaf in ("o_proj", "down_proj"))
        parent = name.rsplit(".", 1)[0]
        s_all[parent] = s_all.get(parent, 0) + s
    return {k: s_dict.get(k, torch.zeros_like(v)) * 0.9 + v * 0.1 for k, v in s_all.items()}


def test_group_importance_and_ema_match_the_reference_on_mha():
    model = lora_model(tiny(heads=4, kv=4))  # MHA: the reference's per-head grouping is ours
    groups = discover_groups(model)
    tracker = ImportanceTracker(groups, "lora", 0.9, "l2")
    ref: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 64, (3, 9), generator=gen)
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        ours = tracker.update(model)
        ref = ref_update(model, ref, n_heads=4)
    assert set(ours) == set(ref)
    for key in ours:
        torch.testing.assert_close(ours[key], ref[key].float(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="norm"):
        group_importance(model, groups, "lora", norm="max")


def test_sum_norm_differs_and_ema_starts_at_zero():
    model = lora_model(tiny())
    groups = discover_groups(model)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))
    model(input_ids=ids, labels=ids).loss.backward()
    for key, v in group_importance(model, groups, "lora", norm="sum").items():
        n_members = sum(1 for m in next(g for g in groups if g.key == key).members if m.kind == "weight")
        assert float(v.sum()) == pytest.approx(n_members, rel=1e-5)
    tracker = ImportanceTracker(groups, "lora")
    first = group_importance(model, groups, "lora")
    after = tracker.update(model)
    for key in first:
        torch.testing.assert_close(after[key], 0.1 * first[key])  # S = 0.9·0 + 0.1·I


def test_non_finite_importance_step_is_skipped():
    model = lora_model(tiny())
    groups = discover_groups(model)
    tracker = ImportanceTracker(groups, "lora")
    ids = torch.randint(0, 64, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    next(p for n, p in model.named_parameters() if "lora_A" in n).grad[0, 0] = float("nan")
    tracker.update(model)
    assert tracker.skipped == 1 and tracker.steps == 0 and all(float(v.abs().sum()) == 0 for v in tracker.scores.values())


# ----------------------------------------------------------------------------- schedule end
def test_last_prune_step_reaches_the_target_whatever_prune_freq():
    assert [s for s in range(20) if is_prune_step(s, 20, 4, 2, 3)] == [6, 10, 14, 17]  # 17 = start of cool-down
    assert [s for s in range(10) if is_prune_step(s, 10, 4, 1, 0)] == [5, 9]  # no cool-down: the last step
    model = lora_model(tiny(kv=2))
    pruner = LoRAPruner(model, total_steps=10, cfg=LoRAPruneConfig(target_ratio=0.5, warmup_steps=1, cooldown_steps=0, prune_freq=4))
    for step in range(10):
        ids = torch.randint(0, 64, (2, 6))
        model(input_ids=ids, labels=ids).loss.backward()
        pruner.step(step)
        model.zero_grad()
    assert all(int((~k).sum()) == k.numel() // 2 for k in pruner.masks.keep.values())


# ----------------------------------------------------------------------------- protected layers
def test_protect_layers_reference_preset_and_indices():
    groups = discover_groups(tiny(layers=10))
    ref = protected_sets(groups, "reference")  # int(10 * 0.1) = 1 first layer + the last
    assert ref == {"model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.9.self_attn", "model.layers.9.mlp"}
    assert protected_sets(groups, [3]) == {"model.layers.3.self_attn", "model.layers.3.mlp"}
    assert protected_sets(groups, None) == set()
    with pytest.raises(ConfigError, match="out of range"):
        protected_sets(groups, [10])
    with pytest.raises(ConfigError, match="reference"):
        protected_sets(groups, "first")


def _prune_with_protection(tmp_path):
    model = lora_model(tiny(layers=3, kv=2))
    pruner = LoRAPruner(model, total_steps=6, cfg=LoRAPruneConfig(target_ratio=0.5, warmup_steps=1, cooldown_steps=1,
                                                                  prune_freq=2, protect_layers=[2]))
    for step in range(6):
        ids = torch.randint(0, 64, (2, 6))
        model(input_ids=ids, labels=ids).loss.backward()
        pruner.step(step)
        model.zero_grad()
    merged = model.merge_and_unload()
    masks = pruner.masks.rebind(merged)
    for key, keep in masks.keep.items():
        assert bool(keep.all()) == key.startswith("model.layers.2.")
    remove_pruned_groups(merged, masks, allow_nonuniform=True)
    return merged.eval()


def test_per_layer_widths_save_zero_padded_and_reload(tmp_path):
    from obliviate.models.llm import build_tiny_tokenizer, hf_causal_lm
    from obliviate.pipelines.prune_llm import save_pruned
    from obliviate.pruning.physical_llm import CONFIG_KEY, layer_widths, pad_to_uniform, strip_padding

    model = _prune_with_protection(tmp_path)
    widths = layer_widths(model)
    assert widths["model.layers.0.mlp"] == 24 and widths["model.layers.2.mlp"] == 48  # layer 2 protected
    x = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        pruned = model(x).logits
        padded = pad_to_uniform(model)
        torch.testing.assert_close(padded(x).logits, pruned, atol=1e-5, rtol=0)  # zero groups add nothing
    assert layer_widths(padded)["model.layers.0.mlp"] == 48 and padded.config.intermediate_size == 48
    info = save_pruned(model, build_tiny_tokenizer(), tmp_path / "m")
    assert info["padded"] and info["saved_params"] > sum(p.numel() for p in model.parameters())
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()  # plain HF: padded size
    assert getattr(stock.config, CONFIG_KEY)["kept"]["model.layers.0.mlp"] == 24
    with torch.no_grad():
        torch.testing.assert_close(stock(x).logits, pruned, atol=1e-5, rtol=0)
    report = strip_padding(stock)
    assert layer_widths(stock) == widths and report["params_after"] == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(stock(x).logits, pruned, atol=1e-5, rtol=0)
    ours, _ = hf_causal_lm({"model_args": {"pretrained_model_name_or_path": str(tmp_path / "m")}})  # obliviate's loader strips
    assert layer_widths(ours) == widths
    assert strip_padding(tiny()) is None  # nothing recorded: no-op


def test_uniform_model_saves_unpadded(tmp_path):
    from obliviate.models.llm import build_tiny_tokenizer
    from obliviate.pipelines.prune_llm import save_pruned

    model = tiny(kv=2)
    groups = discover_groups(model)
    keep = rank_groups({g.key: torch.arange(g.n_groups, dtype=torch.float) for g in groups}, 0.5)
    remove_pruned_groups(model, GroupMasks(groups, keep))
    info = save_pruned(model, build_tiny_tokenizer(), tmp_path / "u")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "u")
    assert not info["padded"] and sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- exactness, regrowth
@pytest.mark.parametrize("mode", ["local", "global"])
def test_physical_removal_is_exact_in_float64(mode):
    """The soft-masked and the shrunk model differ only by float32 rounding (the matmuls sum over a
    shorter inner dimension in another order): in float64 they agree to 1e-12."""
    model = tiny(layers=3, kv=2, dtype=torch.float64)
    groups = discover_groups(model)
    scores = {g.key: torch.rand(g.n_groups, generator=torch.Generator().manual_seed(i), dtype=torch.float64) for i, g in enumerate(groups)}
    masks = GroupMasks(groups, rank_groups(scores, 0.5, mode, {g.key: g.kind for g in groups})).attach(model)
    x = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        soft = model(x).logits
        remove_pruned_groups(model, masks, allow_nonuniform=True)
        hard = model(x).logits
    assert hard.dtype == torch.float64
    torch.testing.assert_close(hard, soft, atol=1e-12, rtol=0)


def test_zeroed_groups_get_exactly_zero_gradients():
    """A pruned group whose weights are zero (q/k/v rows + o columns; gate/up rows + down column) has
    zero gradient on all of them, so fine-tuning (recovery, relearning) cannot revive it."""
    from obliviate.pruning.loraprune import element_masks

    model = tiny(kv=2).train()
    groups = discover_groups(model)
    keep = rank_groups({g.key: torch.rand(g.n_groups, generator=torch.Generator().manual_seed(7)) for g in groups}, 0.5)
    emasks = element_masks(model, GroupMasks(groups, keep))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in emasks.items():
            params[name].mul_(m)
    ids = torch.randint(0, 64, (3, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    for name, m in emasks.items():
        grad = params[name].grad
        assert float(grad[~m].abs().max()) == 0.0 and float(grad[m].abs().max()) > 0


# ----------------------------------------------------------------------------- plain text
def test_text_file_dataset_blocks(tmp_path):
    from obliviate.data.text.plain import TextFileDataset
    from obliviate.data.text.qa import DataCollatorForSupervisedDataset
    from obliviate.models.llm import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    ds = TextFileDataset(tmp_path / "a.txt", tok, block_size=64)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ds) == -(-len(ids) // 64) and ds.n_tokens() == len(ids)
    assert ds[0]["input_ids"].tolist() == ids[:64] and torch.equal(ds[0]["labels"], ds[0]["input_ids"])
    batch = DataCollatorForSupervisedDataset(tok)([ds[0], ds[len(ds) - 1]])
    assert batch["labels"].shape == batch["input_ids"].shape and int(batch["attention_mask"][1].sum()) == len(ds[len(ds) - 1]["input_ids"])
    assert len(TextFileDataset(tmp_path / "a.txt", tok, block_size=64, max_blocks=2)) == 2
    with pytest.raises(DataError, match="does not exist"):
        TextFileDataset(tmp_path / "missing.txt", tok)
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        TextFileDataset(tmp_path / "b.txt", tok)


def test_prune_kinds_keeps_attention():
    model = lora_model(tiny(kv=2))
    pruner = LoRAPruner(model, total_steps=4, cfg=LoRAPruneConfig(target_ratio=0.5, warmup_steps=1, cooldown_steps=1, prune_freq=1,
                                                                  prune_kinds=["mlp"]))
    for step in range(4):
        ids = torch.randint(0, 64, (2, 6))
        model(input_ids=ids, labels=ids).loss.backward()
        pruner.step(step)
        model.zero_grad()
    for key, keep in pruner.masks.keep.items():
        assert int((~keep).sum()) == (24 if key.endswith("mlp") else 0)
    with pytest.raises(ConfigError, match="prune_kinds"):
        LoRAPruner(lora_model(tiny()), total_steps=4, cfg=LoRAPruneConfig(warmup_steps=1, cooldown_steps=1, prune_kinds=["heads"]))
