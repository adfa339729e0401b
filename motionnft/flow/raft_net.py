"""The RAFT network (Teed & Deng, ECCV 2020), large and small, in plain torch, with torchvision's parameter names.

RAFT encodes both images at 1/8 resolution, builds the all-pairs correlation volume and a
4-level pyramid of it, then refines the flow with a recurrent (GRU) update operator that
looks up correlations around the current estimate; the final 1/8 flow is upsampled by a
learned convex combination (large) or bilinearly (small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvGRUCell, FlowHead, bilinear_upsample_flow, convex_upsample, sample_at_pixels
from .warp import pixel_grid


@dataclass(frozen=True)
class RAFTConfig:
    """Sizes of a RAFT variant (the two published ones are ``RAFT_LARGE`` and ``RAFT_SMALL``)."""

    variant: str
    block: str  # "residual" or "bottleneck"
    feature_layers: tuple[int, int, int, int, int]
    context_layers: tuple[int, int, int, int, int]
    context_norm: str | None  # "batch" or None; the feature encoder always uses instance norm
    corr_levels: int
    corr_radius: int
    motion_corr_layers: tuple[int, ...]
    motion_flow_layers: tuple[int, int]
    motion_channels: int
    hidden: int
    gru_kernels: tuple[tuple[int, int], ...]
    flow_head_hidden: int
    convex_upsampling: bool

    @property
    def context_channels(self) -> int:
        return self.context_layers[-1] - self.hidden


RAFT_LARGE = RAFTConfig(
    variant="large",
    block="residual",
    feature_layers=(64, 64, 96, 128, 256),
    context_layers=(64, 64, 96, 128, 256),
    context_norm="batch",
    corr_levels=4,
    corr_radius=4,
    motion_corr_layers=(256, 192),
    motion_flow_layers=(128, 64),
    motion_channels=128,
    hidden=128,
    gru_kernels=((1, 5), (5, 1)),
    flow_head_hidden=256,
    convex_upsampling=True,
)

RAFT_SMALL = RAFTConfig(
    variant="small",
    block="bottleneck",
    feature_layers=(32, 32, 64, 96, 128),
    context_layers=(32, 32, 64, 96, 160),
    context_norm=None,
    corr_levels=4,
    corr_radius=3,
    motion_corr_layers=(96,),
    motion_flow_layers=(64, 32),
    motion_channels=82,
    hidden=96,
    gru_kernels=((3, 3),),
    flow_head_hidden=128,
    convex_upsampling=False,
)

RAFT_CONFIGS = {"large": RAFT_LARGE, "small": RAFT_SMALL}

DOWNSAMPLE = 8
MIN_FEATURE_SIZE = 2 ** (RAFT_LARGE.corr_levels - 1) * 2
"""The coarsest correlation level needs at least 2 cells per side: 16 at 1/8, i.e. 128 px."""


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, norm: str | None = None, relu: bool = True) -> nn.Sequential:
    """Convolution (with bias), optional norm, optional ReLU: indices 0, 1, 2 of the parameter names."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=True)]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    elif norm is not None:
        raise ValueError(f"unknown norm {norm!r}")
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int):
        super().__init__()
        self.convnormrelu1 = _conv(cin, cout, 3, stride, norm)
        self.convnormrelu2 = _conv(cout, cout, 3, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else _conv(cin, cout, 1, stride, norm, relu=False)

    def forward(self, x):
        return F.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class BottleneckBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str | None, stride: int):
        super().__init__()
        self.convnormrelu1 = _conv(cin, cout // 4, 1, 1, norm)
        self.convnormrelu2 = _conv(cout // 4, cout // 4, 3, stride, norm)
        self.convnormrelu3 = _conv(cout // 4, cout, 1, 1, norm)
        self.downsample = nn.Identity() if stride == 1 else _conv(cin, cout, 1, stride, norm, relu=False)

    def forward(self, x):
        return F.relu(self.downsample(x) + self.convnormrelu3(self.convnormrelu2(self.convnormrelu1(x))))


class FeatureEncoder(nn.Module):
    """Image -> features at 1/8 resolution (strides 2, 1, 2, 2)."""

    def __init__(self, layers: tuple[int, ...], block: str, norm: str | None):
        super().__init__()
        block_type = {"residual": ResidualBlock, "bottleneck": BottleneckBlock}[block]
        self.convnormrelu = _conv(3, layers[0], 7, 2, norm)
        stages = []
        for cin, cout, stride in zip(layers[:3], layers[1:4], (1, 2, 2)):
            stages.append(nn.Sequential(block_type(cin, cout, norm, stride), block_type(cout, cout, norm, 1)))
        self.layer1, self.layer2, self.layer3 = stages
        self.conv = nn.Conv2d(layers[3], layers[4], kernel_size=1)

    def forward(self, x):
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class MotionEncoder(nn.Module):
    """Correlation features + current flow -> motion features (the flow is appended)."""

    def __init__(self, corr_channels: int, corr_layers: tuple[int, ...], flow_layers: tuple[int, int], out_channels: int):
        super().__init__()
        self.convcorr1 = _conv(corr_channels, corr_layers[0], 1)
        self.convcorr2 = _conv(corr_layers[0], corr_layers[1], 3) if len(corr_layers) == 2 else nn.Identity()
        self.convflow1 = _conv(2, flow_layers[0], 7)
        self.convflow2 = _conv(flow_layers[0], flow_layers[1], 3)
        self.conv = _conv(corr_layers[-1] + flow_layers[-1], out_channels - 2, 3)

    def forward(self, flow, corr):
        corr_features = self.convcorr2(self.convcorr1(corr))
        flow_features = self.convflow2(self.convflow1(flow))
        return torch.cat((self.conv(torch.cat((corr_features, flow_features), dim=1)), flow), dim=1)


class RecurrentBlock(nn.Module):
    """One or two convolutional GRUs applied in turn (large: 1x5 then 5x1; small: 3x3)."""

    def __init__(self, inputs: int, hidden: int, kernels: tuple[tuple[int, int], ...]):
        super().__init__()
        self.convgru1 = ConvGRUCell(hidden, inputs, kernels[0])
        self.convgru2 = ConvGRUCell(hidden, inputs, kernels[1]) if len(kernels) > 1 else None

    def forward(self, hidden, x):
        hidden = self.convgru1(hidden, x)
        return hidden if self.convgru2 is None else self.convgru2(hidden, x)


class UpdateBlock(nn.Module):
    def __init__(self, config: RAFTConfig):
        super().__init__()
        corr_channels = config.corr_levels * (2 * config.corr_radius + 1) ** 2
        self.motion_encoder = MotionEncoder(
            corr_channels, config.motion_corr_layers, config.motion_flow_layers, config.motion_channels
        )
        self.recurrent_block = RecurrentBlock(
            config.motion_channels + config.context_channels, config.hidden, config.gru_kernels
        )
        self.flow_head = FlowHead(config.hidden, config.flow_head_hidden)

    def forward(self, hidden, context, corr, flow):
        motion = self.motion_encoder(flow, corr)
        hidden = self.recurrent_block(hidden, torch.cat((context, motion), dim=1))
        return hidden, self.flow_head(hidden)


class MaskPredictor(nn.Module):
    """Hidden state -> logits of the convex upsampling weights (9 neighbours x 8 x 8)."""

    # The original scales the logits by 0.25 (to damp this branch's gradients); the
    # published weights were trained with it.
    SCALE = 0.25

    def __init__(self, hidden: int):
        super().__init__()
        self.convrelu = _conv(hidden, 256, 3)
        self.conv = nn.Conv2d(256, DOWNSAMPLE * DOWNSAMPLE * 9, 1)

    def forward(self, x):
        return self.SCALE * self.conv(self.convrelu(x))


class CorrelationPyramid:
    """All-pairs correlation of two feature maps, average-pooled into ``levels`` levels,
    looked up in a ``(2r+1)²`` window around given positions."""

    def __init__(self, features1: torch.Tensor, features2: torch.Tensor, levels: int, radius: int):
        batch, channels, height, width = features1.shape
        # In float32 even under autocast, as the original does: the lookups interpolate it.
        with torch.autocast(features1.device.type, enabled=False):
            volume = torch.matmul(features1.float().flatten(2).transpose(1, 2), features2.float().flatten(2))
        volume = volume / math.sqrt(channels)
        volume = volume.reshape(batch * height * width, 1, height, width)
        self.pyramid = [volume]
        for _ in range(levels - 1):
            volume = F.avg_pool2d(volume, kernel_size=2, stride=2)
            self.pyramid.append(volume)
        self.radius = radius
        steps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=features1.device)
        # Channel order of the lookup (what the trained motion encoder expects): the x
        # offset is the slow index, the y offset the fast one.
        offset_x, offset_y = torch.meshgrid(steps, steps, indexing="ij")
        self.offsets = torch.stack((offset_x, offset_y), dim=-1).view(1, 2 * radius + 1, 2 * radius + 1, 2)

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Correlations around ``coords`` ``(B, 2, h, w)`` (pixels at 1/8): ``(B, levels·(2r+1)², h, w)``."""
        batch, _, height, width = coords.shape
        centres = coords.permute(0, 2, 3, 1).reshape(batch * height * width, 1, 1, 2)
        features = []
        for level, volume in enumerate(self.pyramid):
            sampled = sample_at_pixels(volume, centres / 2**level + self.offsets)
            features.append(sampled.view(batch, height, width, -1))
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous()


class RAFT(nn.Module):
    """RAFT with torchvision's parameter names.

    ``forward(image1, image2, iterations)`` takes ``(B, 3, H, W)`` images scaled to
    [-1, 1], ``H`` and ``W`` multiples of 8 and at least 128, and returns the flow
    ``(B, 2, H, W)`` in pixels after the last update, as a list of one; with
    ``all_predictions=True`` after every update (as torchvision returns it; the upsampling of
    the intermediate ones costs time and memory).
    """

    def __init__(self, config: RAFTConfig = RAFT_LARGE):
        super().__init__()
        self.config = config
        self.feature_encoder = FeatureEncoder(config.feature_layers, config.block, "instance")
        self.context_encoder = FeatureEncoder(config.context_layers, config.block, config.context_norm)
        self.update_block = UpdateBlock(config)
        self.mask_predictor = MaskPredictor(config.hidden) if config.convex_upsampling else None

    def forward(
        self, image1: torch.Tensor, image2: torch.Tensor, iterations: int = 12, all_predictions: bool = False
    ) -> list[torch.Tensor]:
        batch, _, height, width = image1.shape
        if height % DOWNSAMPLE or width % DOWNSAMPLE:
            raise ValueError(f"RAFT needs sizes that are multiples of {DOWNSAMPLE}, got {height}x{width}")
        if min(height, width) < DOWNSAMPLE * MIN_FEATURE_SIZE:
            raise ValueError(f"RAFT needs sizes of at least {DOWNSAMPLE * MIN_FEATURE_SIZE} px, got {height}x{width}")
        if iterations < 1:
            raise ValueError(f"RAFT needs at least one update, got iterations={iterations}")
        features1, features2 = self.feature_encoder(torch.cat((image1, image2))).chunk(2)
        pyramid = CorrelationPyramid(features1, features2, self.config.corr_levels, self.config.corr_radius)
        hidden, context = self.context_encoder(image1).split([self.config.hidden, self.config.context_channels], dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)

        grid = pixel_grid(height // DOWNSAMPLE, width // DOWNSAMPLE, image1.device).expand(batch, -1, -1, -1)
        coords = grid.clone()
        predictions = []
        for step in range(iterations):
            # As in the paper, no gradient through the lookup position of the next step.
            coords = coords.detach()
            corr = pyramid.lookup(coords)
            hidden, delta = self.update_block(hidden, context, corr, coords - grid)
            coords = coords + delta
            if all_predictions or step == iterations - 1:
                predictions.append(self._upsample(coords - grid, hidden))
        return predictions

    def _upsample(self, flow: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask_predictor is None:
            return bilinear_upsample_flow(flow, DOWNSAMPLE)
        return convex_upsample(flow, self.mask_predictor(hidden), DOWNSAMPLE)
