"""UniMatch's flow model, GMFlow (Xu et al., CVPR 2022 / TPAMI 2023), in plain torch.

The module tree uses the parameter names of the official UniMatch checkpoints
(``gmflow-scale1-*.pth``, ``gmflow-scale2-*.pth``, ``gmflow-scale2-regrefine6-*.pth``), so
they load as they are; the architecture (1 or 2 scales, with or without local regression
refinement, upsampling factor) is read from the checkpoint itself.

GMFlow extracts features at 1/8 (and 1/4) resolution with a CNN, enhances them with a
transformer (self- and cross-attention in shifted windows), matches them globally (or in a
local window at the finer scale) with a softmax over correlations, propagates the flow
with self-attention, optionally refines it with a few recurrent regression steps, and
upsamples it by a learned convex combination.

``UniMatchFlow`` runs it with the official inference settings of each architecture; for
the 2-scale model with 6 refinements (the one MotionEdit's reward uses,
``gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth``) these are MotionEdit's:
images on a 0–255 scale, zero-padded at the bottom/right to a multiple of 32, attention
splits [2, 8], correlation radius [-1, 4], propagation radius [-1, 1], 6 refinements,
no bidirectional pass.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import PRECISIONS, FlowBackend, register_backend
from .layers import FlowHead, convex_upsample, gru_step
from .learned import TorchFlowEstimator, check_state_dict_keys, state_dict_from
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


# ----------------------------------------------------------------------------------------
# Network


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


def _to_windows(x: torch.Tensor, splits: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B·s², H/s·W/s, C)``: the s×s windows, row-major."""
    batch, height, width, channels = x.shape
    x = x.view(batch, splits, height // splits, splits, width // splits, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch * splits * splits, -1, channels)


def _from_windows(x: torch.Tensor, splits: int, height: int, width: int) -> torch.Tensor:
    """Inverse of ``_to_windows``: ``(B·s², h·w, C)`` -> ``(B, H, W, C)``."""
    channels = x.shape[-1]
    batch = x.shape[0] // (splits * splits)
    x = x.view(batch, splits, splits, height // splits, width // splits, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def shifted_window_mask(height: int, width: int, splits: int, device=None) -> torch.Tensor:
    """Additive attention mask ``(s², n, n)`` for windows over a map rolled by half a window.

    After the roll, a window at the bottom/right edge holds pixels from up to four regions
    that were not neighbours; pairs from different regions get -100 (Swin's mask).
    """
    window_h, window_w = height // splits, width // splits
    shift_h, shift_w = window_h // 2, window_w // 2

    def regions(size: int, window: int, shift: int) -> torch.Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    label = regions(height, window_h, shift_h)[:, None] * 3 + regions(width, window_w, shift_w)[None, :]
    windows = _to_windows(label[None, :, :, None].float(), splits)[..., 0]  # (s², n)
    different = windows[:, :, None] != windows[:, None, :]
    return different.float() * -100.0


def _attention(query, key, value, mask=None):
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(query.shape[-1])
    if mask is not None:
        scores = scores + mask
    # The softmax in float32 whatever the compute precision (CUDA autocast does this, CPU
    # autocast would not): its weights decide which pixels match.
    return torch.matmul(scores.float().softmax(dim=-1).to(value.dtype), value)


class TransformerLayer(nn.Module):
    """Single-head attention of ``source`` to ``target`` (+ an FFN on ``[source, message]``)."""

    def __init__(self, channels: int, ffn: bool, expansion: int):
        super().__init__()
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels, bias=False)
        self.merge = nn.Linear(channels, channels, bias=False)
        self.norm1 = nn.LayerNorm(channels)
        self.has_ffn = ffn
        if ffn:
            self.mlp = nn.Sequential(
                nn.Linear(2 * channels, 2 * channels * expansion, bias=False),
                nn.GELU(),
                nn.Linear(2 * channels * expansion, channels, bias=False),
            )
            self.norm2 = nn.LayerNorm(channels)

    def forward(self, source, target, height: int, width: int, splits: int, shift: bool, mask):
        """``source``, ``target``: ``(B, H·W, C)`` tokens of an ``height`` x ``width`` map."""
        batch, _, channels = source.shape
        query, key, value = self.q_proj(source), self.k_proj(target), self.v_proj(target)
        if splits > 1:
            maps = [t.view(batch, height, width, channels) for t in (query, key, value)]
            if shift:
                roll = (-(height // splits // 2), -(width // splits // 2))
                maps = [torch.roll(t, shifts=roll, dims=(1, 2)) for t in maps]
            query, key, value = (_to_windows(t, splits) for t in maps)
            window_mask = mask.repeat(batch, 1, 1) if shift else None
            message = _from_windows(_attention(query, key, value, window_mask), splits, height, width)
            if shift:
                message = torch.roll(message, shifts=(height // splits // 2, width // splits // 2), dims=(1, 2))
            message = message.reshape(batch, height * width, channels)
        else:
            message = _attention(query, key, value)
        message = self.norm1(self.merge(message))
        if self.has_ffn:
            message = self.norm2(self.mlp(torch.cat((source, message), dim=-1)))
        return source + message


class TransformerBlock(nn.Module):
    def __init__(self, channels: int, expansion: int):
        super().__init__()
        self.self_attn = TransformerLayer(channels, ffn=False, expansion=expansion)
        self.cross_attn_ffn = TransformerLayer(channels, ffn=True, expansion=expansion)

    def forward(self, source, target, height, width, splits, shift, mask):
        source = self.self_attn(source, source, height, width, splits, shift, mask)
        return self.cross_attn_ffn(source, target, height, width, splits, shift, mask)


class FeatureTransformer(nn.Module):
    def __init__(self, channels: int, layers: int, expansion: int):
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(channels, expansion) for _ in range(layers))

    def forward(self, features0, features1, splits: int):
        batch, channels, height, width = features0.shape
        tokens0 = features0.flatten(2).transpose(1, 2)
        tokens1 = features1.flatten(2).transpose(1, 2)
        mask = shifted_window_mask(height, width, splits, features0.device) if splits > 1 else None
        # Both directions in one batch: image 0 attends to image 1 and vice versa.
        source = torch.cat((tokens0, tokens1))
        target = torch.cat((tokens1, tokens0))
        for index, layer in enumerate(self.layers):
            shift = splits > 1 and index % 2 == 1
            source = layer(source, target, height, width, splits, shift, mask)
            target = torch.cat(source.chunk(2)[::-1])
        out0, out1 = source.chunk(2)
        to_map = lambda t: t.transpose(1, 2).reshape(batch, channels, height, width)  # noqa: E731
        return to_map(out0), to_map(out1)


class FlowPropagation(nn.Module):
    """Smooths a flow by self-attention over image-0 features (globally or in a window)."""

    def __init__(self, channels: int):
        super().__init__()
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)

    def forward(self, features, flow, radius: int):
        batch, channels, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)
        query = self.q_proj(tokens)
        if radius < 0:
            # The released weights were trained with the key projected from the projected
            # query (k_proj(q_proj(x))), not from the features.
            key = self.k_proj(query)
            values = flow.flatten(2).transpose(1, 2)
            out = _attention(query, key, values.to(query.dtype))
            return out.transpose(1, 2).reshape(batch, 2, height, width)
        size = 2 * radius + 1
        key = self.k_proj(tokens).transpose(1, 2).reshape(batch, channels, height, width)
        # Zero padding: border pixels also attend to zero keys carrying zero flow.
        key_windows = F.unfold(key, size, padding=radius).view(batch, channels, size * size, height * width)
        flow_windows = F.unfold(flow.to(key.dtype), size, padding=radius).view(batch, 2, size * size, height * width)
        scores = torch.einsum("bnc,bckn->bnk", query, key_windows) / math.sqrt(channels)
        out = torch.einsum("bnk,bckn->bcn", scores.float().softmax(dim=-1).to(flow_windows.dtype), flow_windows)
        return out.reshape(batch, 2, height, width)


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
            features0, features1 = _add_position(features0, features1, splits)
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


def sine_position_embedding(height: int, width: int, channels: int, device=None) -> torch.Tensor:
    """``(1, C, H, W)`` DETR-style normalised sine/cosine embedding (y channels, then x channels)."""
    features = channels // 2
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + 1e-6) * 2 * math.pi
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + 1e-6) * 2 * math.pi
    index = torch.arange(features, dtype=torch.float32, device=device)
    frequencies = 10000 ** (2 * torch.div(index, 2, rounding_mode="floor") / features)

    def encode(position: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, features), sin/cos interleaved
        angles = position[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(ys)[:, None, :].expand(height, width, features)
    pos_x = encode(xs)[None, :, :].expand(height, width, features)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)[None]


