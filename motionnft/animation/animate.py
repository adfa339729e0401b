"""Image animation: a source image moved by a driving video, one frame at a time.

Modes (those of TPSMM's ``demo.py``):
    - ``standard``: the driving keypoints are used as they are (the source takes the driving
      frame's absolute pose, and its shape);
    - ``relative``: the source keypoints move by the driving keypoints' displacement from
      the first driving frame, scaled by the ratio of the keypoint hulls' sizes
      (``adapt_movement_scale``), so the source keeps its own shape;
    - ``avd``: the AVD network retargets the driving pose onto the source's identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from .model import TPSMM

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)`` after each frame (``total`` 0 when unknown); raise to cancel."""

MODES = ("standard", "relative", "avd")


def convex_hull_area(points: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull of each point set (Andrew's monotone chain + shoelace).

    Args:
        points: ``(B, M, 2)``.
    Returns:
        ``(B,)`` in squared units of ``points``, float64 (0 for fewer than 3 or collinear points).

    Example:
        >>> convex_hull_area(torch.tensor([[[0., 0.], [1., 0.], [1., 1.], [0., 1.], [.5, .5]]]))
        tensor([1.], dtype=torch.float64)
    """
    areas = []
    for cloud in points.detach().to("cpu", torch.float64):
        ordered = sorted(set(map(tuple, cloud.tolist())))

        def cross(o, a, b):
            return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

        def chain(sequence):
            hull: list[tuple[float, float]] = []
            for point in sequence:
                while len(hull) >= 2 and cross(hull[-2], hull[-1], point) <= 0:
                    hull.pop()
                hull.append(point)
            return hull[:-1]

        hull = chain(ordered) + chain(reversed(ordered)) if len(ordered) > 2 else []
        doubled = sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(hull, hull[1:] + hull[:1]))
        areas.append(abs(doubled) / 2)
    return torch.tensor(areas, dtype=torch.float64)


def relative_keypoints(kp_source: torch.Tensor, kp_driving: torch.Tensor, kp_driving_initial: torch.Tensor,
                       adapt_movement_scale: bool = True) -> torch.Tensor:
    """The source keypoints moved by the driving keypoints' displacement since the first frame.

    ``kp = kp_source + s · (kp_driving - kp_driving_initial)`` with
    ``s = sqrt(area(hull(kp_source)) / area(hull(kp_driving_initial)))`` (1 without adaptation).

    Args:
        kp_source, kp_driving, kp_driving_initial: ``(B, K·N, 2)`` normalised keypoints.
    Returns:
        ``(B, K·N, 2)``.
    """
    displacement = kp_driving - kp_driving_initial
    if adapt_movement_scale:
        scale = (convex_hull_area(kp_source) / convex_hull_area(kp_driving_initial)).sqrt()
        displacement = displacement * scale.to(displacement)[:, None, None]
    return kp_source + displacement


def _as_frame(frame: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A driving frame ``(3, H, W)`` or ``(1, 3, H, W)`` on the source's device, dtype and size."""
    if frame.ndim == 3:
        frame = frame[None]
    if frame.ndim != 4 or frame.shape[:2] != like.shape[:2]:
        raise ValueError(f"driving frame: expected ({like.shape[0]}, {like.shape[1]}, H, W), got {tuple(frame.shape)}")
    frame = frame.to(like.device, like.dtype)
    if frame.shape[2:] != like.shape[2:]:
        frame = F.interpolate(frame, size=like.shape[2:], mode="bilinear", align_corners=False, antialias=True)
    return frame


def animate(source: torch.Tensor, driving: Iterable[torch.Tensor], model: TPSMM, mode: str = "relative",
            adapt_movement_scale: bool = True, use_background: bool = False,
            progress: ProgressCallback | None = None, total: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the source animated by each driving frame, as the frames arrive.

    Memory stays constant in the number of frames: one driving frame is read, one output
    made and yielded, and nothing is kept but the source's and the first frame's keypoints.

    Args:
        source: ``(1, 3, H, W)`` in [0, 1]; H and W must suit the model (256 x 256 for the
            official 256 checkpoints; see :meth:`.model.TPSMM.check_frame_size`).
        driving: any iterable of frames ``(3, h, w)`` or ``(1, 3, h, w)`` in [0, 1] (a list,
            a video decoder's generator...); frames of another size are resized to the source's.
        model: a :class:`.model.TPSMM` (e.g. from :func:`.checkpoint.load_official_checkpoint`).
        mode: ``"standard"``, ``"relative"`` or ``"avd"`` (see the module docstring).
        adapt_movement_scale: in ``relative`` mode, scale the motion by the hulls' size ratio.
        use_background: also predict the background affine (``bg_predictor``) between source
            and driving frame; the official demo does not.
        progress: called as ``progress(done, total)`` after each frame; raising from it
            stops the animation (the exception propagates to the consumer).
        total: frame count to report (``len(driving)`` when it has one).
    Yields:
        ``(1, 3, H, W)`` frames in [0, 1] on the source's device, without gradients.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if source.ndim != 4 or source.shape[1] != model.config.num_channels:
        raise ValueError(f"source: expected (1, {model.config.num_channels}, H, W), got {tuple(source.shape)}")
    if mode == "avd" and model.avd_network is None:
        raise ValueError("mode 'avd' needs a model with an AVD network (a checkpoint trained with train_avd)")
    if use_background and model.bg_predictor is None:
        raise ValueError("use_background: this model has no background predictor (config bg=False)")
    model.check_frame_size(*source.shape[2:])
    if total is None:
        total = len(driving) if hasattr(driving, "__len__") else 0
    with torch.no_grad():
        kp_source = model.kp_detector(source)
    kp_initial = None
    for index, frame in enumerate(driving):
        # no_grad around the step only: a generator must not hold the caller's grad mode
        # switched off while it is suspended at a yield.
        with torch.no_grad():
            frame = _as_frame(frame, source)
            kp_driving = model.kp_detector(frame)
            if kp_initial is None:
                kp_initial = kp_driving
            if mode == "relative":
                kp_driving = relative_keypoints(kp_source, kp_driving, kp_initial, adapt_movement_scale)
            elif mode == "avd":
                kp_driving = model.avd_network(kp_source, kp_driving)
            bg_param = model.bg_predictor(source, frame) if use_background else None
            prediction = model(source, kp_source, kp_driving, bg_param).prediction
        del frame, kp_driving, bg_param
        if progress is not None:
            progress(index + 1, total)
        yield prediction
