"""The background motion predictor: one affine transform of the whole frame."""

from __future__ import annotations

import torch
from torch import nn

from .resnet import ResNet18


class BackgroundPredictor(nn.Module):
    """Source and driving frames -> ``(B, 3, 3)`` homogeneous affine (last row 0, 0, 1).

    The matrix maps normalised driving-frame positions to where they are in the source (the
    frame of :func:`.tps.affine_grid`). A ResNet-18 on the 6-channel stack regresses its top
    two rows; the ``fc`` starts at zero weights and the identity bias, so an untrained
    predictor says "the background did not move". Parameter names are those of the official
    ``bg_predictor`` state dict (``bg_encoder.*``).

    Example:
        >>> BackgroundPredictor()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))[0]
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]], grad_fn=<SelectBackward0>)
    """

    def __init__(self, num_channels: int = 3):
        super().__init__()
        self.bg_encoder = ResNet18(2 * num_channels, 6)
        with torch.no_grad():
            self.bg_encoder.fc.weight.zero_()
            self.bg_encoder.fc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        if source.shape != driving.shape:
            raise ValueError(f"driving: expected {tuple(source.shape)} like source, got {tuple(driving.shape)}")
        top = self.bg_encoder(torch.cat([source, driving], dim=1)).view(-1, 2, 3)
        bottom = torch.tensor([0.0, 0.0, 1.0], device=top.device, dtype=top.dtype).expand(top.shape[0], 1, 3)
        return torch.cat([top, bottom], dim=1)
