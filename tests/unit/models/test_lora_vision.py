"""LoRA (PEFT) on timm and plain PyTorch vision models: trainable set, save/reload, merge."""

import copy

import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.models.lora import apply_lora, discover_targets

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm(name):
    timm = pytest.importorskip("timm")
    kw = {"img_size": 32, "patch_size": 8, "depth": 2} if name.startswith("vit") else {}
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4, **kw).eval()


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1))
        self.proj = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.proj(self.body(x).mean((2, 3)))))


MODELS = {"resnet18": lambda: _timm("resnet18"), "vit_tiny": lambda: _timm("vit_tiny_patch16_224"), "plain": lambda: Plain().eval()}
HEADS = {"resnet18": "fc", "vit_tiny": "head", "plain": "fc"}


def _perturb_adapters(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


@pytest.mark.parametrize("name", list(MODELS))
def test_only_adapters_train_and_save_reload_merge_agree(name, tmp_path):
    from peft import PeftModel

    base = MODELS[name]()
    x = torch.randn(2, 3, 32, 32)
    reference = copy.deepcopy(base)
    model = apply_lora(copy.deepcopy(base), r=4, alpha=8, modules_to_save=[HEADS[name]])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the head trains in full
    _perturb_adapters(model)
    model.eval()
    y = model(x)
    assert not torch.allclose(y, reference(x))  # adapters change the output
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(reloaded(x), y)
    merged = model.merge_and_unload().eval()
    assert not any("lora_" in n for n, _ in merged.named_modules())
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=1e-4)


def test_discovered_targets_skip_heads_and_grouped_convs():
    assert discover_targets(Plain()) == ["body.0", "proj"]  # fc is the head, body.2 is depthwise
    assert {"qkv", "proj", "fc1", "fc2"} == set(discover_targets(_timm("vit_tiny_patch16_224")))
    resnet = discover_targets(_timm("resnet18"))
    assert {"conv1", "conv2"} <= set(resnet) and "fc" not in resnet and "layer2.0.downsample.0" in resnet


def test_training_moves_only_adapters():
    base = MODELS["resnet18"]()
    model = apply_lora(copy.deepcopy(base), r=2, alpha=4)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen and "running" not in n)


@pytest.mark.filterwarnings("ignore:LoRA adapter added to ConvNd")
def test_bad_targets_are_config_errors():
    with pytest.raises(ConfigError, match="not found"):
        apply_lora(Plain(), target_modules=["nope"])
    with pytest.raises(ConfigError, match="could not adapt"):
        apply_lora(Plain(), r=3, target_modules=["body.2"])  # depthwise conv, rank not divisible by groups
