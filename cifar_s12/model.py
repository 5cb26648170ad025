"""The networks: the course's CustomResNet ("ResNet-9") and a CIFAR ResNet18, plus a by-name factory.

nn.Modules only; this file imports nothing else from the package so that any trainer can use it.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

NUM_CLASSES = 10


class ConvBlock(nn.Sequential):
    """conv3x3 (no bias: BatchNorm has one) -> [MaxPool2] -> BN -> ReLU -> [Dropout]."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """x + F(x), with F = two ConvBlocks at constant width (the course's R1 / R2)."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(ConvBlock(channels, channels, dropout=dropout),
                                  ConvBlock(channels, channels, dropout=dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CustomResNet(nn.Module):
    """The course's custom ResNet: 6,573,120 parameters.

    prep (64) -> layer1 (128, pool, + R1) -> layer2 (256, pool) -> layer3 (512, pool, + R2) -> MaxPool(4) -> FC.

    ``logit_scale`` multiplies the logits (D. Page's recipe uses 0.125): a constant, not a parameter, so it changes
    neither the parameter count nor the argmax, only how peaked the softmax is during training and prediction.
    """

    #: Default GradCAM layer: the last block of the last residual stage.
    cam_layer = "layer3.1.body.1"
    #: The blocks GradCAM can look at, by the course's names (the app's layer menu), input side first.
    cam_blocks = {"prep": "prep: conv", "layer1.0": "layer 1: conv + pool", "layer1.1": "layer 1: R1, x + R1(x)",
                  "layer2": "layer 2: conv + pool", "layer3.0": "layer 3: conv + pool",
                  "layer3.1.body.0": "layer 3: R2, first conv", "layer3.1.body.1": "layer 3: R2, second conv",
                  "layer3.1": "layer 3: R2, x + R2(x)"}

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.0, logit_scale: float = 1.0):
        super().__init__()
        self.logit_scale = logit_scale
        self.prep = ConvBlock(3, 64, dropout=dropout)
        self.layer1 = nn.Sequential(ConvBlock(64, 128, pool=True, dropout=dropout), ResidualBlock(128, dropout))
        self.layer2 = ConvBlock(128, 256, pool=True, dropout=dropout)
        self.layer3 = nn.Sequential(ConvBlock(256, 512, pool=True, dropout=dropout), ResidualBlock(512, dropout))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(512, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}: use 'bn' or 'gn'")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, c_out, groups)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:  # projection shortcut where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          _norm(norm, c_out, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 for 32x32 inputs (3x3 stem, no stem pooling): 11,173,962 parameters with either norm.

    ``norm="gn"`` swaps every BatchNorm for GroupNorm(``groups``), which has the same parameter count.
    """

    cam_layer = "layer4.1"
    cam_blocks = {"layer1": "layer 1", "layer2": "layer 2", "layer3": "layer 3", "layer4.0": "layer 4, block 1",
                  "layer4.1": "layer 4, block 2"}

    def __init__(self, num_classes: int = NUM_CLASSES, norm: str = "bn", groups: int = 32,
                 logit_scale: float = 1.0):
        super().__init__()
        self.logit_scale = logit_scale
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = _norm(norm, 64, groups)
        self.relu = nn.ReLU(inplace=True)
        widths, c_in = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(c_in, width, stride, norm, groups),
                                                     BasicBlock(width, width, 1, norm, groups)))
            c_in = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1)) * self.logit_scale


MODELS: dict[str, Callable[..., nn.Module]] = {
    "custom_resnet": CustomResNet,
    "resnet18": ResNet18,
    "resnet18_gn": lambda **kw: ResNet18(norm="gn", **kw),
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by its registry name (see ``MODELS``)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None
    return factory(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
