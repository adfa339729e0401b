"""The motion-flow optimisation module: Swin-Transformer blocks that refine TPSMM's coarse flow.

Our reading of the feature-decoupling paper (no code was released): the dense motion
network's deformation (the *coarse flow*) is refined by Swin-Transformer blocks working on
one token per pixel of the flow's grid (64 x 64 for 256² frames), with two window sizes (8
and 4), each a pair of blocks with regular then shifted windows (shift = half a window, with
Swin's attention mask so that tokens rolled across the border do not attend to each other),
and a fusion block that combines the two scales. The module predicts a residual correction
of the flow; its output layer starts at zero, so an untrained module is the identity and
the paper model starts as TPSMM.

Input tokens: the coarse displacement (deformation minus the identity grid, 2 channels),
the dense motion hourglass's last feature map (it has seen both frames' keypoints) and the
source downsampled to the flow's grid (3 channels). The occlusion masks are not changed.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import coordinate_grid


@dataclass(frozen=True)
class MotionOptimizationConfig:
    """Sizes of the Swin refiner.

    Attributes:
        embed_dim: token width.
        depth: Swin blocks per window size (even: regular and shifted windows alternate).
        heads: attention heads (must divide ``embed_dim``).
        window_sizes: the window sizes of the branches, fused at the end (paper: 8 and 4).
        mlp_ratio: hidden width of each block's MLP over ``embed_dim``.
    """

    embed_dim: int = 64
    depth: int = 2
    heads: int = 4
    window_sizes: tuple[int, ...] = (8, 4)
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.depth < 1 or self.heads < 1 or self.embed_dim % self.heads:
            raise ValueError(f"motion optimisation: embed_dim must be a positive multiple of heads, got {self}")
        if not self.window_sizes or min(self.window_sizes) < 1:
            raise ValueError(f"motion optimisation: window sizes must be positive, got {self.window_sizes}")

    @classmethod
    def tiny(cls) -> "MotionOptimizationConfig":
        return cls(embed_dim=16, depth=2, heads=2)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``window`` -> ``(B·nW, window², C)`` tokens per window."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B·nW, window², C)`` -> ``(B, H, W, C)``."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


@functools.lru_cache(maxsize=16)
def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Swin's mask for windows after a cyclic shift by ``shift``: ``(nW, window², window²)``,
    0 where two tokens come from the same region of the unshifted map and -inf elsewhere
    (the rolled border strips must not attend to the far side of the image). Cached: it depends
    on the sizes alone and every shifted block of every frame asks for the same one."""
    regions = torch.zeros(1, height, width, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            regions[:, rows, cols, :] = label
            label += 1
    labels = window_partition(regions, window)[..., 0]  # (nW, window²)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with Swin's learned relative position bias."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.position_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.position_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, w², w²) in [0, 2w-2]
        self.register_buffer("bias_index", relative[0] * (2 * window - 1) + relative[1], persistent=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B·nW, w², C)`` -> same shape; ``mask`` ``(nW, w², w²)`` additive (shifted windows)."""
        windows, count, dim = tokens.shape
        q, k, v = self.qkv(tokens).view(windows, count, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias[self.bias_index.view(-1)].view(count, count, -1).permute(2, 0, 1)
        bias = bias[None].expand(windows, -1, -1, -1)
        if mask is not None:
            bias = (bias.view(-1, mask.shape[0], self.heads, count, count) + mask[None, :, None]).view(
                windows, self.heads, count, count)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(windows, count, dim))


class SwinBlock(nn.Module):
    """LayerNorm, (shifted-)window attention, residual; LayerNorm, MLP, residual.

    Maps whose sides are not multiples of the window are zero-padded (as Swin does); a map
    no larger than one window is never shifted (nothing would wrap around).
    """

    def __init__(self, dim: int, heads: int, window: int, shifted: bool, mlp_ratio: float = 2.0):
        super().__init__()
        self.window, self.shifted = window, shifted
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = WindowAttention(dim, heads, window)
        hidden = max(int(dim * mlp_ratio), 1)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        height, width = x.shape[1:3]
        window = self.window
        pad_h, pad_w = -height % window, -width % window
        shortcut = x
        out = F.pad(self.norm1(x), (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        shift = window // 2 if self.shifted and min(padded_h, padded_w) > window else 0
        mask = None
        if shift:
            out = torch.roll(out, (-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_h, padded_w, window, shift, x.device).to(x.dtype)
        out = window_reverse(self.attention(window_partition(out, window), mask), window, padded_h, padded_w)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        x = shortcut + out[:, :height, :width]
        return x + self.mlp(self.norm2(x))


class FusionBlock(nn.Module):
    """Combine the branches of each window size: concatenate, project, and mix neighbours
    with a depthwise 3 x 3 convolution (the branches see different context extents)."""

    def __init__(self, dim: int, branches: int):
        super().__init__()
        self.project = nn.Linear(dim * branches, dim)
        self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, branches: list[torch.Tensor]) -> torch.Tensor:
        """``n x (B, H, W, C)`` -> ``(B, H, W, C)``."""
        out = self.project(torch.cat(branches, dim=-1))
        out = out + self.local(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(out)


class MotionOptimizer(nn.Module):
    """Coarse deformation + context -> refined deformation.

    Args:
        config: sizes (:class:`MotionOptimizationConfig`).
        context_channels: channels of the context map (the hourglass's last features).
        num_channels: image channels of the source.
    """

    def __init__(self, config: MotionOptimizationConfig, context_channels: int, num_channels: int = 3):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.embed = nn.Conv2d(2 + context_channels + num_channels, dim, kernel_size=1)
        self.branches = nn.ModuleList(
            nn.ModuleList(SwinBlock(dim, config.heads, window, shifted=i % 2 == 1, mlp_ratio=config.mlp_ratio)
                          for i in range(config.depth))
            for window in config.window_sizes)
        self.fusion = FusionBlock(dim, len(config.window_sizes))
        self.head = nn.Linear(dim, 2)
        # Zero-initialised correction: an untrained module leaves TPSMM's flow unchanged.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, deformation: torch.Tensor, context: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """
        Args:
            deformation: ``(B, h, w, 2)`` the coarse normalised sampling grid (``align_corners=True``).
            context: ``(B, C_ctx, h, w)`` features at the flow's grid.
            source: ``(B, C, H, W)`` the source frame in [0, 1] (resized to ``h x w`` here).
        Returns:
            ``(B, h, w, 2)`` the refined grid, ``deformation + correction``.
        """
        height, width = deformation.shape[1:3]
        identity = coordinate_grid(height, width, deformation.device, deformation.dtype)
        displacement = (deformation - identity).permute(0, 3, 1, 2)
        small = F.interpolate(source, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        tokens = self.embed(torch.cat([displacement, context, small], dim=1)).permute(0, 2, 3, 1)
        outs = []
        for blocks in self.branches:
            out = tokens
            for block in blocks:
                out = block(out)
            outs.append(out)
        return deformation + self.head(self.fusion(outs))