def _add_position(features0, features1, splits: int):
    """Add the position embedding of one attention window, tiled over the ``splits`` x ``splits`` windows."""
    _, channels, height, width = features0.shape
    position = sine_position_embedding(height // splits, width // splits, channels, features0.device)
    position = position.repeat(1, 1, splits, splits).to(features0.dtype)
    return features0 + position, features1 + position


# ----------------------------------------------------------------------------------------
# Checkpoints and the estimator


def gmflow_config_of(state_dict: Mapping[str, torch.Tensor]) -> GMFlowConfig:
    """The architecture stored in an official UniMatch flow checkpoint."""
    if "backbone.conv1.weight" not in state_dict or "transformer.layers.0.self_attn.q_proj.weight" not in state_dict:
        raise ValueError("not a UniMatch/GMFlow checkpoint (no backbone.conv1.weight / transformer.layers.0...)")
    num_scales = 2 if "backbone.trident_conv.weight" in state_dict else 1
    reg_refine = any(k.startswith("refine.") for k in state_dict)
    mask_key = "refine.mask.2.weight" if reg_refine else "upsampler.2.weight"
    if mask_key not in state_dict:
        raise ValueError(f"UniMatch checkpoint without {mask_key}: cannot tell its upsampling factor")
    factor = math.isqrt(state_dict[mask_key].shape[0] // 9)
    layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.layers.")})
    channels = int(state_dict["backbone.conv2.weight"].shape[0])
    return GMFlowConfig(num_scales=num_scales, upsample_factor=factor, reg_refine=reg_refine,
                        feature_channels=channels, num_transformer_layers=layers)


def refinements_in_name(path: str | os.PathLike) -> int | None:
    """The N of ``regrefineN`` in a checkpoint's file name, if any."""
    match = re.search(r"regrefine(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def pad_to_multiple(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom and right up to multiples of ``factor`` (MotionEdit's padding)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % factor, (-width) % factor
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


class UniMatchFlow(TorchFlowEstimator):
    """GMFlow (UniMatch's flow model) as a ``FlowEstimator``.

    Images in [0, 1] are scaled to 0–255, zero-padded at the bottom/right to a multiple of
    the settings' padding factor, and the flow is cropped back (MotionEdit's procedure).

    Args:
        weights: an official checkpoint (path or state dict); the architecture is read from it.
        settings: inference settings; default ``GMFlowSettings.official`` for the
            architecture, with the refinement count from the file name (``regrefine6``)
            or ``num_reg_refine``.
        precision, device, max_batch: see ``TorchFlowEstimator``.
    """

    name = "unimatch"

    def __init__(
        self,
        weights: str | os.PathLike | Mapping[str, torch.Tensor],
        settings: GMFlowSettings | None = None,
        num_reg_refine: int | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        max_batch: int = 8,
        preset: str = "default",
    ):
        if preset not in UNIMATCH_PRESETS:
            raise ValueError(f"UniMatch preset {preset!r}: expected one of {', '.join(UNIMATCH_PRESETS)}")
        origin = "the given state dict" if isinstance(weights, Mapping) else str(weights)
        state_dict = state_dict_from(weights)
        config = gmflow_config_of(state_dict)
        model = GMFlow(config)
        check_state_dict_keys(model, state_dict, origin)
        super().__init__(model, precision=precision, device=device, max_batch=max_batch)
        if num_reg_refine is None and not isinstance(weights, Mapping):
            num_reg_refine = refinements_in_name(weights)
        self.settings = settings if settings is not None else GMFlowSettings.official(config, num_reg_refine)
        self.config = config
        self.preset = preset
        self.weights = None if isinstance(weights, Mapping) else Path(weights)

    def run_network(self, image1, image2):
        height, width = image1.shape[-2:]
        pair = pad_to_multiple(torch.cat((image1, image2)) * 255.0, self.settings.padding_factor)
        first, second = pair.chunk(2)
        flow = self.model(first, second, self.settings)
        return flow[:, :, :height, :width].float()

    def __repr__(self) -> str:
        source = self.weights.name if self.weights is not None else "state dict"
        c, s = self.config, self.settings
        return (
            f"UniMatchFlow({source}, scales={c.num_scales}, refinements={s.num_reg_refine}, "
            f"splits={list(s.attn_splits)}, corr_radius={list(s.corr_radius)}, "
            f"prop_radius={list(s.prop_radius)}, padding={s.padding_factor}, precision={self.precision!r})"
        )


UNIMATCH_PRESETS = ("default",)

UNIMATCH_FILES = (
    "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth",
    "gmflow-scale2-regrefine6-things-776ed612.pth",
    "gmflow-scale2-regrefine6-sintelft-6e39e2b9.pth",
    "gmflow-scale2-regrefine6-kitti15-25b554d7.pth",
    "gmflow-scale2-mixdata-train320x576-9ff1c094.pth",
    "gmflow-scale2-things-36579974.pth",
    "gmflow-scale2-sintel-3ed1cf48.pth",
    "gmflow-scale1-mixdata-train320x576-4c3a6e9a.pth",
    "gmflow-scale1-things-e9887eda.pth",
)
"""File names the unimatch backend accepts unasked, preferred first: MotionEdit's checkpoint first."""


def _build(preset: str, weights, precision: str = "fp32", device=None) -> UniMatchFlow:
    return UniMatchFlow(weights, preset=preset, precision=precision, device=device)


register_backend(
    FlowBackend(
        name="unimatch",
        factory=_build,
        presets=UNIMATCH_PRESETS,
        default_preset="default",
        needs_weights=True,
        description="UniMatch GMFlow (4.7-7.4 M parameters), the flow of MotionEdit's reward",
        weight_files=UNIMATCH_FILES,
        precisions=PRECISIONS,
    )
)
