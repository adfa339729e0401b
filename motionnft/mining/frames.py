"""Per-frame measurements: the analysis-size copy, grey levels, sharpness, brightness, thumbnail.

Images here are numpy arrays as decoded: RGB ``(H, W, 3)`` uint8, grey ``(H, W)`` uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..video import VideoFrame

THUMBNAIL_SIZE = 32


@dataclass
class AnalysedFrame:
    """One analysed frame of a source and what the filters need of it."""

    grid: int
    """Index on the sampling grid: ``round(time · sample_fps)``."""
    frame: VideoFrame
    analysis: np.ndarray  # (h, w, 3) uint8 at the analysis size
    gray: np.ndarray  # (h, w) uint8
    sharpness: float
    brightness: float
    thumbnail: np.ndarray  # (32, 32) float32 in [0, 1]
    cut_score: float = 0.0  # against the previous sample; 0 for the first
    forward: torch.Tensor | None = None  # (1, 2, h, w) float32 flow previous -> this sample, pixels
    backward: torch.Tensor | None = None  # (1, 2, h, w) float32 flow this -> previous sample, pixels


def analyse_frame(grid: int, frame: VideoFrame, size: tuple[int, int]) -> AnalysedFrame:
    """``frame`` at the analysis ``size`` ``(h, w)`` with its per-frame measures (no flow yet)."""
    analysis = resize(frame.rgb, size)
    gray = cv2.cvtColor(analysis, cv2.COLOR_RGB2GRAY)
    return AnalysedFrame(grid=grid, frame=frame, analysis=analysis, gray=gray, sharpness=sharpness(gray),
                         brightness=float(gray.mean()) / 255.0, thumbnail=thumbnail(gray))


def fit_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``long_side``, aspect kept, never upscaled."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` ``(H, W[, C])`` at ``size = (h, w)`` (area-averaged; unchanged when already that size)."""
    if rgb.shape[:2] == size:
        return rgb
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def thumbnail(gray: np.ndarray) -> np.ndarray:
    """``(32, 32)`` float32 in [0, 1]: what near-duplicate detection compares."""
    return cv2.resize(gray, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of an 8-bit grey image (grey levels squared)."""
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def texture_mask(gray: np.ndarray, min_texture: float) -> np.ndarray:
    """Where flow can be trusted: mean gradient magnitude over 7x7 pixels above ``min_texture``.

    Optical flow is unconstrained on flat regions (a blurred wall, the sky): there any
    estimator returns an arbitrary smooth field, so forward-backward disagreement there
    says nothing about occlusion and points there say nothing about the camera.

    Args:
        gray: ``(H, W)`` uint8.
        min_texture: grey levels (0-255) per pixel.
    Returns:
        ``(H, W)`` bool.
    """
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8
    return cv2.blur(np.sqrt(gx * gx + gy * gy), (7, 7)) > min_texture


def duplicate_distance(first: np.ndarray, last: np.ndarray, kept: list[tuple[np.ndarray, np.ndarray]]) -> float | None:
    """How far a pair is from the nearest kept pair, relative to its own change.

    ``max(d(input, kept input), d(target, kept target)) / d(input, target)`` with ``d`` the
    mean grey difference of 32x32 thumbnails: below 1, both frames lie closer to a kept
    pair's than to each other (an overlapping window, a repeated take, a loop). ``None``
    while nothing is kept.

    Args:
        first, last: the pair's ``(32, 32)`` float32 thumbnails in [0, 1].
        kept: the ``(input, target)`` thumbnails of the pairs kept so far.
    """
    if not kept:
        return None
    change = max(float(np.abs(first - last).mean()), 1e-3)
    return min(max(float(np.abs(first - kept_input).mean()), float(np.abs(last - kept_target).mean())) / change
               for kept_input, kept_target in kept)
