"""FlowDiffusion's conditions: image latents from any codec, the flow at latent resolution.

A codec is anything with ``encode(images (B, 3, H, W) in [0, 1]) -> latents (B, 4, h, w)`` and
``decode(latents) -> images in [0, 1]``. Two are here: :class:`SDVAECodec` wraps a diffusers
``AutoencoderKL`` the way SD 1.5 uses it, and :class:`PooledRGBCodec` is weight-free, for the
tiny model and the CPU benchmark (no VAE weights exist on these machines).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..flow.warp import resize_flow
from .flowdiffusion import LATENT_CHANNELS

SD15_LATENT_SCALE = 0.18215
"""SD 1.5's VAE scaling factor: latents times this have about unit variance."""


class Codec(Protocol):
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class SDVAECodec:
    """A diffusers ``AutoencoderKL`` as SD 1.5 uses it: posterior mode times ``scale``, images in [-1, 1]."""

    def __init__(self, vae, scale: float | None = None):
        self.vae = vae
        self.scale = float(scale if scale is not None else getattr(vae.config, "scaling_factor", SD15_LATENT_SCALE))
        if vae.config.latent_channels != LATENT_CHANNELS:
            raise ValueError(f"vae: expected {LATENT_CHANNELS} latent channels, got {vae.config.latent_channels}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents on the VAE's device and in its dtype (the trainer's images come from the CPU)."""
        parameter = next(self.vae.parameters())
        images = images.to(parameter.device, parameter.dtype)
        return self.vae.encode(images * 2 - 1).latent_dist.mode() * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        parameter = next(self.vae.parameters())
        latents = latents.to(parameter.device, parameter.dtype)
        return ((self.vae.decode(latents / self.scale).sample + 1) / 2).clamp(0, 1)


class ChannelsLastVAECodec:
    """A VAE called the way ComfyUI calls one: ``encode(images (B, H, W, 3) in [0, 1]) -> raw latents
    (B, 4, h, w)`` and ``decode(raw latents) -> (B, H, W, 3) in [0, 1]`` (e.g. ComfyUI's ``VAE``
    object's bound methods), with SD 1.5's latents times ``scale`` (0.18215) as FlowDiffusion reads
    them. Results come back on the input's device.
    """

    def __init__(self, encode, decode, scale: float = SD15_LATENT_SCALE):
        self._encode, self._decode, self.scale = encode, decode, float(scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        latents = self._encode(images.movedim(1, -1).float().contiguous())
        return latents.to(images.device).float() * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self._decode((latents.float() / self.scale))
        if images.ndim == 5:  # a video VAE's (B, T, H, W, 3): one frame
            images = images[:, 0]
        return images.movedim(-1, 1).to(latents.device).float().clamp(0, 1)


class PooledRGBCodec:
    """Weight-free 4-channel codec: ``factor x factor`` average pooling of RGB in [-1, 1], plus
    their mean (the grey level) as a 4th channel so the latent has SD's 4 channels.

    Decoding upsamples the three colour channels bilinearly (the 4th is redundant and
    ignored), so detail finer than ``factor`` pixels is lost: compare results with
    ``decode(encode(target))``, the best any model on this codec can do. ``scale`` multiplies
    the latents, like SD's 0.18215, towards unit variance: the noise schedule assumes it, and
    the synthetic scenes' [-1, 1] pixels have a standard deviation of about 0.4.
    """

    def __init__(self, factor: int = 2, scale: float = 1.0):
        if factor < 1 or scale <= 0:
            raise ValueError(f"factor, scale: expected >= 1 and > 0, got {factor}, {scale}")
        self.scale_factor, self.scale = factor, float(scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        rgb = F.avg_pool2d(images, self.scale_factor) * 2 - 1
        return torch.cat((rgb, rgb.mean(1, keepdim=True)), dim=1) * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = (latents[:, :3] / self.scale + 1) / 2
        if self.scale_factor > 1:
            images = F.interpolate(images, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return images.clamp(0, 1)


def encode_images(codec: Codec, images: torch.Tensor) -> torch.Tensor:
    """Latents ``(B, 4, h, w)`` of images ``(B, 3, H, W)`` in [0, 1], checked."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    latents = codec.encode(images)
    if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"codec.encode returned {tuple(latents.shape)}; FlowDiffusion needs "
                         f"(B, {LATENT_CHANNELS}, h, w)")
    return latents


def flow_condition(flow: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """The flow as FlowDiffusion reads it: ``(B, 2, h, w)``, a fraction of the image size.

    Args:
        flow: ``(B, 2, H, W)`` in pixels of the source image (x right, y down).
        latent_size: ``(h, w)``.
    Returns:
        ``resize_flow(flow, (h, w)) / (w, h)``: x as a fraction of the width, y of the height
        (the same numbers as ``flow / (W, H)`` sampled at latent resolution).

    >>> flow_condition(torch.full((1, 2, 64, 64), 8.0), (32, 32))[0, :, 0, 0]
    tensor([0.1250, 0.1250])
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow: expected (B, 2, H, W) in pixels, got {tuple(flow.shape)}")
    height, width = latent_size
    resized = resize_flow(flow, (height, width))
    return resized / torch.tensor([width, height], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)


def conditions(codec: Codec, images: torch.Tensor, flows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image latents ``(B, 4, h, w)``, flow condition ``(B, 2, h, w)``) of source images and
    their flows ``(B, 2, H, W)`` in pixels (a batch of 1 on either side broadcasts)."""
    if flows.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"flow is {tuple(flows.shape[-2:])} but the image is {tuple(images.shape[-2:])} (H, W): a "
                         "flow describes the pixels of its source image")
    latents = encode_images(codec, images)
    flow = flow_condition(flows.to(latents.dtype), tuple(latents.shape[-2:]))
    batch = max(latents.shape[0], flow.shape[0])
    return latents.expand(batch, -1, -1, -1), flow.expand(batch, -1, -1, -1)
