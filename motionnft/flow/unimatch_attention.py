"""GMFlow's attention: the feature transformer (self- and cross-attention in shifted windows),
its position embedding, and the flow propagation by self-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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


def add_position(features0, features1, splits: int):
    """Add the position embedding of one attention window, tiled over the ``splits`` x ``splits`` windows."""
    _, channels, height, width = features0.shape
    position = sine_position_embedding(height // splits, width // splits, channels, features0.device)
    position = position.repeat(1, 1, splits, splits).to(features0.dtype)
    return features0 + position, features1 + position
