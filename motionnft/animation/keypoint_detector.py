"""The keypoint detector: K·N keypoints from one frame, a ResNet-18 regressor."""

from __future__ import annotations

import torch
from torch import nn

from .config import POINTS_PER_TPS
from .resnet import ResNet18


class KeypointDetector(nn.Module):
    """``(B, 3, H, W)`` image in [0, 1] -> ``(B, K·N, 2)`` keypoints in [-1, 1].

    Keypoints are ``(x, y)`` in the normalised frame of :func:`.layers.coordinate_grid`;
    consecutive groups of N = 5 belong to one thin-plate spline transform. The detector is a
    ResNet-18 whose ``fc`` outputs K·N·2 numbers squashed by a sigmoid to (-1, 1). Parameter
    names are those of the official ``kp_detector`` state dict (``fg_encoder.*``).

    Example:
        >>> KeypointDetector(num_tps=2)(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 10, 2])
    """

    def __init__(self, num_tps: int = 10, num_channels: int = 3):
        super().__init__()
        self.num_tps = num_tps
        self.fg_encoder = ResNet18(num_channels, num_tps * POINTS_PER_TPS * 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4:
            raise ValueError(f"image: expected (B, C, H, W), got {tuple(image.shape)}")
        keypoints = torch.sigmoid(self.fg_encoder(image)) * 2 - 1
        return keypoints.view(image.shape[0], self.num_tps * POINTS_PER_TPS, 2)
