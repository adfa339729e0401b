"""The GMFlow network of UniMatch (Xu et al., CVPR 2022 / TPAMI 2023), in plain torch, with the
official checkpoints' parameter names.

GMFlow extracts features at 1/8 (and 1/4) resolution with a CNN, enhances them with a
transformer (self- and cross-attention in shifted windows), matches them globally (or in a
local window at the finer scale) with a softmax over correlations, propagates the flow
with self-attention, optionally refines it with a few recurrent regression steps, and
upsamples it by a learned convex combination.

The transformer and the propagation are in ``unimatch_attention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import FlowHead, convex_upsample, gru_step
from .unimatch_attention import FeatureTransformer, FlowPropagation, add_position
from .warp import pixel_grid, warp_backward

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFINE_RADIUS = 4


@dataclass(frozen=True)
class GMFlowConfig:
    """Architecture of a GMFlow checkpoint (everything else is fixed across the releases)."""

    num_scales: int = 1
    upsample_factor: int = 8
    reg_refine: bool = False
    feature_channels: int = 128
    num_transformer_layers: int = 6
    ffn_expansion: int = 4


@dataclass(frozen=True)
class GMFlowSettings:
    """Inference settings: one entry per scale (coarse first) in the three lists.

    A radius of -1 means global (all-pairs) matching or propagation.
    """

    padding_factor: int
    attn_splits: tuple[int, ...]
    corr_radius: tuple[int, ...]
    prop_radius: tuple[int, ...]
    num_reg_refine: int = 0

    @staticmethod
    def official(config: GMFlowConfig, num_reg_refine: int | None = None) -> "GMFlowSettings":
        """The settings the UniMatch authors use with ``config`` (and MotionEdit with scale 2 + refinement)."""
        refine = (num_reg_refine if num_reg_refine is not None else 6) if config.reg_refine else 0
        if config.num_scales == 1:
            return GMFlowSettings(16, (2,), (-1,), (-1,), refine)
        if config.num_scales == 2:
            return GMFlowSettings(32, (2, 8), (-1, 4), (-1, 1), refine)
        raise ValueError(f"GMFlow with {config.num_scales} scales has no published settings")


class ResidualBlock(nn.Module):
    """3x3 conv-norm-ReLU twice (instance norm, no conv bias) with a projected shortcut when needed."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(cout)
        self.norm2 = nn.InstanceNorm2d(cout)
        if stride != 1 or cin != cout:
            self.norm3 = nn.InstanceNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), self.norm3)
        else:
            self.downsample = None

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class Backbone(nn.Module):
    """Features at 1/8 (one scale) or at 1/8 and 1/4 (two scales), coarse first."""

    def __init__(self, channels: int, num_scales: int):
        super().__init__()
        if num_scales not in (1, 2):
            raise ValueError(f"GMFlow supports 1 or 2 scales, got {num_scales}")
        self.num_scales = num_scales
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, 1), ResidualBlock(64, 64, 1))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, 2), ResidualBlock(96, 96, 1))
        last_stride = 2 if num_scales == 1 else 1
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, last_stride), ResidualBlock(128, 128, 1))
        self.conv2 = nn.Conv2d(128, channels, 1)
        if num_scales == 2:
            # One 3x3 kernel applied at stride 1 (1/4) and stride 2 (1/8).
            self.trident_conv = _SharedStrideConv(channels)

    def forward(self, x) -> list[torch.Tensor]:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.conv2(self.layer3(self.layer2(self.layer1(x))))
        if self.num_scales == 1:
            return [x]
        fine = F.conv2d(x, self.trident_conv.weight, stride=1, padding=1)
        coarse = F.conv2d(x, self.trident_conv.weight, stride=2, padding=1)
        return [coarse, fine]


