"""LoRAPrune (compression path): Ĝ estimate, GQA groups, schedule, ranking, soft/physical pruning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pruning.groups import GroupMasks, discover_groups, remove_pruned_groups
from obliviate.pruning.loraprune import (
    LoRAPruneConfig,
    LoRAPruner,
    LoRAWarmupError,
    cubic_sparsity,
    element_importance,
    estimated_weight_grad,
    group_importance,
    is_prune_step,
    rank_groups,
)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def tiny_llama(kv_heads: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=kv_heads, intermediate_size=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def lora_linear(seed: int = 0) -> nn.Module:
    """A PEFT LoRA layer on a 6->4 linear with non-zero B (as after warm-up)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 4, bias=False))
    model = peft.get_peft_model(net, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.5)
    return layer


# ----------------------------------------------------------------------------- Ĝ
def test_estimated_grad_formula_by_hand():
    A = torch.tensor([[1.0, 2.0]])  # [r=1, in=2]
    B = torch.tensor([[3.0], [4.0]])  # [out=2, r=1]
    gA = torch.tensor([[0.5, -1.0]])
    gB = torch.tensor([[2.0], [1.0]])
    # ∇B·A = [[2,4],[1,2]]; B·∇A = [[1.5,-3],[2,-4]]; ∇B·∇A = [[1,-2],[.5,-1]]; sum·2
    expected = torch.tensor([[5.0, 6.0], [5.0, -2.0]])
    assert torch.allclose(estimated_weight_grad(A, B, gA, gB, 2.0), expected)


def _grads(layer: nn.Module, x: torch.Tensor, scale: float = 1.0):
    y = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(1))
    layer.zero_grad()
    (scale * F.mse_loss(layer(x), y)).backward()
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    s = layer.scaling["default"]
    w_merged = (layer.base_layer.weight + s * B @ A).detach().requires_grad_(True)
    (scale * F.mse_loss(F.linear(x, w_merged), y)).backward()
    return A, B, s, w_merged.grad


def test_estimate_is_minus_merged_update_of_unit_sgd_step_and_correlates_with_true_grad():
    layer = lora_linear()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(2))
    A, B, s, G = _grads(layer, x, scale=0.01)
    g_hat = estimated_weight_grad(A.detach(), B.detach(), A.grad, B.grad, s)
    # algebra: Ĝ = −ΔW_merged after SGD with lr 1 on A and B
    new = s * (B - B.grad) @ (A - A.grad)
    assert torch.allclose(g_hat, -(new - s * B @ A).detach(), atol=1e-6)
    # first-order part equals s²(G·AᵀA + BBᵀ·G) (exact chain rule: ∇B = s·G·Aᵀ, ∇A = s·Bᵀ·G)
    first = s * (B.grad @ A + B @ A.grad)
    assert torch.allclose(first, s**2 * (G @ A.T @ A + B @ B.T @ G), atol=1e-6)
    cos = F.cosine_similarity(g_hat.flatten(), G.flatten(), dim=0)
    assert cos > 0.5, float(cos)


def test_element_importance_uses_merged_weight():
    layer = lora_linear()
    A, B, s, _ = _grads(layer, torch.randn(8, 6))
    w_eff = layer.base_layer.weight + s * B @ A
    expected = (estimated_weight_grad(A, B, A.grad, B.grad, s) * w_eff).abs().detach()
    assert torch.allclose(element_importance(layer, "lora"), expected, atol=1e-6)
    assert torch.allclose(element_importance(layer, "magnitude"), w_eff.abs().detach())


def test_lora_importance_refuses_zero_B():
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model(input_ids=torch.randint(0, 64, (2, 5)), labels=torch.randint(0, 64, (2, 5))).loss.backward()
    with pytest.raises(LoRAWarmupError, match="warm-up"):
        group_importance(model, discover_groups(model), "lora")


