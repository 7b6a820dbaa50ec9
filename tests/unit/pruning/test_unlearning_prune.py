"""Unlearning mode of LoRAPrune: dual sensitivity, threshold selection, safeguard, end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pruning.groups import GroupMasks, discover_groups
from obliviate.pruning.unlearning import (
    DualSensitivityTracker,
    UnlearningPruneConfig,
    compute_dual_sensitivity,
    dual_importance_prune,
    dual_sensitivity,
    lora_warmup,
    sensitivity_pass,
    unlearning_prune,
)


def test_config_defaults_and_validation():
    cfg = UnlearningPruneConfig()
    assert (cfg.unlearning_threshold, cfg.unlearning_epsilon, cfg.min_retain_performance, cfg.forget_retain_ratio) == (
        0.5, 1e-6, 0.9, 1.0)
    with pytest.raises(ConfigError):
        UnlearningPruneConfig(unlearning_threshold=1.5)


def test_dual_sensitivity_numbers():
    s = compute_dual_sensitivity("layer", torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.tensor([1.0, 0.0, 4.0, 0.5]), 1e-6)
    assert s.tolist() == pytest.approx([1 / (1 + 1e-6), 2e6, 0.0, 3 / 0.500001])
    with pytest.raises(ConfigError, match="shape"):
        compute_dual_sensitivity("layer", torch.ones(3), torch.ones(4))


class ChannelNet(nn.Module):
    """1x1 conv (3 -> 6 channels) + ReLU + global pool + linear head; hand-set weights.

    Channels 0, 1 read input channel 2 and drive class 2 (the forget class); channels 2, 3 read
    input 0 -> class 0; channels 4, 5 read input 1 -> class 1.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.head = nn.Linear(6, 3)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(0.02 * torch.randn(6, 3, 1, 1, generator=g))
            self.conv.bias.zero_()
            for out_ch, in_ch in [(0, 2), (1, 2), (2, 0), (3, 0), (4, 1), (5, 1)]:
                self.conv.weight[out_ch, in_ch] = 1.0
            self.head.weight.copy_(0.02 * torch.randn(3, 6, generator=g))
            self.head.bias.zero_()
            for cls, chans in [(0, (2, 3)), (1, (4, 5)), (2, (0, 1))]:
                self.head.weight[cls, list(chans)] = 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))  # [b, 6]
        return self.head(h)  # [b, 3]


