"""Warping images by flow, chaining and resizing flow fields, forward-backward occlusion.

Flow convention (the library's): ``flow[:, :, y, x] = (dx, dy)`` in pixels says that the
pixel ``(x, y)`` of frame A is found at ``(x + dx, y + dy)`` in frame B.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _check_flow(name: str, flow: torch.Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name}: expected a flow of shape (B, 2, H, W), got {tuple(flow.shape)}")


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(1, 2, H, W)`` pixel coordinates: channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0)


def _broadcast_batch(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.shape[0] == flow.shape[0]:
        return image, flow
    if image.shape[0] == 1:
        return image.expand(flow.shape[0], -1, -1, -1), flow
    if flow.shape[0] == 1:
        return image, flow.expand(image.shape[0], -1, -1, -1)
    raise ValueError(
        f"image has a batch of {image.shape[0]} and flow a batch of {flow.shape[0]}: "
        "expected equal sizes or a batch of 1 on one side"
    )


def warp_backward(
    image: torch.Tensor,
    flow: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Backward warp: ``out[:, :, y, x] = image[:, :, y + dy, x + dx]`` (sampled bilinearly).

    With ``flow`` the flow from A to B and ``image`` = B, the result is B pulled back onto
    A's pixel grid (an estimate of A). Differentiable in both inputs; a zero flow returns
    the image unchanged.

    Args:
        image: ``(B, C, H, W)``.
        flow: ``(B, 2, H, W)`` in pixels (a batch of 1 on either side broadcasts).
        mode: ``"bilinear"`` or ``"nearest"`` (grid_sample modes).
        padding_mode: ``"border"``, ``"zeros"`` or ``"reflection"`` for samples outside.
    Returns:
        ``(B, C, H, W)``, the dtype of ``image``.
    """
    _check_flow("flow", flow)
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image is {tuple(image.shape[-2:])} but flow is {tuple(flow.shape[-2:])} (H, W)")
    image, flow = _broadcast_batch(image, flow)
    height, width = flow.shape[-2:]
    coords = pixel_grid(height, width, flow.device, flow.dtype) + flow
    # align_corners=True maps -1/+1 to the centres of the first/last pixel, so integer pixel
    # coordinates land exactly on pixel centres and a zero flow is the identity.
    scale = torch.tensor(
        [2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=flow.device, dtype=flow.dtype
    ).view(1, 2, 1, 1)
    grid = (coords * scale - 1.0).permute(0, 2, 3, 1)
    # A NaN coordinate makes grid_sample's CPU backward index out of bounds (a crash, not an
    # error): send non-finite samples outside the image, where the padding mode decides.
    grid = torch.nan_to_num(grid, nan=2.0, posinf=2.0, neginf=-2.0).contiguous()
    warped = F.grid_sample(image.to(grid.dtype).contiguous(), grid, mode=mode, padding_mode=padding_mode,
                           align_corners=True)
    return warped.to(image.dtype)


def chain_flows(flows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Compose consecutive flows ``f_01, f_12, ...`` into the flow from the first frame to the last.

    ``F_02(x) = F_01(x) + f_12(x + F_01(x))``: each pixel is followed along its track (the
    next flow is sampled bilinearly where the pixel has got to, borders replicated), so
    motions far larger than one flow step stay measurable by a small-motion estimator.

    Args:
        flows: one or more ``(B, 2, H, W)`` in pixels, the i-th from frame i to frame i + 1.
    Returns:
        ``(B, 2, H, W)``, first frame -> last frame (the first flow itself when alone).
    """
    if not flows:
        raise ValueError("flows: expected at least one flow")
    total = flows[0]
    _check_flow("flows[0]", total)
    for flow in flows[1:]:
        total = total + warp_backward(flow, total, padding_mode="border")
    return total


def splat_forward(image: torch.Tensor, flow: torch.Tensor, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward warp by bilinear splatting: every pixel of ``image`` is moved along ``flow``.

    With ``flow`` from A to B and ``image`` = A, the result approximates B where A's
    content lands; pixels nothing lands on are holes (zero). Overlaps are averaged.

    Args:
        image: ``(B, C, H, W)``.
        flow: ``(B, 2, H, W)`` in pixels.
        eps: splat weight below which a target pixel counts as a hole.
    Returns:
        ``(warped (B, C, H, W), covered (B, 1, H, W) bool)``.
    """
    _check_flow("flow", flow)
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"image is {tuple(image.shape[-2:])} but flow is {tuple(flow.shape[-2:])} (H, W)")
    image, flow = _broadcast_batch(image, flow)
    batch, channels, height, width = image.shape
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    target = pixel_grid(height, width, flow.device, work) + flow.to(work)
    x0 = target[:, 0].floor()
    y0 = target[:, 1].floor()
    fx = target[:, 0] - x0
    fy = target[:, 1] - y0
    values = image.to(work).reshape(batch, channels, -1)
    accum = torch.zeros(batch, channels + 1, height * width, device=image.device, dtype=work)
    ones = torch.ones(batch, 1, height * width, device=image.device, dtype=work)
    payload = torch.cat((values, ones), dim=1)
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xs, ys = x0 + dx, y0 + dy
        inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
        weight = (weight * inside).reshape(batch, 1, -1)
        index = (ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)).long().reshape(batch, 1, -1)
        accum.scatter_add_(2, index.expand(-1, channels + 1, -1), payload * weight)
    total = accum[:, channels:]
    covered = total > eps
    warped = torch.where(covered, accum[:, :channels] / total.clamp_min(eps), torch.zeros_like(accum[:, :channels]))
    shape = (batch, channels, height, width)
    return warped.reshape(shape).to(image.dtype), covered.reshape(batch, 1, height, width)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(B, 2, H, W)`` pixel flow to ``size = (H', W')``, rescaling the vectors.

    x components are multiplied by ``W'/W`` and y components by ``H'/H`` so the result is
    in pixels of the new size.
    """
    _check_flow("flow", flow)
    height, width = flow.shape[-2:]
    if (height, width) == tuple(size):
        return flow
    resized = F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / width, size[0] / height], device=flow.device, dtype=flow.dtype)
    return resized * scale.view(1, 2, 1, 1)


def forward_backward_occlusion(
    flow_forward: torch.Tensor,
    flow_backward: torch.Tensor,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
) -> torch.Tensor:
    """Occlusion mask from forward-backward consistency (Sundaram et al. 2010).

    A pixel ``x`` of frame A is occluded (or leaves the frame) when the backward flow at
    its destination does not bring it back:
    ``|f(x) + b(x + f(x))|² > alpha1 · (|f(x)|² + |b(x + f(x))|²) + alpha2``.

    Args:
        flow_forward: ``(B, 2, H, W)`` flow A -> B in pixels.
        flow_backward: ``(B, 2, H, W)`` flow B -> A in pixels.
    Returns:
        ``(B, 1, H, W)`` bool, True where occluded or mapped outside frame B.
    """
    _check_flow("flow_forward", flow_forward)
    _check_flow("flow_backward", flow_backward)
    if flow_forward.shape != flow_backward.shape:
        raise ValueError(
            f"flow_forward {tuple(flow_forward.shape)} and flow_backward {tuple(flow_backward.shape)} differ"
        )
    height, width = flow_forward.shape[-2:]
    back = warp_backward(flow_backward, flow_forward, padding_mode="border")
    residual = (flow_forward + back).pow(2).sum(dim=1, keepdim=True)
    bound = alpha1 * (flow_forward.pow(2).sum(dim=1, keepdim=True) + back.pow(2).sum(dim=1, keepdim=True)) + alpha2
    target = pixel_grid(height, width, flow_forward.device, flow_forward.dtype) + flow_forward
    outside = (
        (target[:, :1] < 0) | (target[:, :1] > width - 1) | (target[:, 1:] < 0) | (target[:, 1:] > height - 1)
    )
    return (residual > bound) | outside
