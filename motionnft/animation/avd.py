"""Animation via disentanglement (AVD, from MRAA, used by TPSMM's ``avd`` mode).

Encodes the source keypoints' identity and the driving keypoints' pose separately and
decodes keypoints with the source's shape in the driving pose. Optional: only checkpoints
trained with ``train_avd`` hold an ``avd_network``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import POINTS_PER_TPS


def _mlp(sizes: list[int], inplace: bool) -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU per hidden layer; a bare linear last (the official layout)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers += [nn.BatchNorm1d(width_out), nn.ReLU(inplace=inplace)]
    return nn.Sequential(*layers)


class AVDNetwork(nn.Module):
    """``(B, K·N, 2)`` source and driving keypoints -> ``(B, K·N, 2)`` retargeted keypoints.

    Example:
        >>> AVDNetwork(num_tps=2).eval()(torch.rand(2, 10, 2), torch.rand(2, 10, 2)).shape
        torch.Size([2, 10, 2])
    """

    def __init__(self, num_tps: int = 10, id_bottle_size: int = 64, pose_bottle_size: int = 64):
        super().__init__()
        size = POINTS_PER_TPS * 2 * num_tps
        self.num_tps = num_tps
        self.id_encoder = _mlp([size, 256, 512, 1024, id_bottle_size], inplace=True)
        self.pose_encoder = _mlp([size, 256, 512, 1024, pose_bottle_size], inplace=True)
        self.decoder = _mlp([pose_bottle_size + id_bottle_size, 1024, 512, 256, size], inplace=False)

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        batch = kp_source.shape[0]
        pose = self.pose_encoder(kp_driving.reshape(batch, -1))
        identity = self.id_encoder(kp_source.reshape(batch, -1))
        return self.decoder(torch.cat([pose, identity], dim=1)).view(batch, -1, 2)