class _SharedStrideConv(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")


def _window_offsets(radius: int) -> list[tuple[int, int]]:
    """``(dx, dy)`` of a ``(2r+1)²`` window, y the slow index (the order the refiner was trained with)."""
    steps = range(-radius, radius + 1)
    return [(dx, dy) for dy in steps for dx in steps]


def _dot(features0: torch.Tensor, features1: torch.Tensor) -> torch.Tensor:
    """Scaled dot product over channels: ``(B, C, H, W)`` x2 -> ``(B, H, W)``."""
    return (features0 * features1).sum(dim=1) / math.sqrt(features0.shape[1])


def global_matching(features0, features1) -> torch.Tensor:
    """Flow from a softmax over the correlations of each pixel with every pixel of image 1."""
    batch, channels, height, width = features0.shape
    grid = pixel_grid(height, width, features0.device).flatten(2).transpose(1, 2)  # (1, N, 2)
    corr = torch.matmul(features0.flatten(2).transpose(1, 2), features1.flatten(2)) / math.sqrt(channels)
    match = torch.matmul(corr.softmax(dim=-1), grid.to(corr.dtype))  # expected position, (B, N, 2)
    return (match - grid).transpose(1, 2).reshape(batch, 2, height, width)


def local_matching(features0, features1, radius: int) -> torch.Tensor:
    """As ``global_matching`` within a ``(2r+1)²`` window; positions outside the image are excluded.

    The window's correlations are computed one offset at a time (a shifted copy of image 1's
    features), never holding the ``C x (2r+1)²`` samples of every pixel at once.
    """
    _, _, height, width = features0.shape
    padded = F.pad(features1, (radius, radius, radius, radius))
    grid = pixel_grid(height, width, features0.device)  # (1, 2, H, W)
    corr, offsets, inside = [], [], []
    for dx, dy in _window_offsets(radius):
        shifted = padded[:, :, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
        corr.append(_dot(features0, shifted))
        offsets.append((dx, dy))
        x, y = grid[0, 0] + dx, grid[0, 1] + dy
        inside.append((x >= 0) & (x < width) & (y >= 0) & (y < height))
    corr = torch.stack(corr, dim=1).masked_fill(~torch.stack(inside)[None], -1e9)  # (B, K, H, W)
    offsets = torch.tensor(offsets, dtype=corr.dtype, device=corr.device)  # (K, 2)
    return torch.einsum("bkhw,kc->bchw", corr.softmax(dim=1), offsets)


def correlation_around_flow(features0, features1, flow, radius: int) -> torch.Tensor:
    """Correlations of each pixel with image 1 in a window around where ``flow`` sends it: ``(B, (2r+1)², H, W)``."""
    corr = []
    for dx, dy in _window_offsets(radius):
        offset = flow.new_tensor([dx, dy]).view(1, 2, 1, 1)
        corr.append(_dot(features0, warp_backward(features1, flow + offset, padding_mode="zeros")))
    return torch.stack(corr, dim=1)


class MotionEncoder(nn.Module):
    def __init__(self, corr_channels: int):
        super().__init__()
        self.convc1 = nn.Conv2d(corr_channels, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 192, 128 - 2, 3, padding=1)

    def forward(self, flow, corr):
        corr_features = F.relu(self.convc2(F.relu(self.convc1(corr))))
        flow_features = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat((F.relu(self.conv(torch.cat((corr_features, flow_features), dim=1))), flow), dim=1)


class SeparableGRU(nn.Module):
    """A 1x5 then a 5x1 convolutional GRU update."""

    def __init__(self, hidden: int, inputs: int):
        super().__init__()
        for suffix, kernel, padding in (("1", (1, 5), (0, 2)), ("2", (5, 1), (2, 0))):
            for gate in "zrq":
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding))

    def forward(self, hidden, inputs):
        hidden = gru_step(self.convz1, self.convr1, self.convq1, hidden, inputs)
        return gru_step(self.convz2, self.convr2, self.convq2, hidden, inputs)


