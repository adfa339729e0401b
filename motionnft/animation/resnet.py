"""ResNet-18 (He et al. 2016) in plain torch, with torchvision's parameter names.

TPSMM's keypoint detector and background predictor are torchvision ``resnet18`` models
with a replaced ``fc`` (and, for the background, a 6-channel ``conv1``). torchvision is
not a dependency of this project (and often does not match a user's torch), so the
network is written here with the same module names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0`` ..., ``fc``) so the official state dicts load.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1-projected) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet18(nn.Module):
    """``(B, C_in, H, W)`` -> ``(B, num_outputs)``: ResNet-18 features, global average, linear.

    Args:
        in_channels: input channels (3 for the keypoint detector, 6 for the background
            predictor, which sees source and driving frames stacked).
        num_outputs: width of the final ``fc`` layer.

    Example:
        >>> ResNet18(3, 20)(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 20])
    """

    def __init__(self, in_channels: int = 3, num_outputs: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        previous = 64
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            setattr(self, f"layer{index}", nn.Sequential(BasicBlock(previous, width, stride), BasicBlock(width, width)))
            previous = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_outputs)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
