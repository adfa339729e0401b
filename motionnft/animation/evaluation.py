"""Measuring an animation against the video it should reproduce (the video-reconstruction protocol).

The paper's keypoint metrics (AKD, MKR, AED) need a keypoint detector and an identity network
this pack does not ship. What can be measured without them is pixel error and **motion error**:
the flow from the source to each driving frame against the flow from the source to the
animation's frame, both estimated by the same flow estimator (DIS by default), so a model is
scored on moving the source as the video moves, not only on colours.
"""

from __future__ import annotations

import torch

from ..guidance.alignment import flow_alignment
from .animate import animate


def reconstruct(model, frames: torch.Tensor, use_background: bool | None = None) -> torch.Tensor:
    """The protocol's animation: frame 0 of ``frames`` ``(T, 3, H, W)`` in [0, 1] is the source,
    frames 1..T-1 drive it (standard mode). Returns ``(T - 1, 3, H, W)`` in [0, 1]."""
    if len(frames) < 2:
        raise ValueError(f"reconstruction: need >= 2 frames, got {len(frames)}")
    model = model.eval()
    if use_background is None:
        use_background = getattr(model, "bg_predictor", None) is not None
    with torch.no_grad():
        outputs = [out[0] for out in animate(frames[:1], frames[1:], model, mode="standard",
                                             use_background=use_background)]
    return torch.stack(outputs)


def motion_error(source: torch.Tensor, driving: torch.Tensor, outputs: torch.Tensor, estimator) -> dict[str, float]:
    """Flow end-point error of an animation against its driving video.

    Args:
        source: ``(1, 3, H, W)`` in [0, 1], the animated still (the video's first frame).
        driving: ``(T, 3, H, W)`` the frames that drove it.
        outputs: ``(T, 3, H, W)`` the animation.
        estimator: a flow estimator ``(a, b) -> (B, 2, H, W)`` pixels (e.g. ``create_estimator("dis")``);
            small frames are upsampled for it as :func:`~motionnft.guidance.alignment.flow_alignment` does.
    Returns:
        ``epe``: mean over frames and pixels of ``|flow(source -> output) - flow(source -> driving)|``
        (pixels of the frames); ``static``: the same for a model that never moves the source
        (``|flow(source -> driving)|``, the baseline to beat).
    """
    if driving.shape != outputs.shape:
        raise ValueError(f"outputs: expected the driving frames' shape {tuple(driving.shape)}, got {tuple(outputs.shape)}")
    zero = torch.zeros(driving.shape[0], 2, *driving.shape[-2:])
    target = flow_alignment(source, driving, zero, estimator).flow
    result = flow_alignment(source, outputs, target, estimator)
    return {"epe": float(result.error_map.mean()), "static": float(target.norm(dim=1).mean())}