# ----------------------------------------------------------------------------- groups
def test_gqa_groups_from_live_model():
    sets = discover_groups(tiny_llama(kv_heads=2))
    assert [(g.key, g.kind, g.n_groups) for g in sets] == [
        ("model.layers.0.self_attn", "attention", 2), ("model.layers.0.mlp", "mlp", 64),
        ("model.layers.1.self_attn", "attention", 2), ("model.layers.1.mlp", "mlp", 64)]
    attn = sets[0]
    shapes = {m.name.rsplit(".", 1)[-1]: (m.dim, tuple(m.index.shape)) for m in attn.members}
    assert shapes == {"q_proj": (0, (2, 16)), "k_proj": (0, (2, 8)), "v_proj": (0, (2, 8)), "o_proj": (1, (2, 16))}
    assert attn.info == {"head_dim": 8, "n_rep": 2}
    assert attn.members[0].index[1].tolist() == list(range(16, 32))  # query heads 2, 3 read KV head 1
    mha = discover_groups(tiny_llama(kv_heads=4))[0]
    assert mha.n_groups == 4 and tuple(mha.members[0].index.shape) == (4, 8)


def test_cnn_groups_per_output_channel_with_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 7, 1), nn.Flatten(), nn.LazyLinear(2))
    sets = discover_groups(net)
    assert [(g.key, g.n_groups, [m.kind for m in g.members]) for g in sets] == [("0", 5, ["weight", "bn"]), ("3", 7, ["weight"])]
    masks = GroupMasks(sets, {"0": torch.tensor([True, False, True, True, True])}).attach(net)
    h = net[:3](torch.randn(2, 3, 6, 6))
    assert h[:, 1].abs().max() == 0 and h[:, 0].abs().max() > 0  # BN shift cannot revive channel 1
    masks.detach()


# ----------------------------------------------------------------------------- schedule, ranking
def test_cubic_schedule_hand_values():
    f = dict(total_steps=100, init_ratio=0.0, target_ratio=0.8, warmup_steps=10, cooldown_steps=10)
    assert cubic_sparsity(5, **f) == 0.0 and cubic_sparsity(10, **f) == 0.0
    assert cubic_sparsity(30, **f) == pytest.approx(0.8 - 0.8 * 0.75**3)  # 0.4625
    assert cubic_sparsity(50, **f) == pytest.approx(0.7)  # 0.8 − 0.8·0.5³
    assert cubic_sparsity(90, **f) == 0.8 and cubic_sparsity(99, **f) == 0.8
    assert [s for s in range(100) if is_prune_step(s, 100, 20, 10, 10)] == [30, 50, 70, 90]


def test_local_vs_global_ranking():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    local = rank_groups(scores, 0.5, "local")
    assert local["a"].tolist() == [False, False, True, True] and local["b"].tolist() == [False, False, True, True]
    glob = rank_groups(scores, 0.5, "global")  # 4 of 8 pruned; "a" keeps at least one group
    assert glob["a"].tolist() == [False, False, False, True] and glob["b"].tolist() == [False, True, True, True]
    # pruned groups stay pruned even if their score is now high
    previous = {"a": torch.tensor([False, True, True, True])}
    again = rank_groups({"a": torch.tensor([9.0, 2.0, 3.0, 4.0])}, 0.25, "local", keep=previous)
    assert again["a"].tolist() == [False, True, True, True]
    kinds = rank_groups(scores, 0.5, "global", kinds={"a": "attention", "b": "mlp"})
    assert {k: v.tolist() for k, v in kinds.items()} == {k: v.tolist() for k, v in local.items()}


