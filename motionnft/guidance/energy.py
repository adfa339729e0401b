"""The Motion Guidance energy on a decoded clean estimate: flow term + masked colour term.

``L = w_flow · mean|F_target − Flow(src, x̂0)| + w_colour · mean|M_occ · (src − warp(x̂0, F_target))|``

Convention:
    images ``(B, 3, H, W)`` in [0, 1]; flows ``(B, 2, H, W)`` in pixels of those images,
    channel 0 = x (right), 1 = y (down), mapping **source** pixels to where they are in
    the result (:mod:`motionnft.flow.warp`). ``warp(x̂0, F)`` is the backward warp
    ``x̂0[y + F_y, x + F_x]``: the result pulled back onto the source's pixel grid, so
    ``src ≈ warp(x̂0, F_target)`` wherever the edit did what ``F_target`` asks. Samples
    outside the image are reflected (as the paper's warp does). A batch of 1 on the source
    or the target flow broadcasts over the results.

The energy is a plain callable ``energy(x0_pixels) -> (loss (B,), info)``: any other
energy with that signature can guide the samplers of :mod:`motionnft.guidance.sampler`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..flow.warp import splat_forward, warp_backward
from .config import GuidanceConfig

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``flow_fn(source, result)``: images ``(B, 3, H, W)`` in [0, 1] -> flow ``(B, 2, H, W)`` in
pixels from source to result, differentiable in ``result``."""

