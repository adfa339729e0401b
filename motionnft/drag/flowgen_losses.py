"""FlowGen's training losses: weighted L1 on flow and the pix2pix adversarial terms.

Flows are compared as fractions of the image size, so one weight suits every resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_weights(target: torch.Tensor, valid: torch.Tensor, moving: torch.Tensor,
                           moving_weight: float) -> torch.Tensor:
    """Per-pixel L1 weights ``(B, H, W)``: 1, plus ``moving_weight`` on the moving region
    ``moving`` ``(B, H, W)``, and 0 where the flow is unknown (``valid`` False).

    The moving region is a tenth of a typical frame; unweighted, a network that predicts
    zero flow everywhere already scores well, and learns the motion last.
    """
    if target.ndim != 4 or target.shape[1] != 2:
        raise ValueError(f"target: expected (B, 2, H, W) flow, got {tuple(target.shape)}")
    return (1.0 + moving_weight * moving.float()) * valid.float()


def flow_l1(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``|Δx| / W + |Δy| / H`` over pixels; flows ``(B, 2, H, W)`` in pixels,
    ``weights`` ``(B, H, W)``. A scalar."""
    if prediction.shape != target.shape or weights.shape != (target.shape[0], *target.shape[2:]):
        raise ValueError(f"flow_l1: prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and weights "
                         f"{tuple(weights.shape)} do not match as (B, 2, H, W), (B, 2, H, W), (B, H, W)")
    size = target.new_tensor([target.shape[-1], target.shape[-2]]).view(1, 2, 1, 1)
    error = ((prediction - target).abs() / size).sum(dim=1)
    return (error * weights).sum() / weights.sum().clamp_min(1e-8)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """pix2pix's discriminator objective: binary cross-entropy, real patches -> 1, generated -> 0,
    halved (the discriminator then learns at half the generator's pace)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term: its patches should be judged real (non-saturating)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
