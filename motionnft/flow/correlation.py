"""A weight-free, differentiable optical flow: local correlation + soft-argmax, coarse to fine.

Meant where a flow must be differentiated but no learned network's weights exist (tests,
CPU toys, Motion Guidance on a machine without RAFT files). It is a block matcher made
smooth: at each level of an image pyramid, the patch distance between a pixel of image 1
and the pixels of (image 2 warped by the current flow) within ``radius`` is turned into
a probability over displacements by a softmax, and the expected displacement
(soft-argmax) is added to the flow; the flow is then upsampled to the next finer level.
Every operation (average pooling, bilinear warps, softmax) is differentiable in both
images.

Convention:
    images ``(B, 3, H, W)`` in [0, 1]; flow ``(B, 2, H, W)`` in **pixels** of the input,
    channel 0 = x (right), 1 = y (down), ``flow[:, :, y, x]`` = where pixel ``(x, y)`` of
    image 1 is found in image 2 (the library's convention, :mod:`motionnft.flow.warp`).
    Displacement ``d = (dx, dy)`` is searched over the square ``|dx|, |dy| <= radius``
    (pixels of the pyramid level), so a level ``l`` (size ``/2^l``) reaches
    ``radius · 2^l`` input pixels; the whole pyramid reaches ``radius · (2^levels − 1)``.

Accuracy is that of a block matcher: good on textured, rigidly moving regions; on flat
regions the distribution is spread out and the flow tends towards 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..image import check_image_batch
from .base import FlowEstimator, ProgressCallback, prepare_image_pair
from .warp import resize_flow, warp_backward


OUTSIDE_COST = 1e3
"""The patch distance given to displacements that leave the image (far above any real one, <= 1)."""

MIN_LEVEL_SIZE = 16
"""The smallest side (pixels) a pyramid level may have; coarser levels are skipped."""


def displacements(radius: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All integer displacements of the search window, ``((2r + 1)², 2)`` as ``(dx, dy)``, row-major in dy.

    >>> displacements(1).shape
    torch.Size([9, 2])
    """
    steps = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((dx.reshape(-1), dy.reshape(-1)), dim=1)


