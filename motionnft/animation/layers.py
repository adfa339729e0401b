"""Building blocks shared by the TPSMM networks.

Module and attribute names (``conv``, ``norm``, ``down_blocks``, ``up_blocks``, ``encoder``,
``decoder`` ...) are those of the official checkpoints' keys, so their state dicts load
unchanged. Every norm is an affine ``InstanceNorm2d``, as in the official networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.grid import create_meshgrid
from torch import nn


def coordinate_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The normalised ``grid_sample`` frame with ``align_corners=True``.

    Convention: ``(x, y)`` with -1 at the centre of the first pixel and +1 at the centre
    of the last, the frame of every keypoint and deformation grid in TPSMM.

    Returns:
        ``(H, W, 2)``.

    Example:
        >>> coordinate_grid(3, 5)[0, -1]
        tensor([ 1., -1.])
    """
    return create_meshgrid(height, width, normalized_coordinates=True, device=device, dtype=dtype)[0]


def keypoint_heatmaps(keypoints: torch.Tensor, height: int, width: int, variance: float) -> torch.Tensor:
    """Unnormalised Gaussians ``exp(-|p - k|² / 2σ²)`` centred on each keypoint.

    Args:
        keypoints: ``(B, M, 2)`` in the normalised frame of :func:`coordinate_grid`.
        variance: σ² in normalised units².
    Returns:
        ``(B, M, H, W)`` in (0, 1].
    """
    grid = coordinate_grid(height, width, keypoints.device, keypoints.dtype)
    offsets = grid[None, None] - keypoints[:, :, None, None, :]
    return torch.exp(-0.5 * offsets.pow(2).sum(-1) / variance)


class ResBlock2d(nn.Module):
    """Pre-activation residual block (norm, ReLU, conv) x 2; keeps size and channels."""

    def __init__(self, features: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=padding)
        self.norm1 = nn.InstanceNorm2d(features, affine=True)
        self.norm2 = nn.InstanceNorm2d(features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest 2x upsampling, conv, norm, ReLU: ``(B, C_in, H, W) -> (B, C_out, 2H, 2W)``."""

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.InstanceNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2))))


class DownBlock2d(nn.Module):
    """Conv, norm, ReLU, 2x2 average pool: ``(B, C_in, H, W) -> (B, C_out, H/2, W/2)``."""

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.InstanceNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class SameBlock2d(nn.Module):
    """Conv, norm, ReLU at the same resolution."""

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.InstanceNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def _width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2**level)


class HourglassEncoder(nn.Module):
    """``num_blocks`` down blocks; returns the input and every block's output (coarsest last)."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else _width(block_expansion, max_features, i),
                        _width(block_expansion, max_features, i + 1))
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """Up blocks with skip concatenation; returns every level's output (finest last).

    ``out_channels[i]`` is the channel count of output ``i``; the last equals
    ``block_expansion + in_features``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks, self.out_channels = [], []
        for i in reversed(range(num_blocks)):
            width_in = (1 if i == num_blocks - 1 else 2) * _width(block_expansion, max_features, i + 1)
            width_out = _width(block_expansion, max_features, i)
            blocks.append(UpBlock2d(width_in, width_out))
            self.out_channels.append(width_out + (in_features if i == 0 else width_out))
        self.up_blocks = nn.ModuleList(blocks)

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        skips = list(skips)
        out, outs = skips.pop(), []
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
            outs.append(out)
        return outs


class Hourglass(nn.Module):
    """U-Net style hourglass: ``(B, C_in, H, W)`` -> one feature map per decoder level.

    ``H`` and ``W`` must be divisible by ``2**num_blocks``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(x))


def gaussian_kernel(channels: int, sigma: float) -> torch.Tensor:
    """Depthwise ``(C, 1, k, k)`` normalised Gaussian, ``k = 2·round(4σ) + 1``."""
    size = 2 * round(sigma * 4) + 1
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-axis.pow(2) / (2 * sigma**2))
    kernel = line[:, None] * line[None, :]
    return (kernel / kernel.sum()).expand(channels, 1, size, size).contiguous()


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur (σ = (1/scale - 1)/2, zero padding) then nearest downsampling by ``scale``.

    Not ``kornia.filters.gaussian_blur2d``: the official checkpoints store the kernel as the
    buffer ``weight`` (key ``down.weight`` of the dense motion network), so the module must
    own that buffer for the keys to match, and the loaded kernel is the one applied.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        sigma = (1 / scale - 1) / 2
        self.register_buffer("weight", gaussian_kernel(channels, sigma))
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        pad = self.weight.shape[-1] // 2
        out = F.conv2d(F.pad(x, (pad, pad, pad, pad)), self.weight, groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale))