class RegressionRefiner(nn.Module):
    """One recurrent step: correlations around the current flow -> a residual flow and upsampling logits."""

    def __init__(self, upsample_factor: int, hidden: int = 128, context: int = 128):
        super().__init__()
        self.encoder = MotionEncoder((2 * REFINE_RADIUS + 1) ** 2)
        self.gru = SeparableGRU(hidden, context + hidden)
        self.flow_head = FlowHead(hidden, 256)
        self.mask = nn.Sequential(
            nn.Conv2d(hidden, 256, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(256, upsample_factor**2 * 9, 1)
        )

    def forward(self, hidden, context, corr, flow):
        hidden = self.gru(hidden, torch.cat((context, self.encoder(flow, corr)), dim=1))
        return hidden, self.mask(hidden), self.flow_head(hidden)


class GMFlow(nn.Module):
    """GMFlow / UniMatch (flow task) with the official parameter names.

    ``forward(image1, image2, settings)`` takes ``(B, 3, H, W)`` images on a 0–255 scale,
    ``H`` and ``W`` multiples of ``settings.padding_factor``, and returns the flow
    ``(B, 2, H, W)`` in pixels.
    """

    def __init__(self, config: GMFlowConfig = GMFlowConfig()):
        super().__init__()
        self.config = config
        channels = config.feature_channels
        self.backbone = Backbone(channels, config.num_scales)
        self.transformer = FeatureTransformer(channels, config.num_transformer_layers, config.ffn_expansion)
        self.feature_flow_attn = FlowPropagation(channels)
        if config.reg_refine:
            self.refine_proj = nn.Conv2d(channels, 256, 1)
            self.refine = RegressionRefiner(config.upsample_factor)
        else:
            self.upsampler = nn.Sequential(
                nn.Conv2d(2 + channels, 256, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(256, config.upsample_factor**2 * 9, 1),
            )

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, settings: GMFlowSettings) -> torch.Tensor:
        config = self.config
        for name, values in (("attn_splits", settings.attn_splits), ("corr_radius", settings.corr_radius),
                             ("prop_radius", settings.prop_radius)):
            if len(values) != config.num_scales:
                raise ValueError(f"{name} needs {config.num_scales} entries (one per scale), got {list(values)}")
        if config.reg_refine and settings.num_reg_refine < 1:
            raise ValueError("a GMFlow with regression refinement needs num_reg_refine >= 1")
        mean = image1.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = image1.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        images = (torch.cat((image1, image2)) / 255.0 - mean) / std
        levels = [level.chunk(2) for level in self.backbone(images)]

        flow = None
        for scale, (features0, features1) in enumerate(levels):
            raw0, raw1 = features0, features1
            if flow is not None:
                # The coarse flow seeds the finer scale (no gradient through it, as in the reference).
                flow = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True).detach() * 2
                features1 = warp_backward(features1, flow, padding_mode="zeros")
            splits = settings.attn_splits[scale]
            features0, features1 = add_position(features0, features1, splits)
            features0, features1 = self.transformer(features0, features1, splits)
            radius = settings.corr_radius[scale]
            with _full_precision(features0):
                # Softmax matching turns correlations into positions: in bf16/fp16 their
                # rounding moves the result by pixels, so it runs in float32.
                f0, f1 = features0.float(), features1.float()
                matched = global_matching(f0, f1) if radius < 0 else local_matching(f0, f1, radius)
            flow = matched if flow is None else flow + matched
            flow = self.feature_flow_attn(features0, flow.detach(), settings.prop_radius[scale])

        if not config.reg_refine:
            logits = self.upsampler(torch.cat((flow, features0), dim=1))
            return convex_upsample(flow, logits, config.upsample_factor)
        hidden, context = self.refine_proj(features0).chunk(2, dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        for _ in range(settings.num_reg_refine):
            flow = flow.detach()
            with _full_precision(raw0):
                corr = correlation_around_flow(raw0.float(), raw1.float(), flow, REFINE_RADIUS)
            # Each step restarts from the projected features (the reference does the same).
            _, logits, residual = self.refine(hidden, context, corr, flow)
            flow = flow + residual
        return convex_upsample(flow, logits, config.upsample_factor)


def _full_precision(like: torch.Tensor):
    """Autocast off (float32) on ``like``'s device."""
    return torch.autocast(like.device.type, enabled=False)