Energy = Callable[[torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
"""``energy(x0)`` with ``x0`` ``(B, 3, H, W)`` -> ``(loss (B,), info)`` (info: detached ``(B,)`` terms)."""


def _check_flow(name: str, flow: torch.Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name}: expected a flow of shape (B, 2, H, W), got {tuple(flow.shape)}")


def _check_image(name: str, image: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
        raise ValueError(f"{name}: expected a float image batch of shape (B, 3, H, W), got "
                         f"{tuple(image.shape)} {image.dtype}")


def normal_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` usable by autograd: an inference-mode tensor (ComfyUI makes its inputs
    under ``torch.inference_mode()``) is cloned outside inference mode; others pass through."""
    if tensor.is_inference():
        with torch.inference_mode(False):
            return tensor.clone()
    return tensor


def occlusion_mask(target_flow: torch.Tensor, threshold: float = 1e-3) -> torch.Tensor:
    """``M_occ``: 0 on static source pixels that the moved pixels land on, 1 elsewhere.

    A source pixel is *moving* where ``‖F‖ > threshold``. The moving pixels are splatted
    forward along ``F`` (:func:`~motionnft.flow.warp.splat_forward`); a static pixel is
    masked where any of them lands, since in the result it is hidden behind the moved
    content and the colour term cannot ask for its source colour there. Moving pixels are
    never masked (the paper's rule). Not differentiable (a constant of the energy).

    Args:
        target_flow: ``(B, 2, H, W)`` in pixels.
        threshold: pixels; smaller flows count as static.
    Returns:
        ``(B, 1, H, W)`` float in {0, 1}, dtype and device of ``target_flow``.

    >>> flow = torch.zeros(1, 2, 4, 6); flow[:, 0, 1:3, 1] = 2.0   # a 2-pixel block moves right by 2
    >>> occlusion_mask(flow)[0, 0]
    tensor([[1., 1., 1., 1., 1., 1.],
            [1., 1., 1., 0., 1., 1.],
            [1., 1., 1., 0., 1., 1.],
            [1., 1., 1., 1., 1., 1.]])
    """
    _check_flow("target_flow", target_flow)
    with torch.no_grad():
        flow = target_flow.detach().float()
        moving = (flow.norm(dim=1, keepdim=True) > threshold).float()
        landed, _ = splat_forward(moving, flow * moving)
        covered = (landed > 1e-3) & (moving < 0.5)
    return (~covered).to(target_flow.dtype)


def flow_term(flow: torch.Tensor, target_flow: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference of two flows, ``(B,)`` in pixels.

    Args:
        flow: ``(B, 2, H, W)`` estimated flow, pixels.
        target_flow: ``(B, 2, H, W)`` or ``(1, 2, H, W)``, pixels.
    """
    _check_flow("flow", flow)
    _check_flow("target_flow", target_flow)
    return (flow - target_flow).abs().flatten(1).mean(dim=1)


def colour_term(result: torch.Tensor, source: torch.Tensor, flow: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``mean |mask · (source − warp(result, flow))|``, ``(B,)`` in [0, 1] units.

    ``warp`` is :func:`~motionnft.flow.warp.warp_backward` with reflection padding: the
    result sampled where ``flow`` sends each source pixel. The mean is over all pixels
    and channels (masked ones count as zeros, as in the paper).

    Args:
        result: ``(B, 3, H, W)`` in [0, 1].
        source: ``(B, 3, H, W)`` or ``(1, 3, H, W)`` in [0, 1].
        flow: ``(B, 2, H, W)`` or ``(1, 2, H, W)`` in pixels (source -> result).
        mask: ``(B, 1, H, W)`` or ``(1, 1, H, W)`` in [0, 1], or None (no mask).
    """
    warped = warp_backward(result, flow, padding_mode="reflection")
    difference = (source - warped).abs()
    if mask is not None:
        difference = difference * mask
    return difference.flatten(1).mean(dim=1)


class MotionEnergy:
    """The Motion Guidance energy for one source image and target flow.

    ``energy(x0)`` returns ``(loss (B,), info)`` with ``info = {"flow": (B,), "colour": (B,)}``
    (detached, unweighted terms). ``M_occ`` is computed once here.

    Args:
        source: ``(1 or B, 3, H, W)`` in [0, 1].
        target_flow: ``(1 or B, 2, H, W)`` in pixels of ``source`` (source -> result).
        flow_fn: ``flow_fn(source, result) -> (B, 2, H, W)``, differentiable in ``result``
            (:mod:`motionnft.guidance.flows`).
        config: weights, occlusion masking and which flow warps the colour term.
    """

    def __init__(self, source: torch.Tensor, target_flow: torch.Tensor, flow_fn: FlowFn,
                 config: GuidanceConfig = GuidanceConfig()):
        _check_image("source", source)
        _check_flow("target_flow", target_flow)
        if source.shape[-2:] != target_flow.shape[-2:]:
            raise ValueError(f"source is {tuple(source.shape[-2:])} but target_flow is "
                             f"{tuple(target_flow.shape[-2:])} (H, W)")
        with torch.inference_mode(False):  # every stored tensor must be usable by autograd later
            self.source = normal_tensor(source).detach().float()
            self.target_flow = normal_tensor(target_flow).detach().float()
            self.mask = occlusion_mask(self.target_flow) if config.occlusion_masking else None
        self.flow_fn = flow_fn
        self.config = config

    def to(self, device) -> "MotionEnergy":
        self.source, self.target_flow = self.source.to(device), self.target_flow.to(device)
        self.mask = None if self.mask is None else self.mask.to(device)
        return self

    def __call__(self, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Energy of the decoded clean estimates ``x0`` ``(B, 3, H, W)`` in [0, 1]: ``(loss (B,), info)``."""
        _check_image("x0", x0)
        if x0.shape[-2:] != self.source.shape[-2:]:
            raise ValueError(f"x0 is {tuple(x0.shape[-2:])} but the source is {tuple(self.source.shape[-2:])} (H, W)")
        config = self.config
        source = self.source.to(x0.device)
        target = self.target_flow.to(x0.device)
        zero = x0.new_zeros(x0.shape[0])
        flow, flow_loss, colour_loss = None, zero, zero
        if config.flow_weight > 0 or config.colour_warp == "estimated":
            flow = self.flow_fn(source.expand(x0.shape[0], -1, -1, -1), x0)
        if config.flow_weight > 0:
            flow_loss = flow_term(flow, target)
        if config.colour_weight > 0:
            warp_flow = target if config.colour_warp == "target" else flow
            mask = None if self.mask is None else self.mask.to(x0.device)
            colour_loss = colour_term(x0, source, warp_flow, mask)
        loss = config.flow_weight * flow_loss + config.colour_weight * colour_loss
        return loss, {"flow": flow_loss.detach(), "colour": colour_loss.detach()}
