"""Wiring of structured pruning into the jobs: dual_prune (bake, safeguard, trainability),
prepare_llm dispatch and the latency probe."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from obliviate.errors import ConfigError
from obliviate.pipelines.prune_llm import latency_ms, prepare_llm
from obliviate.pipelines.prune_structured import dual_prune, mean_loss
from obliviate.pruning import attached_masks

torch.set_num_threads(1)


class TwoWay(nn.Module):
    """Channel 0 detects the forget class (+1 images), channel 1 the retain class (-1 images)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.01, -0.01]).view(4, 1, 1, 1))
            self.conv.bias.zero_()
            self.head.weight.copy_(torch.tensor([[0.0, 3.0, 0.1, 0.1], [3.0, 0.0, 0.1, 0.1]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _batches(sign: float, label: int, n: int = 2):
    g = torch.Generator().manual_seed(label)
    return [{"pixel_values": sign * (1 + 0.1 * torch.rand(4, 1, 3, 3, generator=g)), "labels": torch.full((4,), label)}
            for _ in range(n)]


def _ce(model, batch):
    return nn.functional.cross_entropy(model(batch["pixel_values"]), batch["labels"])


def _acc(batches):
    def f(model):
        with torch.no_grad():
            return float(torch.cat([(model(b["pixel_values"]).argmax(-1) == b["labels"]) for b in batches]).float().mean())
    return f


def test_dual_prune_removes_the_forget_channel_and_keeps_it_zero():
    model = TwoWay()
    forget, retain = _batches(1.0, 1, 2), _batches(-1.0, 0, 2)
    opts = {"ratio": 0.25, "prune_metric": "grad", "unlearning_threshold": 0.5}
    model, rec = dual_prune(model, forget, retain, _ce, opts, _acc(retain), higher_is_better=True)
    assert rec["pruned_groups"] == {"conv": [0]} and rec["n_pruned"] == 1
    d = rec["loss"]["delta"]
    assert d["forget"] > 0.5 and abs(d["retain"]) < 1e-3 and d["forget"] > d["retain"]
    assert rec["retain_metric"]["before"] == rec["retain_metric"]["after"] == 1.0
    assert float(model.conv.weight[0].detach().abs().sum()) == 0.0 and "conv.weight" in attached_masks(model)
    assert all(p.requires_grad for p in model.parameters())  # the unlearning method trains them next
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    _ce(model, forget[0]).backward()
    opt.step()
    model(forget[0]["pixel_values"])  # the mask hook re-zeroes the pruned channel
    assert float(model.conv.weight[0].detach().abs().sum()) == 0.0


def test_safeguard_undoes_a_step_that_breaks_retain():
    model = TwoWay()
    forget, retain = _batches(1.0, 1, 1), _batches(-1.0, 0, 1)
    calls = iter([1.0, 0.1, 0.1, 0.1, 0.1, 0.1])  # every prune step halves "retain accuracy" far below 0.9
    with pytest.warns(UserWarning, match="pruned no group"):
        model, rec = dual_prune(model, forget, retain, _ce, {"ratio": 0.25, "prune_metric": "grad"}, lambda m: next(calls))
    assert rec["n_pruned"] == 0 and rec["n_undone_steps"] >= 1
    assert abs(rec["loss"]["delta"]["forget"]) < 1e-6


def test_lora_metric_discards_the_scoring_adapters():
    model = TwoWay()
    forget, retain = _batches(1.0, 1, 2), _batches(-1.0, 0, 2)
    opts = {"ratio": 0.25, "prune_metric": "lora", "lora_r": 2, "lora_warmup_steps": 3, "lr": 1e-2}
    out, rec = dual_prune(model, forget, retain, _ce, opts, None)
    assert type(out) is TwoWay and not any("lora" in n for n, _ in out.named_parameters())
    assert mean_loss(out, forget, _ce) >= rec["loss"]["before"]["forget"] and rec["method"] == "unlearning_prune"


def test_prepare_llm_dispatch():
    model = nn.Linear(2, 2)
    assert prepare_llm(OmegaConf.create({"pruning": {"name": "none"}, "seed": 0}), model, None, None, None) == (model, None)
    with pytest.raises(ConfigError, match="unlearning_prune"):
        prepare_llm(OmegaConf.create({"pruning": {"name": "omp"}, "seed": 0}), model, None, None, None)


def test_latency_probe_on_a_tiny_decoder():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1))
    batch = {"input_ids": torch.randint(0, 32, (2, 5)), "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    assert latency_ms(m, batch, repeats=3) > 0


def test_interleaved_callback_extends_the_initial_masks():
    from obliviate.pipelines.prune_interleave import InterleavedPruneCallback

    model = TwoWay()
    forget, retain = _batches(1.0, 1, 2), _batches(-1.0, 0, 2)
    opts = {"ratio": 0.25, "prune_metric": "lora", "interleave_every": 1, "interleave_ratio_step": 0.25}
    record = {"pruned_groups": {"conv": [0]}}
    cb = InterleavedPruneCallback(model, forget, retain, _ce, opts, record, _acc(retain))
    assert cb.cfg.prune_metric == "grad"  # no adapters on the trained model
    assert not bool(cb.masks.keep["conv"][0])  # seeded from the initial prune
    entry = cb.prune_now(step=3)
    assert entry["ratio"] == 0.5 and record["interleaved"] == [entry]
    assert not bool(cb.masks.keep["conv"][0]) and entry["pruned_groups"]["conv"][0] == 0
    assert float(model.conv.weight[0].detach().abs().sum()) == 0.0
