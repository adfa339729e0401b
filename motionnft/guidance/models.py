"""Motion Guidance for this project's :class:`~motionnft.models.base.EditModel` adapters.

An ``EditModel`` (FLUX.1 Kontext, Qwen-Image-Edit, their tiny builds) works on packed
latent tokens ``(B, N, C)`` and predicts the flow-matching velocity. These helpers give
the guidance loop what it needs from one: a denoiser bound to a condition, a
*differentiable* decoder (``EditModel.decode_tokens`` runs under ``no_grad``), the source
as tokens, an edit mask in the token layout, and :func:`guided_edit`, the whole edit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.base import Condition, EditModel, unpack_latents
from .config import GuidanceConfig
from .energy import FlowFn, MotionEnergy
from .sampler import GuidedSample, guided_sample_flow
from .step import DecodeFn, DenoiseFn


def velocity_fn(model: EditModel, condition: Condition) -> DenoiseFn:
    """``velocity(x (B, N, C), t (B,)) -> (B, N, C)``: ``model.velocity`` bound to ``condition``
    (a condition of batch 1 is repeated to the latents' batch)."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = condition if condition.batch_size == x.shape[0] else condition.repeat(x.shape[0])
        return model.velocity(x, t, cond)

    return velocity


def token_decoder(model: EditModel, size: tuple[int, int]) -> DecodeFn:
    """Packed latents ``(B, N, C)`` -> images ``(B, 3, H, W)`` in [0, 1] at ``size``, differentiable
    (the model's codec, without ``decode_tokens``' ``no_grad``)."""
    height, width = model.latent_size(size)

    def decode(tokens: torch.Tensor) -> torch.Tensor:
        latents = unpack_latents(tokens.to(model.device), height, width)
        return model.codec.decode(latents).float()

    return decode


def source_tokens(model: EditModel, source: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The source image ``(1 or B, 3, H, W)`` in [0, 1] (already at ``size``) as packed latents ``(B, N, C)``."""
    if tuple(source.shape[-2:]) != tuple(size):
        raise ValueError(f"source is {tuple(source.shape[-2:])}, expected the working size {tuple(size)}")
    return model.encode_images(source.float())


def token_mask(model: EditModel, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask ``(B, 1, H, W)`` (1 = inside the edit) in the packed token layout ``(B, N, 1)``.

    A token is inside where any of its pixels is (max pooling over the token's
    ``2·f × 2·f`` pixels, ``f`` the codec's scale factor).
    """
    if mask.ndim != 4 or mask.shape[1] != 1 or tuple(mask.shape[-2:]) != tuple(size):
        raise ValueError(f"mask: expected shape (B, 1, {size[0]}, {size[1]}), got {tuple(mask.shape)}")
    patch = model.codec.scale_factor * 2
    pooled = F.max_pool2d(mask.float(), patch)  # (B, 1, h/2, w/2): one value per token
    return pooled.flatten(2).transpose(1, 2)


@dataclass
class GuidedEdit:
    """A guided edit: ``images`` ``(B, 3, H, W)`` in [0, 1] and the sampling record."""

    images: torch.Tensor
    sample: GuidedSample


def guided_edit(model: EditModel, condition: Condition, noise: torch.Tensor, size: tuple[int, int],
                steps: int, source: torch.Tensor, target_flow: torch.Tensor | None, flow_fn: FlowFn | None,
                config: GuidanceConfig = GuidanceConfig(), edit_mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, callback=None) -> GuidedEdit:
    """Edit with ``model`` over its ``steps``-step schedule, guided towards ``target_flow``.

    Args:
        model: a placed :class:`~motionnft.models.base.EditModel`.
        condition: ``model.encode_condition(prompt, source, size)`` (batch 1 or B).
        noise: ``(B, N, C)`` starting noise (``model.noise``).
        size: working size ``(H, W)`` in pixels.
        steps: sampler steps (``model.sigmas(steps, size)``).
        source: ``(1 or B, 3, H, W)`` in [0, 1] at ``size``.
        target_flow: ``(1 or B, 2, H, W)`` pixels, source -> result; None samples unguided.
        flow_fn: the differentiable flow (:mod:`motionnft.guidance.flows`); with ``target_flow``.
        config: guidance settings.
        edit_mask: ``(1 or B, 1, H, W)`` pixels, 1 where the edit may change the image;
            outside, the result keeps the source's latent.
        generator: CPU generator of the recursion noise.
    Returns:
        :class:`GuidedEdit` (images on the CPU, float32).
    """
    device = model.device
    decode = token_decoder(model, size)
    energy = None
    if target_flow is not None:
        if flow_fn is None:
            raise ValueError("guided_edit: a target flow needs a flow_fn")
        energy = MotionEnergy(source.to(device), target_flow.to(device), flow_fn, config)
    options = {}
    if edit_mask is not None:
        options = dict(edit_mask=token_mask(model, edit_mask.to(device), size),
                       source_latent=source_tokens(model, source, size))
    result = guided_sample_flow(velocity_fn(model, condition.to(device)), noise.to(device),
                                model.sigmas(steps, size), decode, energy, config, generator=generator,
                                callback=callback, **options)
    with torch.no_grad():
        images = decode(result.x).float().cpu()
    return GuidedEdit(images, result)