# ----------------------------------------------------------------------------- soft -> physical
@pytest.mark.parametrize("mode", ["local", "global"])
def test_physical_removal_matches_soft_masks(mode, tmp_path):
    model = tiny_llama()
    sets = discover_groups(model)
    x = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        dense = model(x).logits
    scores = {g.key: torch.rand(g.n_groups, generator=torch.Generator().manual_seed(i)) for i, g in enumerate(sets)}
    if mode == "global":
        scores["model.layers.1.mlp"] += 1.0  # layer 1 MLP more important: layers end up with different widths
    keep = rank_groups(scores, 0.5, mode, {g.key: g.kind for g in sets})
    masks = GroupMasks(sets, keep).attach(model)
    with torch.no_grad():
        soft = model(x).logits
    assert (soft - dense).abs().max() > 1e-3  # the masks do something
    if mode == "global":
        with pytest.raises(ConfigError, match="local mode"):
            remove_pruned_groups(model, masks)
    report = remove_pruned_groups(model, masks, allow_nonuniform=mode == "global")
    with torch.no_grad():
        hard = model(x).logits
    torch.testing.assert_close(hard, soft, atol=1e-5, rtol=0)
    assert report["params_after"] < report["params_before"]
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (16, 32)  # 1 KV group = 2 query heads x 8 rows
    if mode == "local":
        assert report["uniform"] and model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
        assert model.config.intermediate_size == 32
        model.save_pretrained(tmp_path)
        reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x).logits, soft, atol=1e-5, rtol=0)
    else:
        assert not report["uniform"]
        assert model.model.layers[0].mlp.down_proj.weight.shape[1] < model.model.layers[1].mlp.down_proj.weight.shape[1]


def test_loraprune_training_loop_then_merge_and_remove():
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    cfg = LoRAPruneConfig(target_ratio=0.5, warmup_steps=2, cooldown_steps=2, prune_freq=2)
    pruner = LoRAPruner(model, total_steps=10, cfg=cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    applied = []
    for step in range(10):
        ids = torch.randint(0, 64, (4, 8), generator=gen)
        for micro in ids.split(2):  # gradient accumulation: 2 micro-batches per step
            (model(input_ids=micro, labels=micro).loss / 2).backward()
        applied.append(pruner.step(step))
        opt.step()
        opt.zero_grad()
    assert applied[8] == pytest.approx(0.5) and applied[1] is None
    assert pruner.masks.sparsity() == pytest.approx((2 * 1 + 2 * 32) / (2 * 2 + 2 * 64))
    x = torch.randint(0, 64, (2, 6))
    model.eval()
    with torch.no_grad():
        soft = model(input_ids=x).logits
    merged = model.merge_and_unload()
    masks = pruner.masks.rebind(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, soft, atol=1e-5, rtol=0)
    report = remove_pruned_groups(merged, masks)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, soft, atol=1e-5, rtol=0)
    assert report["params_after"] < report["params_before"] and report["uniform"]


def test_removal_refuses_unmerged_lora():
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    masks = GroupMasks(discover_groups(model))
    with pytest.raises(Exception, match="merge_and_unload"):
        remove_pruned_groups(model, masks)


def test_registered_oneshot_pruner_element_masks_match_group_masks():
    from obliviate.pruning import PRUNERS

    model = tiny_llama()
    x = torch.randint(0, 64, (2, 5))
    result = PRUNERS.get("loraprune")(model, rate=0.5, metric="magnitude")
    with torch.no_grad():
        hard = model(x).logits
    from obliviate.pruning import detach_masks

    detach_masks(model)
    gm = result.info["group_masks"].attach(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hard, atol=1e-5, rtol=0)
    gm.detach()


class Tokens(torch.utils.data.Dataset):
    """32 random token rows of length 8 (seeded per index): language-model training data."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


def test_hf_trainer_callback_with_gradient_accumulation(tmp_path):
    from obliviate.models.lora import apply_lora
    from obliviate.pruning.loraprune import loraprune_callback

    model = apply_lora(tiny_llama(), r=4, alpha=8)
    pruner = LoRAPruner(model, total_steps=8, cfg=LoRAPruneConfig(target_ratio=0.5, warmup_steps=2, cooldown_steps=2,
                                                                  prune_freq=2))

    args = transformers.TrainingArguments(str(tmp_path), max_steps=8, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2, learning_rate=1e-2, report_to=[],
                                          save_strategy="no", use_cpu=True, disable_tqdm=True)
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[loraprune_callback(pruner)]).train()
    assert pruner.masks.sparsity() == pytest.approx(0.5) and pruner.tracker.steps == 6  # scored after warm-up only
