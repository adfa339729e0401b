"""Every number the checks judge a pair by, from its two frames and the flows between them.

Every metric is dimensionless: motion and camera displacement are divided by the analysis
image's diagonal (as the MotionNFT reward normalises flow), fractions are of the image
area, brightness and lighting are on the [0, 1] intensity scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .config import MiningConfig
from .filters import camera_fit, flow_hw2, flow_tensor, lighting_change, occlusion_mask
from .frames import AnalysedFrame, texture_mask

METRIC_DIGITS = 6


def pair_metrics(first: AnalysedFrame, last: AnalysedFrame, forward: torch.Tensor, backward: torch.Tensor,
                 cut_score: float, config: MiningConfig) -> tuple[dict[str, float], torch.Tensor]:
    """The metrics of the pair ``(first, last)`` (rounded), and the subject's own motion.

    Args:
        first, last: the window's end frames at the analysis size.
        forward: ``(1, 2, H, W)`` float32, first -> last, pixels.
        backward: ``(1, 2, H, W)`` float32, last -> first, pixels.
        cut_score: the largest shot-cut score between consecutive frames of the window.
    Returns:
        ``(metrics, residual)``: residual is the flow left once the camera's motion is
        removed, ``(1, 2, H, W)`` float32 in pixels.
    """
    height, width = first.analysis.shape[:2]
    diagonal = math.hypot(height, width)
    tolerance = config.flow_tolerance * diagonal
    occluded = occlusion_mask(forward, backward, tolerance)
    textured = texture_mask(first.gray, config.min_texture)
    if textured.mean() < 0.01:  # a flat image: judge on every pixel rather than on none
        textured = np.ones_like(textured)
    camera, background = camera_fit(forward, textured & ~occluded, config.camera_model, tolerance,
                                    config.min_background_fraction)
    # (H, W, 2) copies in C order: numpy's float32 sums depend on the memory order.
    forward_px, camera_px = np.ascontiguousarray(flow_hw2(forward)), np.ascontiguousarray(flow_hw2(camera))
    residual = forward_px - camera_px
    residual_norm = np.linalg.norm(residual, axis=-1) / diagonal
    moving = (residual_norm > config.moving_threshold) & ~occluded
    sharp = (first.sharpness, last.sharpness)
    metrics = {
        "motion": float(residual_norm[moving].mean()) if moving.any() else 0.0,
        "moving_fraction": float(moving.mean()),
        "subject_flow_mean": float(residual_norm.mean()),
        "flow_mean": float(np.linalg.norm(forward_px, axis=-1).mean() / diagonal),
        "camera_motion": float(np.linalg.norm(camera_px, axis=-1).mean() / diagonal),
        "background_fraction": background,
        "occlusion": float(occluded[textured].mean()),
        "cut_score": cut_score,
        "sharpness": min(sharp),
        "sharpness_ratio": min(sharp) / max(max(sharp), 1e-9),
        "brightness_input": first.brightness,
        "brightness_target": last.brightness,
        "lighting_change": lighting_change(first.gray, last.gray, forward, ~moving & ~occluded),
    }
    return {key: round(value, METRIC_DIGITS) for key, value in metrics.items()}, flow_tensor(residual)


def motion_picture(residual: torch.Tensor, min_motion: float) -> np.ndarray:
    """The subject's motion colour-coded: ``(H, W, 3)`` uint8 from a ``(1, 2, H, W)`` flow in pixels.

    Saturation is at twice ``min_motion`` (fraction of the diagonal) at least, so a pair
    with barely enough motion does not look like a strong one.
    """
    from ..flow import flow_to_color
    from ..video import tensor_to_frame

    diagonal = math.hypot(*residual.shape[-2:])
    scale = max(min_motion * diagonal * 2, float(residual.abs().max()), 1e-3)
    return tensor_to_frame(flow_to_color(residual.contiguous(), max_magnitude=scale)[0])
