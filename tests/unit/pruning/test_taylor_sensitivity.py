"""Group-Taylor sensitivity (``prune_metric="taylor"``): gate gradients against autograd on the
group outputs, no weight gradients touched, and the dual prune removes the forget channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pruning.groups import discover_groups
from obliviate.pruning.unlearning import UnlearningPruneConfig, dual_importance_prune, taylor_pass

from tests.unit.pruning.test_unlearning_prune import ChannelNet, ce, make_batches, mean_loss



class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear: the group output is the BatchNorm output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 3)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.h = self.bn(self.conv(x))
        if self.h.requires_grad:
            self.h.retain_grad()
        return self.head(torch.relu(self.h).mean((2, 3)))


def test_taylor_equals_output_times_output_gradient_per_batch():
    model = ConvBN().eval()
    batches = make_batches([0, 1, 2], n_batches=3, seed=3)
    groups = discover_groups(model)
    assert [gs.key for gs in groups] == ["conv"] and [m.kind for m in groups[0].members] == ["weight", "bn"]
    scores = taylor_pass(model, groups, batches, ce)["conv"]
    # independent: dL/dg_c = sum_{b,h,w} dL/dh[b,c,h,w] * h[b,c,h,w] at the BN output, squared, summed over batches
    expected = torch.zeros(5, dtype=torch.float64)
    for b in batches:
        model.zero_grad(set_to_none=True)
        x = b[0].clone().requires_grad_(True)  # makes h require grad even without weight grads
        loss = ce(model, (x, b[1]))
        loss.backward()
        expected += (model.h.grad * model.h).sum((0, 2, 3)).double().pow(2)
    expected /= expected.sum()
    assert torch.allclose(scores.double(), expected, rtol=1e-4, atol=1e-7)
    assert float(scores.sum()) == pytest.approx(1.0)


def test_taylor_on_llama_mlp_and_attention_groups_matches_column_gradients():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=16)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    lm = lambda m, x: m(input_ids=x, labels=x).loss  # noqa: E731
    groups = discover_groups(model)
    scores = taylor_pass(model, groups, [ids], lm)
    # independent: inputs of down_proj / o_proj captured with retain_grad
    captured = {}

    def grab(name):
        def hook(_m, args):
            x = args[0]
            x.retain_grad()
            captured[name] = x
        return hook

    layer = model.model.layers[0]
    handles = [layer.mlp.down_proj.register_forward_pre_hook(grab("mlp")), layer.self_attn.o_proj.register_forward_pre_hook(grab("attn"))]
    emb = model.model.embed_tokens.weight
    emb.requires_grad_(True)
    lm(model, ids).backward()
    for h in handles:
        h.remove()
    mlp = (captured["mlp"].grad * captured["mlp"]).sum((0, 1)).pow(2)  # [16] channels
    assert torch.allclose(scores["model.layers.0.mlp"], mlp / mlp.sum(), rtol=1e-4, atol=1e-7)
    cols = (captured["attn"].grad * captured["attn"]).sum((0, 1))  # [32] = 4 heads x head_dim 8
    per_kv = cols.view(2, 2 * 8).sum(1).pow(2)  # KV group j = query heads 2j, 2j+1 (GQA)
    assert torch.allclose(scores["model.layers.0.self_attn"], per_kv / per_kv.sum(), rtol=1e-4, atol=1e-7)


def test_taylor_leaves_weight_gradients_and_flags_alone():
    model = ChannelNet()
    model.head.weight.requires_grad_(False)
    marker = torch.full_like(model.conv.weight, 7.0)
    model.conv.weight.grad = marker.clone()
    taylor_pass(model, discover_groups(model), make_batches([2]), ce)
    assert torch.equal(model.conv.weight.grad, marker)
    assert model.conv.weight.requires_grad and not model.head.weight.requires_grad
    assert not model.conv._forward_hooks and not model.conv._forward_pre_hooks  # gates removed


def test_dual_taylor_prunes_the_forget_channels():
    model = ChannelNet()
    forget, retain = make_batches([2], seed=1), make_batches([0, 1], seed=2)
    f0, r0 = mean_loss(model, forget), mean_loss(model, retain)
    cfg = UnlearningPruneConfig(ratio=0.34, prune_metric="taylor", higher_is_better=False)
    res = dual_importance_prune(model, forget, retain, ce, cfg, retain_eval=lambda m: mean_loss(m, retain))
    assert res.pruned["conv"] == [0, 1]
    assert mean_loss(model, forget) > f0 + 0.8 and abs(mean_loss(model, retain) - r0) < 0.05


def test_unknown_prune_metric_is_a_config_error():
    with pytest.raises(ConfigError, match="prune_metric must be one of"):
        UnlearningPruneConfig(prune_metric="fisher")
