"""The miner's filters as functions over optical flow: cuts, occlusion, camera motion, subject
motion, lighting.

Flows are in the library's layout and convention (:mod:`motionnft.flow`): ``(1, 2, H, W)``
float32 tensors in pixels, ``flow[:, :, y, x] = (dx, dy)`` taking pixel ``(x, y)`` of the
first frame to ``(x + dx, y + dy)`` in the second. Grey images are ``(H, W)`` uint8 numpy
arrays, masks ``(H, W)`` bool numpy arrays. Warping and the forward-backward check are
:mod:`motionnft.flow.warp`'s; the camera fit runs in numpy, as OpenCV's RANSAC needs.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..flow import forward_backward_occlusion, warp_backward

CUT_PIXEL_ERROR = 0.06
"""Grey-level error (0-1) above which the flow does not explain a pixel (shot-cut score)."""
BORDER_BAND = 0.15
"""Width of the image's border band, as a fraction of each side, where the background is judged."""
OCCLUSION_ALPHA1 = 0.05
"""Forward-backward check: the disagreement tolerated in proportion to the motion (Sundaram's alpha1)."""


def flow_hw2(flow: torch.Tensor) -> np.ndarray:
    """``(1, 2, H, W)`` tensor -> ``(H, W, 2)`` numpy view (no copy)."""
    return flow[0].permute(1, 2, 0).numpy()


def flow_tensor(flow: np.ndarray) -> torch.Tensor:
    """``(H, W, 2)`` numpy flow -> ``(1, 2, H, W)`` tensor view (no copy)."""
    return torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0)


def warp_gray(gray: np.ndarray, flow: torch.Tensor) -> np.ndarray:
    """``gray`` ``(H, W)`` uint8 sampled at ``x + flow(x)`` (bilinear, borders replicated): ``(H, W)`` float32.

    Args:
        gray: ``(H, W)`` uint8, the frame the flow points into.
        flow: ``(1, 2, H, W)`` float32, pixels.
    """
    image = torch.from_numpy(gray.astype(np.float32))[None, None]
    return warp_backward(image, flow, padding_mode="border")[0, 0].numpy()


def unexplained_fraction(previous_gray: np.ndarray, gray: np.ndarray, flow: torch.Tensor) -> float:
    """Fraction of the previous frame that warping ``gray`` along ``flow`` cannot rebuild (shot-cut score).

    Motion, however fast, is explained by warping along the flow; a cut to another shot is
    not. A global brightness change is a lighting matter, not a cut, so the median
    difference is removed first.

    Args:
        previous_gray, gray: ``(H, W)`` uint8, consecutive analysed frames.
        flow: ``(1, 2, H, W)`` float32, previous -> this frame, pixels.
    Returns:
        the fraction (0-1) of pixels off by more than ``CUT_PIXEL_ERROR`` of the grey range.
    """
    difference = warp_gray(gray, flow) - previous_gray.astype(np.float32)
    difference -= np.median(difference)
    return float((np.abs(difference) > 255 * CUT_PIXEL_ERROR).mean())


def occlusion_mask(forward: torch.Tensor, backward: torch.Tensor, tolerance_px: float) -> np.ndarray:
    """Pixels of the first frame that fail the forward-backward check (occluded, or leaving the image).

    Args:
        forward: ``(1, 2, H, W)`` float32, first -> last frame, pixels.
        backward: ``(1, 2, H, W)`` float32, last -> first frame, pixels.
        tolerance_px: disagreement tolerated at any motion, pixels.
    Returns:
        ``(H, W)`` bool.
    """
    return forward_backward_occlusion(forward, backward, alpha1=OCCLUSION_ALPHA1, alpha2=tolerance_px**2)[0, 0].numpy()