def make_batches(classes: list[int], n_batches: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        y = torch.tensor(classes * 4)
        x = 0.05 * torch.randn(len(y), 3, 4, 4, generator=g)
        x[torch.arange(len(y)), y] += 1.0
        out.append((x, y))
    return out


def ce(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def mean_loss(model: nn.Module, batches) -> float:
    with torch.no_grad():
        return sum(float(ce(model, b)) for b in batches) / len(batches)


def test_unlearning_prune_picks_expected_groups_on_hand_made_dict():
    model = ChannelNet()
    dual = {"conv": torch.tensor([0.2, 5.0, 0.9, 3.0, 1.0, 0.1])}  # forget share >= 0.5 <=> S >= 1
    res = unlearning_prune(model, dual, ratio=0.5, unlearning_threshold=0.5)
    assert res.pruned == {"conv": [1, 3, 4]} and res.candidates == 3
    res.masks.detach()
    res = unlearning_prune(model, dual, ratio=0.5, unlearning_threshold=0.8)  # S >= 4: only group 1
    assert res.pruned == {"conv": [1]}
    res.masks.detach()
    res = unlearning_prune(model, dual, ratio=0.34, unlearning_threshold=0.5)  # budget floor(0.34*6) = 2
    assert res.pruned == {"conv": [1, 3]}
    res.masks.detach()
    with pytest.warns(UserWarning, match="pruned no group"):
        unlearning_prune(model, {"conv": torch.zeros(6)}, ratio=0.5, unlearning_threshold=0.5).masks.detach()
    with pytest.raises(ConfigError, match="not group sets"):
        unlearning_prune(model, {"convv": torch.zeros(6)}, ratio=0.5, unlearning_threshold=0.5)


def test_safeguard_undoes_harmful_step():
    model = ChannelNet()
    retain = make_batches([0, 1])
    base = mean_loss(model, retain)
    # channel 2 carries class 0 (retain): pruning it must be undone; channel 0 (forget) is harmless
    dual = {"conv": torch.tensor([4.0, 0.0, 9.0, 0.0, 0.0, 0.0])}
    res = unlearning_prune(model, dual, ratio=0.5, unlearning_threshold=0.5, retain_eval=lambda m: mean_loss(m, retain),
                           min_retain_performance=0.9, higher_is_better=False)
    assert res.undone == [[("conv", 2)]] and res.pruned == {"conv": [0]}
    assert res.final <= base / 0.9 and res.baseline == pytest.approx(base)
    res.masks.detach()
    with pytest.raises(ConfigError, match="positive metric"):
        unlearning_prune(model, dual, ratio=0.5, unlearning_threshold=0.5, retain_eval=lambda m: -1.0)


def test_gradient_accumulation_equals_one_large_batch():
    model = ChannelNet()
    groups = discover_groups(model)
    micro = make_batches([0, 1, 2], n_batches=2, seed=3)  # 2 x 12 samples
    big = [(torch.cat([b[0] for b in micro]), torch.cat([b[1] for b in micro]))]
    acc = sensitivity_pass(model, groups, micro, ce, "grad")
    one = sensitivity_pass(model, groups, big, ce, "grad")
    torch.testing.assert_close(acc["conv"], one["conv"], atol=1e-6, rtol=1e-5)


def test_dual_sensitivity_passes_are_separate_and_restore_grads():
    model = ChannelNet()
    forget, retain = make_batches([2], seed=1), make_batches([0, 1], seed=2)
    marker = torch.full_like(model.conv.weight, 7.0)
    model.conv.weight.grad = marker.clone()  # a training loop's accumulated gradient
    cfg = UnlearningPruneConfig(prune_metric="grad")
    s_f, s_r, dual = dual_sensitivity(model, forget, retain, ce, cfg)
    assert torch.equal(model.conv.weight.grad, marker) and model.head.weight.grad is None
    # the forget pass alone gives the same s_f: no retain gradient leaked in, and vice versa
    s_f_only, _, _ = dual_sensitivity(model, forget, forget, ce, cfg)
    _, s_r_only, _ = dual_sensitivity(model, retain, retain, ce, cfg)
    assert torch.allclose(s_f["conv"], s_f_only["conv"]) and torch.allclose(s_r["conv"], s_r_only["conv"])
    assert dual["conv"].shape == (6,)  # per group, never per weight
    assert set(s_f["conv"].argsort(descending=True)[:2].tolist()) == {0, 1}


@pytest.mark.parametrize("metric", ["grad", "lora"])
def test_end_to_end_forget_channels_are_pruned(metric):
    model = ChannelNet()
    forget, retain = make_batches([2], seed=1), make_batches([0, 1], seed=2)
    if metric == "lora":
        peft = pytest.importorskip("peft")
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=4, target_modules=["conv"]))
        lora_warmup(model, forget + retain, ce, steps=5, lr=1e-2)  # own optimizer; B becomes non-zero
        assert model.base_model.model.conv.lora_B["default"].weight.abs().sum() > 0
    f0, r0 = mean_loss(model, forget), mean_loss(model, retain)
    cfg = UnlearningPruneConfig(ratio=0.34, prune_metric=metric, higher_is_better=False)
    res = dual_importance_prune(model, forget, retain, ce, cfg, retain_eval=lambda m: mean_loss(m, retain))
    assert not res.undone
    (key,) = res.pruned
    assert res.pruned[key] == [0, 1]  # exactly the channels carrying the forget class
    f1, r1 = mean_loss(model, forget), mean_loss(model, retain)
    assert f1 > f0 + 0.8 and f1 > 0.9  # forget loss up to about chance level (log 3 = 1.10)
    assert abs(r1 - r0) < 0.05  # retain loss roughly unchanged
    res.masks.detach()
    assert mean_loss(model, forget) == pytest.approx(f0, abs=1e-5)  # soft masks: undo is exact


def test_dual_sensitivity_on_tiny_llama_gqa_groups():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64)
    model = transformers.LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(0)
    forget = [torch.randint(0, 32, (2, 6), generator=g) for _ in range(2)]
    retain = [torch.randint(32, 64, (2, 6), generator=g) for _ in range(2)]
    lm = lambda m, ids: m(input_ids=ids, labels=ids).loss  # noqa: E731
    s_f, s_r, dual = dual_sensitivity(model, forget, retain, lm, UnlearningPruneConfig(prune_metric="grad",
                                                                                     forget_retain_ratio=2.0))
    assert {k: tuple(v.shape) for k, v in dual.items()} == {
        "model.layers.0.self_attn": (2,), "model.layers.0.mlp": (64,),
        "model.layers.1.self_attn": (2,), "model.layers.1.mlp": (64,)}
    masks = GroupMasks(discover_groups(model)).attach(model)
    res = unlearning_prune(model, dual, ratio=0.25, unlearning_threshold=0.5, masks=masks)
    assert all(len(v) <= 16 for k, v in res.pruned.items() if k.endswith("mlp"))
    assert all(len(v) == 0 for k, v in res.pruned.items() if k.endswith("self_attn"))  # floor(0.25*2) = 0
    masks.detach()


def test_dual_tracker_ema():
    model = ChannelNet()
    groups = discover_groups(model)
    cfg = UnlearningPruneConfig(prune_metric="grad")
    f1, f2, retain = make_batches([2], seed=1), make_batches([2], seed=5), make_batches([0, 1], seed=2)
    tracker = DualSensitivityTracker(groups, cfg, beta=0.9)
    tracker.update(model, f1, retain, ce)
    dual = tracker.update(model, f2, retain, ce)
    a, b = dual_sensitivity(model, f1, retain, ce, cfg)[0]["conv"], dual_sensitivity(model, f2, retain, ce, cfg)[0]["conv"]
    torch.testing.assert_close(tracker.s_forget["conv"], 0.9 * a + 0.1 * b)
    torch.testing.assert_close(dual["conv"], tracker.s_forget["conv"] / (tracker.s_retain["conv"] + 1e-6))
