"""OMP / IMP: global magnitude masks, exact measured rates, rewinding, masks kept under training."""

import copy

import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.models.vision import DigitsCNN
from obliviate.pruning import PRUNERS, attached_masks, measure_sparsity
from obliviate.pruning.magnitude import RewindCapture, global_magnitude_masks, imp_round_rates


class Hand(nn.Module):
    """Two hidden layers with hand-set weights + a head (the last Linear)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)  # weight [2, 1, 1, 1]
        self.lin = nn.Linear(3, 2)  # weight [2, 3]
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.9, -0.05]).view(2, 1, 1, 1))
            self.lin.weight.copy_(torch.tensor([[0.1, -0.7, 0.3], [0.02, 0.5, -0.4]]))
            self.head.weight.copy_(torch.tensor([[0.01, 0.02], [0.03, 5.0]]))
            for m in (self.conv, self.lin, self.head):
                m.bias.fill_(0.0)

    def forward(self, x):  # x [b, 3]
        h = self.conv(x[:, :1, None, None]).flatten(1)  # [b, 2]
        return self.head(torch.relu(self.lin(x)) + h)


def test_omp_global_threshold_by_hand():
    # prunable |w| (head excluded): conv 0.9 0.05 | lin 0.1 0.7 0.3 0.02 0.5 0.4  -> 8 weights
    # rate 0.5 -> the 4 smallest globally: 0.02, 0.05, 0.1, 0.3 (threshold between 0.3 and 0.4)
    model = Hand()
    result = PRUNERS.get("omp")(model, rate=0.5)
    assert torch.equal(result.masks["conv.weight"].flatten(), torch.tensor([True, False]))
    assert torch.equal(result.masks["lin.weight"], torch.tensor([[False, True, False], [False, True, True]]))
    assert "head.weight" not in result.masks and model.head.weight.count_nonzero() == 4
    sp = measure_sparsity(model)
    assert sp.sparsity == 0.5 and sp.zeros == 4 and sp.total == 8
    assert sp.per_layer == {"conv.weight": 0.5, "lin.weight": 0.5}
    assert result.info["sparsity"] == 0.5  # measured, not echoed


def test_omp_with_head_and_uneven_layers():
    model = Hand()
    PRUNERS.get("OMP")(model, rate=0.5, include_head=True)
    # 12 weights, 6 smallest: 0.01 0.02 0.02 0.03 0.05 0.1  -> head keeps only 5.0
    sp = measure_sparsity(model, include_head=True)
    assert sp.zeros == 6 and sp.per_layer["head.weight"] == 0.75 and sp.per_layer["lin.weight"] == pytest.approx(2 / 6)
    assert model.head.weight[1, 1] == 5.0 and model.lin.weight[1, 0] == 0 and model.lin.weight[0, 2] != 0


def test_omp_rate_is_measured_exactly_on_a_cnn():
    torch.manual_seed(0)
    model = DigitsCNN()
    PRUNERS.get("omp")(model, rate=0.9)
    sp = measure_sparsity(model)
    assert sp.zeros == round(0.9 * sp.total)
    assert abs(sp.sparsity - 0.9) < 1 / sp.total
    assert model.head[3].weight.count_nonzero() == model.head[3].weight.numel()  # head kept
    assert all(m.bias.count_nonzero() == m.bias.numel() for m in (model.features[0], model.features[2]))


def test_bad_rate_is_a_config_error():
    with pytest.raises(ConfigError, match="rate"):
        global_magnitude_masks({"w": torch.ones(3)}, 1.5)
    with pytest.raises(ConfigError, match="rounds"):
        imp_round_rates(0.5, 0)


def test_imp_rounds_reach_the_target_and_rewind_restores_epoch_k_values():
    torch.manual_seed(0)
    model = DigitsCNN()
    rewind_state = {k: v.clone() for k, v in model.state_dict().items()}  # "epoch k" weights
    with torch.no_grad():  # pretend training moved the weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    seen = []

    def retrain(m, round_index):
        masks = attached_masks(m)
        for key, mask in masks.items():
            w = m.get_parameter(key)
            assert torch.equal(w[mask], rewind_state[key][mask])  # survivors rewound exactly
            assert w[~mask].count_nonzero() == 0
        seen.append(measure_sparsity(m).sparsity)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(m(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
            opt.step()

    result = PRUNERS.get("imp")(model, rate=0.875, rounds=3, rewind_state=rewind_state, retrain=retrain)
    targets = imp_round_rates(0.875, 3)
    assert targets == pytest.approx([0.5, 0.75, 0.875])
    assert seen == pytest.approx(targets, abs=1e-4)
    sp = measure_sparsity(model)
    assert sp.zeros == round(0.875 * sp.total) and result.info["sparsity"] == sp.sparsity
    assert [h["round"] for h in result.info["history"]] == [1, 2, 3]


def test_rewind_capture_epoch_zero_and_k():
    model = nn.Linear(2, 2)
    first = RewindCapture(0)
    first.on_train_begin(None, None, None, model=model)
    with torch.no_grad():
        model.weight.add_(1.0)
    k = RewindCapture(2)
    k.on_epoch_end(None, type("S", (), {"epoch": 1.0})(), None, model=model)
    assert k.state is None
    k.on_epoch_end(None, type("S", (), {"epoch": 2.0})(), None, model=model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert torch.equal(first.state["weight"] + 1, k.state["weight"]) and torch.equal(k.state["weight"] + 1, model.weight)
    with pytest.raises(ConfigError):
        RewindCapture(-1)


def test_deepcopy_keeps_masks():
    torch.manual_seed(0)
    model = DigitsCNN()
    PRUNERS.get("omp")(model, rate=0.7)
    clone = copy.deepcopy(model)
    assert set(attached_masks(clone)) == set(attached_masks(model))