def homogeneous_flow(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """The ``(H, W, 2)`` float32 displacement ``M(x) - x``, pixels, of a 3x3 projective matrix."""
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    points = np.stack([gx, gy, np.ones_like(gx)], axis=-1) @ matrix.T
    w = points[..., 2]
    w = np.where(np.abs(w) < 1e-9, 1e-9, w)
    return np.stack([points[..., 0] / w - gx, points[..., 1] / w - gy], axis=-1).astype(np.float32)


def _fit_camera_model(src: np.ndarray, dst: np.ndarray, model: str, tolerance_px: float) -> np.ndarray | None:
    """A 3x3 matrix taking ``src`` to ``dst`` (``(N, 2)`` float32 pixels) by RANSAC, None if none fits."""
    if model == "homography":
        matrix, _ = cv2.findHomography(src, dst, cv2.RANSAC, tolerance_px, maxIters=2000, confidence=0.995)
    elif model == "affine":
        matrix, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance_px,
                                         maxIters=2000, confidence=0.995)
    else:
        matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance_px,
                                                maxIters=2000, confidence=0.995)
    if matrix is not None and matrix.shape == (2, 3):
        matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return matrix


def camera_fit(flow: torch.Tensor, trusted: np.ndarray, model: str, tolerance_px: float,
               still_support: float) -> tuple[torch.Tensor, float]:
    """The camera's global motion between the frames, from the flow at trusted pixels.

    The background is judged in the image's border band (the outer ``BORDER_BAND`` of each
    side), where it usually is even when the subject fills the middle. A still camera is
    checked first: when at least ``still_support`` of the trusted border points do not move
    (within ``tolerance_px``), part of the scene is visibly static, which a moving camera
    cannot produce, and the camera motion is zero. Otherwise a ``model`` (homography,
    affine or similarity) is fitted to every trusted point with RANSAC. Together these keep a
    close-up subject that fills most of the frame from being taken for the camera.

    Args:
        flow: ``(1, 2, H, W)`` float32, first -> last frame, pixels.
        trusted: ``(H, W)`` bool, the pixels whose flow counts (textured, not occluded).
        model: ``"homography"``, ``"affine"`` or ``"similarity"``.
        tolerance_px: RANSAC inlier distance and "does not move" bound, pixels.
        still_support: fraction (0-1) of border points that must stand still for a still camera.
    Returns:
        ``(camera flow (1, 2, H, W) float32 in pixels, support)``: support is the fraction of
        the trusted border points that follow the camera motion (0 when nothing can be fitted).
    """
    flow = np.ascontiguousarray(flow_hw2(flow))
    height, width = flow.shape[:2]
    zero = flow_tensor(np.zeros_like(flow))
    step = max(2, round(max(height, width) / 64))
    ys, xs = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    keep = trusted[ys, xs]
    if int(keep.sum()) < 12:
        return zero, 0.0
    band_y, band_x = BORDER_BAND * height, BORDER_BAND * width
    border = ((ys < band_y) | (ys >= height - band_y) | (xs < band_x) | (xs >= width - band_x))[keep]
    if border.sum() < 12:  # flat borders (letterbox bars, sky): judge on every trusted point
        border = np.ones_like(border)
    src = np.stack([xs[keep], ys[keep]], axis=1).astype(np.float32)
    motion = flow[ys[keep], xs[keep]]
    still = float((np.linalg.norm(motion[border], axis=1) <= tolerance_px).mean())
    if still >= still_support:
        return zero, still
    matrix = _fit_camera_model(src, src + motion, model, tolerance_px)
    if matrix is None:
        return zero, still
    camera = homogeneous_flow(matrix, height, width)
    follows = np.linalg.norm(motion - camera[ys[keep], xs[keep]], axis=1) <= tolerance_px
    support = float(follows[border].mean())
    if support <= still:
        return zero, still
    return flow_tensor(camera), support


def lighting_change(first_gray: np.ndarray, last_gray: np.ndarray, forward: torch.Tensor, static: np.ndarray) -> float:
    """How the brightness of the static, visible background changed, motion-compensated.

    Args:
        first_gray, last_gray: ``(H, W)`` uint8.
        forward: ``(1, 2, H, W)`` float32, first -> last frame, pixels.
        static: ``(H, W)`` bool, pixels neither moving nor occluded.
    Returns:
        the absolute median change on the [0, 1] intensity scale (the mean change when under
        2% of the image is static).
    """
    if static.mean() > 0.02:
        warped = warp_gray(last_gray, forward)
        return abs(float(np.median(warped[static] - first_gray[static]))) / 255.0
    return abs(float(last_gray.mean()) - float(first_gray.mean())) / 255.0
