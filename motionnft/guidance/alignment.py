"""How well a result follows a target flow, without a ground-truth image; and the guiding flow by name.

:func:`flow_alignment` estimates the flow from the source to the result with a flow
estimator of the caller's choice (by default one that does *not* guide, so the score is
not just what the guiding network was pushed to see) and compares it with the target:
end-point errors by region (:func:`~motionnft.guidance.targets.flow_errors`), the motion
reward and MAS with the target flow standing in for the ground truth's flow, and a
per-pixel error map for display.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..flow.base import FlowEstimator
from ..flow.warp import resize_flow
from ..reward import MotionReward, motion_reward_from_flows
from .energy import FlowFn
from .flows import correlation_flow_fn, estimator_flow_fn
from .targets import FlowErrors, flow_errors

GUIDE_FLOWS = ("correlation", "raft_small", "raft_large", "unimatch")
"""Differentiable flows that can guide: the weight-free correlation matcher, or a flow network
(its weights from the flow weight folders, see ``motionnft backends``)."""


def guidance_flow(name: str, weights: str | None = None, iterations: int | None = None, scale: float = 1.0,
                  device=None, precision: str | None = None) -> FlowFn:
    """The flow function that guides, by name (:data:`GUIDE_FLOWS`).

    Args:
        name: ``correlation`` (no weights; for small images and tests) or a flow network.
        weights: the network's weight file (path or file name in the weight folders).
        iterations: RAFT refinement iterations (the paper: 5); None keeps the preset's.
        scale: compute the flow at this fraction of the image size (then resized back).
        device, precision: of the network.
    Raises:
        ValueError for an unknown name; WeightsNotFoundError naming the folders searched.
    """
    if name not in GUIDE_FLOWS:
        raise ValueError(f"guiding flow {name!r}: expected one of {', '.join(GUIDE_FLOWS)}")
    if name == "correlation":
        return correlation_flow_fn(scale=scale)
    from ..flow import create_estimator

    estimator = create_estimator(name, None, weights=weights, precision=precision, device=device)
    return estimator_flow_fn(estimator, iterations=iterations if name != "unimatch" else None, scale=scale)


@dataclass
class FlowAlignment:
    """A result's flow against a target flow, per sample.

    Attributes:
        flow: ``(B, 2, H, W)`` the estimated flow source -> result, pixels.
        errors: end-point errors by region, each ``(B,)`` pixels.
        reward: the motion reward terms and MAS with the target as ground truth.
        error_map: ``(B, H, W)`` per-pixel end-point error, pixels.
    """

    flow: torch.Tensor
    errors: FlowErrors
    reward: MotionReward
    error_map: torch.Tensor

    def summary(self, index: int = 0) -> str:
        """One line for sample ``index``."""
        e, r = self.errors, self.reward
        return (f"EPE moved {e.moved[index]:.2f} px, static {e.static[index]:.2f} px, all {e.all[index]:.2f} px; "
                f"reward {r.reward_continuous[index]:.3f}, MAS {r.mas.score[index]:.1f}")


def flow_alignment(source: torch.Tensor, result: torch.Tensor, target_flow: torch.Tensor,
                   estimator: FlowEstimator, margin: int = 4, min_side: int = 256) -> FlowAlignment:
    """Score ``result`` against ``target_flow`` (see the module docstring).

    Args:
        source: ``(1 or B, 3, H, W)`` in [0, 1].
        result: ``(B, 3, H', W')`` in [0, 1]; resized to the source's size if it differs.
        target_flow: ``(1 or B, 2, H, W)`` pixels of the source, source -> intended result.
        estimator: measures the flow (e.g. ``create_estimator("dis", "medium")``).
        margin: pixels around the edit left out of the static region's error.
        min_side: images whose shorter side is below this are upsampled to it for the estimate
            (classical estimators such as DIS lose small images' motion), the flow brought back.
    Raises:
        ValueError when the target flow's size is not the source's.
    """
    from ..image import resize_image

    if tuple(target_flow.shape[-2:]) != tuple(source.shape[-2:]):
        raise ValueError(f"target_flow is {target_flow.shape[-1]}x{target_flow.shape[-2]} but the source image is "
                         f"{source.shape[-1]}x{source.shape[-2]}: a flow describes the pixels of its source image")
    size = tuple(source.shape[-2:])
    if tuple(result.shape[-2:]) != size:
        result = resize_image(result, size)
    batch = result.shape[0]
    factor = max(1.0, min_side / min(size))
    work = (round(size[0] * factor), round(size[1] * factor))
    pair = [resize_image(image, work) if work != size else image
            for image in (source.expand(batch, -1, -1, -1).float(), result.float())]
    flow = estimator(*pair)
    flow = resize_flow(flow, size) if tuple(flow.shape[-2:]) != size else flow
    target = target_flow.to(flow).expand_as(flow)
    return FlowAlignment(flow, flow_errors(flow, target, margin), motion_reward_from_flows(flow, target),
                         (flow - target).norm(dim=1))
