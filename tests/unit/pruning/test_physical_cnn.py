"""Physical removal of pruned conv output channels (obliviate.pruning.physical_cnn)."""

import copy

import torch
from torch import nn

from obliviate.checkpoint import load_model as load_physical  # shrinks a fresh model to the stored sizes
from obliviate.models.vision import DigitsCNN, ResNetCIFAR
from obliviate.pipelines.prune_structured import bake_masks
from obliviate.pruning import attached_masks
from obliviate.pruning.groups import GroupMasks, discover_groups
from obliviate.pruning.physical_cnn import (
    expand_state_dict,
    read_shapes,
    remove_conv_channels,
    save_physical,
    shrink_to,
)



def _prune(model, drop=(0, 3, 6)):
    """Soft masks dropping channels ``drop`` of every conv, baked into the weights."""
    masks = GroupMasks(discover_groups(model)).attach(model)
    for g in masks.groups.values():
        keep = torch.ones(g.n_groups, dtype=torch.bool)
        keep[[i for i in drop if i < g.n_groups]] = False
        masks.set(g.key, keep)
    bake_masks(model, masks)
    return masks


def _n(model):
    return sum(p.numel() for p in model.parameters())


def test_digits_cnn_removal_matches_the_masked_model_and_counts_by_hand():
    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    masks = _prune(model)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
    rep = remove_conv_channels(model, masks)
    with torch.no_grad():
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert rep["removed"] and rep["skipped_sets"] == {}
    assert rep["removed_sets"]["features.0"] == {"channels_before": 8, "channels_after": 5, "consumers": ["features.2"]}
    assert rep["removed_sets"]["features.2"]["consumers"] == ["head.1"]
    f0, f2, h1 = model.features[0], model.features[2], model.head[1]
    assert isinstance(f0, nn.Conv2d) and (f0.in_channels, f0.out_channels) == (1, 5) and f0.bias.shape == (5,)
    assert (f2.in_channels, f2.out_channels) == (5, 5) and tuple(f2.weight.shape) == (5, 5, 3, 3)
    assert (h1.in_features, h1.out_features) == (5 * 16, 64)
    # by hand: conv0 1*8*9+8, conv2 8*8*9+8, head.1 8*16*64+64, head.3 64*10+10  ->  width 5
    before = (1 * 8 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 16 * 64 + 64) + (64 * 10 + 10)
    after = (1 * 5 * 9 + 5) + (5 * 5 * 9 + 5) + (5 * 16 * 64 + 64) + (64 * 10 + 10)
    assert rep["params_before"] == before == 9570 and rep["params_after"] == after == _n(model) == 6114
    # element masks re-attached with the new shapes; removed sets leave the soft masks
    assert {k: tuple(v.shape) for k, v in attached_masks(model).items()} == {"features.0.weight": (5, 1, 3, 3),
                                                                             "features.2.weight": (5, 5, 3, 3)}
    assert masks.keep == {}
    # the full-size equivalent loads into a freshly built model
    fresh = DigitsCNN(width=8).eval()
    fresh.load_state_dict(expand_state_dict(model.state_dict(), rep))
    with torch.no_grad():
        assert torch.allclose(fresh(x), ref, atol=1e-5)


def test_resnet_residual_sets_are_skipped_and_the_rest_removed():
    torch.manual_seed(0)
    model = ResNetCIFAR(width=4, blocks=(1, 1)).eval()
    masks = _prune(model, drop=(0, 2))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    rep = remove_conv_channels(model, masks)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    assert set(rep["removed_sets"]) == {"layers.0.conv1", "layers.1.conv1"}
    assert set(rep["skipped_sets"]) == {"conv1", "layers.0.conv2", "layers.1.conv2", "layers.1.shortcut.0"}
    assert all("residual addition" in r for r in rep["skipped_sets"].values())
    blk = model.layers[0]
    assert blk.conv1.out_channels == blk.bn1.num_features == blk.conv2.in_channels == 2 and blk.bn1.running_mean.shape == (2,)
    assert model.conv1.out_channels == 4 and float(model.conv1.weight[[0, 2]].detach().abs().sum()) == 0.0  # kept zeroed + masked
    assert set(masks.keep) == set(rep["skipped_sets"]) and rep["params_after"] < rep["params_before"]


def test_training_step_and_state_dict_round_trip_after_removal(tmp_path):
    torch.manual_seed(0)
    model = ResNetCIFAR(width=4, blocks=(1, 1))
    masks = _prune(model, drop=(1,))
    rep = remove_conv_channels(model, masks)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model(x)  # the element masks re-zero what the step wrote into skipped (still pruned) rows
    assert float(model.conv1.weight[1].detach().abs().sum()) == 0.0
    model.eval()
    with torch.no_grad():
        ref = model(x)
    clone = shrink_to(ResNetCIFAR(width=4, blocks=(1, 1)), rep["shapes"])
    clone.load_state_dict(copy.deepcopy(model.state_dict()))
    path = save_physical(model, rep, tmp_path / "model_physical.safetensors")
    assert read_shapes(path) == rep["shapes"]
    loaded = load_physical(ResNetCIFAR(width=4, blocks=(1, 1)), path).eval()
    with torch.no_grad():
        assert torch.allclose(clone.eval()(x), ref, atol=1e-6) and torch.allclose(loaded(x), ref, atol=1e-6)
    assert _n(loaded) == rep["params_after"]
    # the generic checkpoint loader (original_checkpoint=... of any run) shrinks a fresh model too
    from obliviate.checkpoint import load_model

    generic = load_model(ResNetCIFAR(width=4, blocks=(1, 1)), path).eval()
    with torch.no_grad():
        assert torch.allclose(generic(x), ref, atol=1e-6)


class _Odd(nn.Module):
    """conv a -> cat (unsupported); conv b -> sigmoid (f(0) != 0); conv c -> relu -> conv d (removable)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1)
        self.d = nn.Conv2d(12, 2, 1)

    def forward(self, x):
        return self.d(torch.cat([self.a(x), torch.sigmoid(self.b(x)), torch.relu(self.c(x))], 1))


def test_unsupported_consumers_are_skipped_with_a_reason():
    torch.manual_seed(0)
    model = _Odd().eval()
    masks = _prune(model, drop=(0,))
    x = torch.randn(2, 1, 3, 3)
    with torch.no_grad():
        ref = model(x)
    rep = remove_conv_channels(model, masks)
    assert not rep["removed"] and rep["params_after"] == rep["params_before"]
    assert "concatenation" in rep["skipped_sets"]["a"] and "sigmoid" in rep["skipped_sets"]["b"]
    assert "would keep no channel" not in rep["skipped_sets"]["c"]
    with torch.no_grad():
        assert torch.allclose(model(x), ref)
