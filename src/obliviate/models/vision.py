"""Vision classifiers: a small CNN for 8x8 digits, a CIFAR-size ResNet, and timm models.

Every builder takes ``num_classes`` and ``in_chans`` and returns a plain ``nn.Module`` mapping
images ``[b, c, h, w]`` to logits ``[b, num_classes]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from obliviate.errors import ConfigError
from obliviate.registry import MODELS


@MODELS.register("digits_cnn", track="vision")
class DigitsCNN(nn.Module):
    """Two conv blocks + MLP head for 8x8 inputs (about 30k parameters)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, **_: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # [b, w, 4, 4]
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@MODELS.register("resnet18_cifar", track="vision")
class ResNetCIFAR(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), as in the unlearning papers.

    Args:
        width: Channels of the first stage (64 = the standard ResNet-18; smaller for CPU tests).
        blocks: Blocks per stage.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2), **_: Any) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for stage, n in enumerate(blocks):
            c_out = width * 2**stage
            for b in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if (b == 0 and stage > 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("timm", track="vision")
def timm_model(name: str = "resnet18", num_classes: int = 10, in_chans: int = 3, pretrained: bool = False,
               pretrained_file: str | None = None, **kwargs: Any) -> nn.Module:
    """Any timm model by name; ``pretrained`` downloads from the hub, ``pretrained_file`` loads locally."""
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        raise ConfigError(f"timm has no model '{name}'; close names: {', '.join(close) or 'none'}")
    extra = {k: v for k, v in kwargs.items() if k not in ("width",)}
    cfg_overlay = {"file": pretrained_file} if pretrained_file else None
    return timm.create_model(name, pretrained=pretrained or bool(pretrained_file), num_classes=num_classes,
                             in_chans=in_chans, pretrained_cfg_overlay=cfg_overlay, **extra)


def build_vision_model(builder: str, /, *, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """Build the registered vision model ``builder``; ``None``-valued kwargs are dropped."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return MODELS.get(builder)(num_classes=num_classes, in_chans=in_chans, **kwargs)