def patch_distance(image1: torch.Tensor, image2: torch.Tensor, radius: int, patch: int = 5) -> torch.Tensor:
    """Mean squared patch distance between ``image1`` and shifted copies of ``image2``.

    ``cost[:, k, y, x] = mean over the patch and channels of (image1(p) − image2(p + d_k))²``
    for the displacements ``d_k`` of :func:`displacements`; a displacement that leaves the
    image gets :data:`OUTSIDE_COST`.

    Args:
        image1: ``(B, C, H, W)``.
        image2: ``(B, C, H, W)``.
        radius: search radius in pixels, >= 0.
        patch: odd side of the square patch averaged over, >= 1.
    Returns:
        ``(B, (2r + 1)², H, W)``, >= 0, in squared image units.

    >>> patch_distance(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), 2).shape
    torch.Size([1, 25, 8, 8])
    """
    if image1.shape != image2.shape:
        raise ValueError(f"image1 {tuple(image1.shape)} and image2 {tuple(image2.shape)} differ")
    height, width = image1.shape[-2:]
    padded = F.pad(image2, (radius,) * 4, mode="replicate")
    ys = torch.arange(height, device=image1.device).view(height, 1)
    xs = torch.arange(width, device=image1.device).view(1, width)
    costs = []
    for dx, dy in displacements(radius).long().tolist():
        shifted = padded[:, :, radius + dy: radius + dy + height, radius + dx: radius + dx + width]
        cost = (image1 - shifted).pow(2).mean(dim=1)
        if patch > 1:
            cost = F.avg_pool2d(cost.unsqueeze(1), patch, stride=1, padding=patch // 2, count_include_pad=False)[:, 0]
        # a displacement that leaves the image matches nothing (replicated borders would
        # otherwise look like a good match and bias the flow near the edges)
        outside = (xs + dx < 0) | (xs + dx > width - 1) | (ys + dy < 0) | (ys + dy > height - 1)
        costs.append(cost.masked_fill(outside, OUTSIDE_COST))
    return torch.stack(costs, dim=1)


def soft_argmax_flow(cost: torch.Tensor, radius: int, temperature: float) -> torch.Tensor:
    """Expected displacement under ``softmax(−cost / temperature)`` over the search window.

    Args:
        cost: ``(B, (2r + 1)², H, W)`` as :func:`patch_distance` returns.
        radius: the window's radius (pixels).
        temperature: > 0, in the units of ``cost``; smaller is closer to a hard argmin.
    Returns:
        ``(B, 2, H, W)`` displacement in pixels, each component in ``[−r, r]``.
    """
    weights = torch.softmax(-cost / temperature, dim=1)
    offsets = displacements(radius, cost.device, cost.dtype)  # (K, 2)
    return torch.einsum("bkhw,kc->bchw", weights, offsets)


@dataclass(frozen=True)
class CorrelationFlowConfig:
    """Settings of :func:`correlation_flow`.

    Attributes:
        radius: search radius per level, in pixels of that level (>= 1).
        levels: pyramid levels below full resolution (0 = full resolution only); levels
            whose shorter side would fall below :data:`MIN_LEVEL_SIZE` are skipped.
        patch: odd patch side of the distance, in pixels of each level.
        temperature: softmax temperature in squared [0, 1] image units (the patch
            distance's); ~1e-3 is sharp on textured images, larger values are smoother
            and give smaller, better-spread gradients.
    """

    radius: int = 3
    levels: int = 2
    patch: int = 5
    temperature: float = 2e-3

    def __post_init__(self):
        if self.radius < 1 or self.levels < 0 or self.patch < 1 or self.patch % 2 == 0:
            raise ValueError(f"correlation flow: need radius >= 1, levels >= 0 and an odd patch >= 1, got {self}")
        if not self.temperature > 0:
            raise ValueError(f"correlation flow: temperature must be > 0, got {self.temperature}")


def correlation_flow(image1: torch.Tensor, image2: torch.Tensor,
                     config: CorrelationFlowConfig = CorrelationFlowConfig()) -> torch.Tensor:
    """Differentiable flow from ``image1`` to ``image2`` by coarse-to-fine soft block matching.

    At each level, coarsest first: ``image2`` is warped back by the current flow
    (:func:`~motionnft.flow.warp.warp_backward`, border padding), the residual displacement is the
    soft-argmax of :func:`patch_distance` and is added; the flow is then resized to the
    next level (:func:`~motionnft.flow.warp.resize_flow`).

    Args:
        image1: ``(B, 3, H, W)`` in [0, 1] (a batch of 1 broadcasts).
        image2: ``(B, 3, H, W)`` in [0, 1].
        config: radius, levels, patch and temperature.
    Returns:
        ``(B, 2, H, W)`` float flow in pixels, differentiable in both images.

    >>> a = torch.rand(1, 3, 32, 32)
    >>> correlation_flow(a, a).abs().max() < 0.5
    tensor(True)
    """
    image1, image2 = prepare_image_pair(image1, image2)
    height, width = image1.shape[-2:]
    pyramid = [(image1, image2)]
    for _ in range(config.levels):
        a, b = pyramid[-1]
        if min(a.shape[-2:]) < 2 * MIN_LEVEL_SIZE:  # a coarser level would be too small to match on
            break
        pyramid.append((F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)))
    flow = None
    for a, b in reversed(pyramid):
        if flow is None:
            flow = a.new_zeros(a.shape[0], 2, *a.shape[-2:])
        else:
            flow = resize_flow(flow, tuple(a.shape[-2:]))
        warped = warp_backward(b, flow, padding_mode="border")
        cost = patch_distance(a, warped, config.radius, config.patch)
        flow = flow + soft_argmax_flow(cost, config.radius, config.temperature)
    return flow if flow.shape[-2:] == (height, width) else resize_flow(flow, (height, width))


class CorrelationFlow(FlowEstimator):
    """:func:`correlation_flow` behind the :class:`~motionnft.flow.base.FlowEstimator` interface.

    Differentiable (``differentiable = True``); needs no weights. Not registered as a
    backend: it is a tool for gradients, not a measurement.
    """

    name = "correlation"
    differentiable = True

    def __init__(self, config: CorrelationFlowConfig = CorrelationFlowConfig()):
        self.config = config

    def estimate(self, image1, image2, progress: ProgressCallback | None) -> torch.Tensor:
        check_image_batch("image1", image1)
        flow = correlation_flow(image1.float(), image2.float(), self.config)
        if progress is not None:
            progress(image1.shape[0], image1.shape[0])
        return flow

    def __repr__(self) -> str:
        return f"CorrelationFlow({self.config})"
