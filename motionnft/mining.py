"""Mine motion-edit training pairs from videos: frames -> candidate pairs -> filters -> dataset.

MotionEdit built its data from 3-second windows of video clips: the first and last frame
of a window form a candidate (input, target) pair, kept when the setting is stable, the
motion significant and the subjects intact. This module does the same on the user's own
footage without any model: every candidate is scored with automatic filters computed from
optical flow at a reduced analysis resolution, and an optional MLLM judge (any object with
``rate_mining_criteria`` and ``draft_instruction``, see :mod:`motionnft.judge`) checks the
paper's three criteria and drafts the instruction.

Pipeline (one pass, streaming)::

    video -> sample_frames (PyAV, at sample_fps) -> per analysed frame: analysis-size copy,
    sharpness, brightness, thumbnail; flow to and from the previous frame; shot-cut score
    -> windows of window_seconds (first/last frame; "endpoints" or "sliding")
    -> per pair: the window's flows chained along each pixel's track (forward and backward),
       forward-backward occlusion, camera fit (still camera, else RANSAC), residual subject
       motion and moving area, lighting change, near-duplicate distance
    -> reasons (every failed threshold) -> optional judge -> DatasetWriter

Only the samples of the current window are held, so memory does not grow with the video.
Sample ids derive from the video's content hash and the two timestamps: a rerun into the
same dataset folder skips the pairs already written.

Every metric is dimensionless: motion and camera displacement are divided by the analysis
image's diagonal (as the MotionNFT reward normalises flow), fractions are of the image
area, brightness and lighting are on the [0, 1] intensity scale.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from .files import atomic_write
from .flow import PRECISIONS, FlowEstimator, create_estimator, forward_backward_occlusion, get_backend
from .video import (TimeSampler, VideoFrame, VideoSource, frame_to_tensor, probe_video, sample_frames,
                    source_fingerprint)

PAIRINGS = ("endpoints", "sliding")
CAMERA_MODELS = ("homography", "affine", "similarity")
JUDGE_CRITERIA = ("stable_setting", "significant_motion", "intact_subjects")
REJECTIONS_FILE = "rejected.jsonl"


def _setting(default, help: str, **limits):
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class MiningConfig:
    """How candidate pairs are formed and every threshold that decides which are kept.

    Defaults keep clear subject motion filmed by a still camera and reject the rest; each
    field can be overridden (``motionnft mine --max-camera-motion 0.02``, the node's
    ``overrides`` box, or ``MiningConfig(max_camera_motion=0.02)``).
    """

    # What is sampled and paired.
    window_seconds: float = _setting(3.0, "window length in seconds; its first and last frame form a pair", low=0.05)
    stride_seconds: float | None = _setting(
        None, "seconds between window starts (default: the window length for 'endpoints', one analysed frame for "
        "'sliding')", low=0.0, exclusive_low=True)
    pairing: str = _setting("endpoints", "'endpoints': consecutive windows as in the paper; 'sliding': a window starting "
                            "at every analysed frame (overlapping candidates)", choices=PAIRINGS)
    sample_fps: float = _setting(4.0, "frames analysed per second of video (capped at the video's frame rate)",
                                 low=0.0, exclusive_low=True)
    analysis_size: int = _setting(384, "long side in pixels of the frames the filters analyse (never upscaled)", low=32)
    output_max_side: int = _setting(0, "long side in pixels of the saved pairs; 0 = the video's own size", low=0)
    backend: str = _setting("dis", "optical-flow backend (see motionnft.flow.available_backends())")
    preset: str | None = _setting(None, "flow backend preset (default: the backend's default)")
    weights: str | None = _setting(None, "weight file of a learned flow backend: a path or a file name in the weight "
                                   "folders (default: the backend's preferred file found there)")
    precision: str | None = _setting(None, "compute precision of a learned flow backend (default fp32)",
                                     choices=PRECISIONS)
    device: str | None = _setting(None, "device of a learned flow backend, e.g. cuda (default cpu)")
    chain_flow: bool = _setting(True, "follow each pixel through the window's analysed frames (flow between "
                                "consecutive samples, composed): large motions stay measurable with DIS; false = "
                                "one direct flow between the window's ends")
    torch_threads: int = _setting(1, "torch CPU threads while analysing (the miner's small tensors run fastest on one, "
                                  "and one thread leaves cores to the decoder); 0 = leave torch's setting", low=0)
    camera_model: str = _setting("homography", "global camera motion fitted to the flow with RANSAC",
                                 choices=CAMERA_MODELS)
    flow_tolerance: float = _setting(
        0.01, "flow disagreement tolerated, fraction of the diagonal: by the camera fit (RANSAC inliers) and by the "
        "forward-backward occlusion check", low=0.0, exclusive_low=True)
    min_texture: float = _setting(2.0, "pixels flatter than this (mean grey-level gradient per pixel) are left out of "
                                  "the camera fit and the occlusion ratio: flow is arbitrary there", low=0.0)
    # Thresholds: a pair is rejected when any of these fails.
    max_cut_score: float = _setting(
        0.35, "shot cut: largest fraction of pixels that motion cannot explain between consecutive samples",
        low=0.0, high=1.0)
    max_camera_motion: float = _setting(0.012, "camera motion: mean displacement of the fitted camera model, fraction "
                                        "of the diagonal", low=0.0)
    min_background_fraction: float = _setting(
        0.15, "stable setting: least fraction of the textured pixels in the image's border band that follow the "
        "camera (when that much stands still, the camera counts as still)", low=0.0, high=1.0)
    moving_threshold: float = _setting(0.006, "a pixel moves when its residual (subject) motion exceeds this fraction "
                                       "of the diagonal", low=0.0)
    min_motion: float = _setting(0.02, "least mean subject motion over the moving pixels, fraction of the diagonal",
                                 low=0.0)
    max_motion: float = _setting(0.5, "largest mean subject motion over the moving pixels, fraction of the diagonal",
                                 low=0.0)
    min_moving_fraction: float = _setting(0.01, "least fraction of the image that moves", low=0.0, high=1.0)
    max_moving_fraction: float = _setting(0.6, "largest fraction of the image that moves", low=0.0, high=1.0)
    min_sharpness: float = _setting(10.0, "least sharpness (variance of the Laplacian of the 8-bit grey analysis "
                                    "frame) of either frame", low=0.0)
    min_sharpness_ratio: float = _setting(0.4, "least ratio of the blurrier frame's sharpness to the sharper one's",
                                          low=0.0, high=1.0)
    min_brightness: float = _setting(0.06, "least mean brightness (0-1) of either frame", low=0.0, high=1.0)
    max_brightness: float = _setting(0.94, "largest mean brightness (0-1) of either frame", low=0.0, high=1.0)
    max_lighting_change: float = _setting(0.06, "largest brightness change (0-1) of the static background between the "
                                          "frames, motion-compensated", low=0.0, high=1.0)
    max_occlusion: float = _setting(0.3, "largest fraction of the input frame's textured pixels that fail the "
                                    "forward-backward check (occluded, or leaving the image)", low=0.0, high=1.0)
    min_duplicate_distance: float = _setting(
        0.5, "near duplicates: a pair whose input and target both differ from a kept pair's by less than this "
        "fraction of its own input-target change (32x32 grey thumbnails) is dropped", low=0.0)
    judge_min_score: float = _setting(0.5, "with a judge: least score (0-1) on each of the paper's three criteria",
                                      low=0.0, high=1.0)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field out of its range."""
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            meta = spec.metadata
            if value is None:
                continue
            if "choices" in meta and value not in meta["choices"]:
                raise ValueError(f"{spec.name}={value!r}: expected one of {', '.join(meta['choices'])}")
            if "low" in meta:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"{spec.name}={value!r}: expected a number")
                if value < meta["low"] or (meta.get("exclusive_low") and value == meta["low"]):
                    relation = ">" if meta.get("exclusive_low") else ">="
                    raise ValueError(f"{spec.name}={value}: expected {relation} {meta['low']}")
                if "high" in meta and value > meta["high"]:
                    raise ValueError(f"{spec.name}={value}: expected <= {meta['high']}")
        if self.window_seconds * self.sample_fps < 1:
            raise ValueError(f"window_seconds={self.window_seconds} at sample_fps={self.sample_fps} spans no "
                             "analysed frame: raise one of them (window_seconds x sample_fps >= 1)")
        for low, high in (("min_motion", "max_motion"), ("min_moving_fraction", "max_moving_fraction"),
                          ("min_brightness", "max_brightness")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}={getattr(self, low)} is above {high}={getattr(self, high)}")
        get_backend(self.backend)  # unknown backends fail here, naming the registered ones

    @classmethod
    def with_overrides(cls, overrides: dict[str, Any] | None = None, base: "MiningConfig | None" = None) -> "MiningConfig":
        """A config from ``base`` (default: the defaults) with ``overrides`` by field name.

        String values (from a text box or the command line) are converted to the field's type.
        """
        base = base or cls()
        names = {spec.name: spec for spec in dataclasses.fields(cls)}
        values = {}
        for key, value in (overrides or {}).items():
            key = key.strip().replace("-", "_")
            if key not in names:
                raise ValueError(f"unknown mining setting {key!r}: expected one of {', '.join(names)}")
            if isinstance(value, str):
                value = _parse_setting(key, value.strip(), names[key])
            values[key] = value
        return dataclasses.replace(base, **values)

    @staticmethod
    def parse_overrides(text: str) -> dict[str, str]:
        """``"key=value"`` pairs separated by newlines, commas or semicolons -> dict."""
        overrides = {}
        for item in re.split(r"[\n,;]+", text or ""):
            item = item.split("#", 1)[0].strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"mining override {item!r}: expected name=value, e.g. max_camera_motion=0.02")
            key, value = item.split("=", 1)
            overrides[key.strip()] = value.strip()
        return overrides

    def sampling(self) -> dict[str, Any]:
        """The settings that decide which pairs exist (recorded with every mined sample)."""
        return {name: getattr(self, name) for name in
                ("window_seconds", "stride_seconds", "pairing", "sample_fps", "analysis_size", "backend", "preset",
                 "camera_model")}

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_setting(key: str, text: str, spec: dataclasses.Field):
    if text.lower() in ("none", "null", "auto", "") and spec.default is None:
        return None
    kind = type(spec.default) if spec.default is not None else (str if key == "preset" else float)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"mining setting {key}={text!r}: expected true or false")
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ValueError(f"mining setting {key}={text!r}: expected a number") from None
    return text


# --------------------------------------------------------------------------------------
# Sources: a video file, an open file object, or frames already in memory.


@dataclass
class MiningSource:
    """One video to mine: where it is, what identifies its content, and its frames."""

    name: str
    """A readable name (the file name), shown in results and recorded with each sample."""
    fingerprint: str
    """A content hash: sample ids stay the same when the file is renamed or moved."""
    fps: float
    duration: float
    frame_iterator: Callable[[float], Iterator[VideoFrame]]
    """``frame_iterator(sample_fps)`` yields the sampled frames in order."""
    path: str | None = None

    def frames(self, sample_fps: float) -> Iterator[VideoFrame]:
        return self.frame_iterator(sample_fps)


def video_source(video: VideoSource, name: str | None = None) -> MiningSource:
    """A video file (path) or an open binary file object, stream-decoded with PyAV."""
    info = probe_video(video)
    if info.fps <= 0:
        raise ValueError(f"{info.name}: the video states no frame rate")
    path = str(Path(video).resolve()) if isinstance(video, (str, os.PathLike)) else None
    return MiningSource(
        name=name or info.name,
        fingerprint=source_fingerprint(video),
        fps=info.fps,
        duration=info.duration,
        frame_iterator=lambda sample_fps: sample_frames(video, sample_fps),
        path=path,
    )


def frames_source(images: torch.Tensor, fps: float, name: str = "frames") -> MiningSource:
    """Frames already in memory: ``(T, 3, H, W)`` float in [0, 1] at ``fps`` frames per second."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"frames: expected a (T, 3, H, W) image batch, got {shape}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    count = images.shape[0]
    digest = hashlib.sha1(f"{tuple(images.shape)}@{fps}".encode())
    for index in range(count):
        digest.update(_to_uint8(images[index]).tobytes())

    def frame_iterator(sample_fps: float) -> Iterator[VideoFrame]:
        sampler = TimeSampler(sample_fps, fps)
        for index in range(count):
            if sampler.take(index / fps):
                yield VideoFrame(index=index, time=round(index / fps, 6), rgb=_to_uint8(images[index]))

    return MiningSource(name=name, fingerprint=digest.hexdigest()[:10], fps=float(fps), duration=count / fps,
                        frame_iterator=frame_iterator)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def pair_id(source: MiningSource, time_input: float, time_target: float) -> str:
    """Stable sample id from the video's content hash and both timestamps (milliseconds).

    The file's name is deliberately left out: a renamed or moved video gives the same ids,
    so mining it again into the same dataset adds nothing twice.
    """
    return f"v{source.fingerprint[:10]}-{round(time_input * 1000):07d}-{round(time_target * 1000):07d}"


# --------------------------------------------------------------------------------------
# Per-frame and per-pair measurements.


@dataclass
class _Sample:
    grid: int
    frame: VideoFrame
    analysis: np.ndarray  # (h, w, 3) uint8 at the analysis size
    gray: np.ndarray  # (h, w) uint8
    sharpness: float
    brightness: float
    thumbnail: np.ndarray  # (32, 32) float32 in [0, 1]
    cut_score: float  # against the previous sample; 0 for the first
    forward: np.ndarray | None = None  # (h, w, 2) flow previous -> this sample, pixels
    backward: np.ndarray | None = None  # (h, w, 2) flow this -> previous sample, pixels


def _fit_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side at most ``long_side``, aspect kept, never upscaled."""
    scale = min(1.0, long_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size:
        return rgb
    return cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def _to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.cat([frame_to_tensor(image) for image in images])


def _flow_tensor(flow: np.ndarray) -> torch.Tensor:
    """``(h, w, 2)`` numpy flow -> ``(1, 2, h, w)`` tensor (the library's layout)."""
    return torch.from_numpy(flow).permute(2, 0, 1).unsqueeze(0)


def _sample_at(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` (h, w[, c]) float32 sampled at ``x + flow(x)``, bilinear, borders replicated.

    The numpy twin of :func:`motionnft.flow.warp_backward` (same convention), used on the
    miner's hot path where OpenCV's remap is several times faster than ``grid_sample``.
    """
    height, width = flow.shape[:2]
    xs = np.arange(width, dtype=np.float32)[None, :] + flow[..., 0]
    ys = np.arange(height, dtype=np.float32)[:, None] + flow[..., 1]
    return cv2.remap(image, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _warp_gray(gray: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``gray`` sampled at ``x + flow(x)``: (h, w) float32."""
    return _sample_at(gray.astype(np.float32), flow)


CUT_PIXEL_ERROR = 0.06
"""Grey-level error (0-1) above which the flow does not explain a pixel (shot-cut score)."""


def _unexplained_fraction(previous_gray: np.ndarray, gray: np.ndarray, flow: np.ndarray) -> float:
    """Fraction of the previous frame that warping ``gray`` along ``flow`` (previous -> this) cannot rebuild.

    Motion, however fast, is explained by warping along the flow; a cut to another shot is
    not. A global brightness change is a lighting matter, not a cut, so the median
    difference is removed first.
    """
    difference = _warp_gray(gray, flow) - previous_gray.astype(np.float32)
    difference -= np.median(difference)
    return float((np.abs(difference) > 255 * CUT_PIXEL_ERROR).mean())


def _chain(flows: Sequence[np.ndarray]) -> np.ndarray:
    """Compose consecutive flows ``f_01, f_12, ...`` (each ``(h, w, 2)``) into the flow first -> last.

    ``F_02(x) = F_01(x) + f_12(x + F_01(x))``: each pixel is followed along its track, so
    motions far larger than one flow step stay measurable by a small-motion estimator.
    """
    total = flows[0]
    for flow in flows[1:]:
        total = total + _sample_at(flow, total)
    return total


def _texture_mask(gray: np.ndarray, min_texture: float) -> np.ndarray:
    """Where flow can be trusted: mean gradient magnitude over 7x7 pixels above ``min_texture``.

    Optical flow is unconstrained on flat regions (a blurred wall, the sky): there any
    estimator returns an arbitrary smooth field, so forward-backward disagreement there
    says nothing about occlusion and points there say nothing about the camera.
    Units: grey levels (0-255) per pixel. Returns ``(h, w)`` bool.
    """
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3) / 8
    return cv2.blur(np.sqrt(gx * gx + gy * gy), (7, 7)) > min_texture


def _homogeneous_flow(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """The ``(h, w, 2)`` displacement ``M(x) - x`` of a 3x3 projective matrix."""
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    points = np.stack([gx, gy, np.ones_like(gx)], axis=-1) @ matrix.T
    w = points[..., 2]
    w = np.where(np.abs(w) < 1e-9, 1e-9, w)
    return np.stack([points[..., 0] / w - gx, points[..., 1] / w - gy], axis=-1).astype(np.float32)


BORDER_BAND = 0.15
"""Width of the image's border band, as a fraction of each side, where the background is judged."""


def _camera_fit(flow: np.ndarray, trusted: np.ndarray, model: str, tolerance_px: float, still_support: float):
    """The camera's global motion between the frames, from the flow at trusted pixels.

    The background is judged in the image's border band (the outer ``BORDER_BAND`` of each
    side), where it usually is even when the subject fills the middle. A still camera is
    checked first: when at least ``still_support`` of the trusted border points do not move
    (within ``tolerance_px``), part of the scene is visibly static, which a moving camera
    cannot produce, and the camera motion is zero. Otherwise a ``model`` (homography,
    affine or similarity) is fitted to every trusted point with RANSAC. Together these keep a
    close-up subject that fills most of the frame from being taken for the camera.

    Returns:
        ``(camera flow (h, w, 2) in pixels, support)``: support is the fraction of the
        trusted border points that follow the camera motion (0 when nothing can be fitted).
    """
    height, width = flow.shape[:2]
    zero = np.zeros_like(flow)
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
    dst = src + motion
    if model == "homography":
        matrix, _ = cv2.findHomography(src, dst, cv2.RANSAC, tolerance_px, maxIters=2000, confidence=0.995)
    elif model == "affine":
        matrix, _ = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance_px,
                                         maxIters=2000, confidence=0.995)
    else:
        matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=tolerance_px,
                                                maxIters=2000, confidence=0.995)
    if matrix is None:
        return zero, still
    if matrix.shape == (2, 3):
        matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
    camera = _homogeneous_flow(matrix, height, width)
    follows = np.linalg.norm(motion - camera[ys[keep], xs[keep]], axis=1) <= tolerance_px
    support = float(follows[border].mean())
    if support <= still:
        return zero, still
    return camera, support


@dataclass
class PairResult:
    """One candidate pair: where it comes from, every metric, and the verdict."""

    id: str
    video: str
    """The source's name (file name)."""
    time_input: float
    time_target: float
    frame_input: int
    frame_target: int
    metrics: dict[str, float]
    reasons: list[str]
    """Why it was rejected: every failed check's code (empty when kept)."""
    details: list[str]
    """One readable line per reason, with the value and the threshold."""
    kept: bool
    existing: bool = False
    """Already in the dataset from an earlier run: skipped, not analysed again."""
    prompt: str = ""
    judge: dict[str, float] | None = None
    input_image: np.ndarray | None = None
    """``(H, W, 3)`` uint8 at the output size; set on kept pairs."""
    target_image: np.ndarray | None = None
    preview: dict[str, np.ndarray] | None = None
    """Small uint8 pictures (``input``, ``target``, ``motion`` = colour-coded subject flow)."""

    def record(self) -> dict[str, Any]:
        """JSON-able summary (no images)."""
        return {"id": self.id, "video": self.video, "time_input": self.time_input, "time_target": self.time_target,
                "frame_input": self.frame_input, "frame_target": self.frame_target, "kept": self.kept,
                "existing": self.existing, "reasons": self.reasons, "details": self.details,
                "metrics": self.metrics, "judge": self.judge, "prompt": self.prompt}


def _failed_checks(metrics: dict[str, float], config: MiningConfig) -> list[tuple[str, str]]:
    """(reason code, readable detail) for every threshold the pair fails."""
    checks = [
        ("shot_cut", metrics["cut_score"] > config.max_cut_score,
         f"cut_score {metrics['cut_score']:.3f} > max {config.max_cut_score}"),
        ("camera_motion", metrics["camera_motion"] > config.max_camera_motion,
         f"camera_motion {metrics['camera_motion']:.4f} > max {config.max_camera_motion}"),
        ("unstable_background", metrics["background_fraction"] < config.min_background_fraction,
         f"background_fraction {metrics['background_fraction']:.3f} < min {config.min_background_fraction}"),
        ("too_little_motion", metrics["motion"] < config.min_motion,
         f"motion {metrics['motion']:.4f} < min {config.min_motion}"),
        ("too_much_motion", metrics["motion"] > config.max_motion,
         f"motion {metrics['motion']:.4f} > max {config.max_motion}"),
        ("moving_area_too_small", metrics["moving_fraction"] < config.min_moving_fraction,
         f"moving_fraction {metrics['moving_fraction']:.4f} < min {config.min_moving_fraction}"),
        ("moving_area_too_large", metrics["moving_fraction"] > config.max_moving_fraction,
         f"moving_fraction {metrics['moving_fraction']:.4f} > max {config.max_moving_fraction}"),
        ("blurry", metrics["sharpness"] < config.min_sharpness,
         f"sharpness {metrics['sharpness']:.1f} < min {config.min_sharpness}"),
        ("sharpness_mismatch", metrics["sharpness_ratio"] < config.min_sharpness_ratio,
         f"sharpness_ratio {metrics['sharpness_ratio']:.3f} < min {config.min_sharpness_ratio}"),
        ("too_dark", min(metrics["brightness_input"], metrics["brightness_target"]) < config.min_brightness,
         f"brightness {min(metrics['brightness_input'], metrics['brightness_target']):.3f} < min {config.min_brightness}"),
        ("too_bright", max(metrics["brightness_input"], metrics["brightness_target"]) > config.max_brightness,
         f"brightness {max(metrics['brightness_input'], metrics['brightness_target']):.3f} > max {config.max_brightness}"),
        ("lighting_change", metrics["lighting_change"] > config.max_lighting_change,
         f"lighting_change {metrics['lighting_change']:.3f} > max {config.max_lighting_change}"),
        ("occlusion", metrics["occlusion"] > config.max_occlusion,
         f"occlusion {metrics['occlusion']:.3f} > max {config.max_occlusion}"),
        ("near_duplicate", metrics["duplicate_distance"] is not None
         and metrics["duplicate_distance"] < config.min_duplicate_distance,
         f"duplicate_distance {metrics['duplicate_distance'] or 0:.3f} < min {config.min_duplicate_distance}"),
    ]
    return [(code, detail) for code, failed, detail in checks if failed]


REASONS = ("shot_cut", "camera_motion", "unstable_background", "too_little_motion", "too_much_motion",
           "moving_area_too_small", "moving_area_too_large", "blurry", "sharpness_mismatch", "too_dark",
           "too_bright", "lighting_change", "occlusion", "near_duplicate",
           *(f"judge_{name}" for name in JUDGE_CRITERIA), "judge_error")
"""Every rejection code the miner can give."""


# --------------------------------------------------------------------------------------
# The miner.


@contextlib.contextmanager
def _torch_threads(count: int):
    """Run the block with ``count`` torch CPU threads (0: unchanged), then restore the setting.

    Entered around each analysis step only, never across a ``yield``, so the caller's
    setting holds whenever the caller runs.
    """
    previous = torch.get_num_threads()
    if count and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count and count != previous:
            torch.set_num_threads(previous)


def check_judge(judge) -> None:
    """Raise TypeError unless ``judge`` is None or has the mining methods of the judge interface."""
    if judge is None:
        return
    missing = [name for name in ("rate_mining_criteria", "draft_instruction") if not callable(getattr(judge, name, None))]
    if missing:
        raise TypeError(f"judge: {type(judge).__name__} lacks {', '.join(missing)} (see motionnft.judge.JudgeClient)")


class PairMiner:
    """Scores the candidate pairs of videos and writes the kept ones to a dataset.

    Args:
        config: sampling and thresholds.
        judge: ``None``, or an object with ``rate_mining_criteria(input, target) -> dict`` and
            ``draft_instruction(input, target) -> str`` (images ``(1, 3, H, W)`` in [0, 1]).
            It sees only the pairs the automatic filters keep.
        estimator: a flow estimator; default: the one ``config``'s backend, preset, weights,
            precision and device describe (:func:`motionnft.flow.create_estimator`).
        previews: attach small preview pictures to every result (for contact sheets).
    """

    def __init__(self, config: MiningConfig | None = None, judge=None, estimator: FlowEstimator | None = None,
                 previews: bool = False):
        self.config = config or MiningConfig()
        check_judge(judge)
        self.judge = judge
        self.estimator = estimator or create_estimator(
            self.config.backend, self.config.preset,
            weights=self.config.weights, precision=self.config.precision, device=self.config.device,
        )
        self.previews = previews
        self.existing: dict[str, Any] = {}
        """Samples already in the output dataset by id (their metrics and prompts are reported)."""
        self._kept_thumbnails: list[tuple[np.ndarray, np.ndarray]] = []

    # Sampling grid -------------------------------------------------------------------
    def _grid(self, source: MiningSource) -> tuple[float, int, int]:
        """(effective sample fps, window length in samples, stride in samples)."""
        config = self.config
        sample_fps = min(config.sample_fps, source.fps) if source.fps > 0 else config.sample_fps
        window = max(1, round(config.window_seconds * sample_fps))
        if config.stride_seconds is not None:
            stride = max(1, round(config.stride_seconds * sample_fps))
        else:
            stride = window if config.pairing == "endpoints" else 1
        return sample_fps, window, stride

    def expected_samples(self, source: MiningSource) -> int:
        """About how many frames will be analysed (for progress bars)."""
        sample_fps, _, _ = self._grid(source)
        return max(1, math.ceil(source.duration * sample_fps - 1e-6))

    # Main loop -----------------------------------------------------------------------
    def mine(self, source: MiningSource, writer=None, progress: Callable[[int, int], None] | None = None,
             keep_images: bool = True) -> Iterator[PairResult]:
        """Yield a :class:`PairResult` for every candidate pair of ``source``, in time order.

        Args:
            writer: an open :class:`motionnft.data.DatasetWriter`; kept pairs are added to it
                and pairs whose id it already holds are skipped (``existing=True``).
            progress: ``progress(done, total)`` after each analysed frame; may raise to cancel.
            keep_images: attach the full-size frames to kept results.
        """
        config = self.config
        sample_fps, window, stride = self._grid(source)
        total = self.expected_samples(source)
        buffer: dict[int, _Sample] = {}
        previous: _Sample | None = None
        done = 0
        for frame in source.frames(sample_fps):
            grid = round(frame.time * sample_fps)
            if previous is not None and grid <= previous.grid:
                continue
            endpoint = grid % stride == 0 or (grid >= window and (grid - window) % stride == 0)
            with _torch_threads(config.torch_threads):
                sample = self._analyse_frame(grid, frame, previous, keep_full=endpoint)
            buffer[sample.grid] = sample
            previous = sample
            done += 1
            if progress is not None:
                total = max(total, done)
                progress(done, total)
            start = grid - window
            if start >= 0 and start % stride == 0 and start in buffer:
                window_samples = [buffer[g] for g in sorted(buffer) if start <= g <= grid]
                with _torch_threads(config.torch_threads):
                    result = self._evaluate(source, window_samples, writer, keep_images)
                del window_samples  # a generator's locals live on while it waits at the yield
                yield result
            for old in [g for g in buffer if g <= grid - window]:
                del buffer[old]
        if progress is not None and done:
            progress(done, done)

    def _analyse_frame(self, grid: int, frame: VideoFrame, previous: _Sample | None, keep_full: bool) -> _Sample:
        if previous is None:
            size = _fit_size(*frame.rgb.shape[:2], self.config.analysis_size)
        else:
            size = previous.analysis.shape[:2]  # one analysis size per source, even if the video's size changes
        analysis = _resize(frame.rgb, size)
        gray = cv2.cvtColor(analysis, cv2.COLOR_RGB2GRAY)
        sample = _Sample(grid=grid, frame=frame, analysis=analysis, gray=gray, sharpness=_sharpness(gray),
                         brightness=float(gray.mean()) / 255.0, thumbnail=_thumbnail(gray), cut_score=0.0)
        if not keep_full:  # only window ends are saved: drop the full-size picture now
            sample.frame = VideoFrame(frame.index, frame.time, np.empty((0, 0, 3), np.uint8))
        if previous is not None:
            flows = self.estimator(_to_tensor([previous.analysis, analysis]), _to_tensor([analysis, previous.analysis]))
            sample.forward, sample.backward = (np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in flows)
            sample.cut_score = _unexplained_fraction(previous.gray, gray, sample.forward)
        return sample

    def _duplicate_distance(self, first: _Sample, last: _Sample) -> float | None:
        """How far this pair is from the nearest kept pair, relative to its own change.

        ``max(d(input, kept input), d(target, kept target)) / d(input, target)`` with ``d`` the
        mean grey difference of 32x32 thumbnails: below 1, both frames lie closer to a kept
        pair's than to each other (an overlapping window, a repeated take, a loop). ``None``
        while nothing is kept.
        """
        if not self._kept_thumbnails:
            return None
        change = max(float(np.abs(first.thumbnail - last.thumbnail).mean()), 1e-3)
        return min(max(float(np.abs(first.thumbnail - kept_input).mean()),
                       float(np.abs(last.thumbnail - kept_target).mean())) / change
                   for kept_input, kept_target in self._kept_thumbnails)

    def _evaluate(self, source: MiningSource, samples: list[_Sample], writer, keep_images: bool) -> PairResult:
        config = self.config
        first, last = samples[0], samples[-1]
        sample_id = pair_id(source, first.frame.time, last.frame.time)
        common = dict(id=sample_id, video=source.name, time_input=first.frame.time, time_target=last.frame.time,
                      frame_input=first.frame.index, frame_target=last.frame.index)
        output_size = (_fit_size(*first.frame.rgb.shape[:2], config.output_max_side)
                       if config.output_max_side else first.frame.rgb.shape[:2])
        input_image = _resize(first.frame.rgb, output_size)
        target_image = _resize(last.frame.rgb, output_size)
        motion_picture = None
        if writer is not None and sample_id in writer:
            # Resuming: written by an earlier run, so neither analysed nor judged again.
            record = self.existing.get(sample_id)
            result = PairResult(**common, metrics=dict(record.extra.get("metrics", {})) if record else {},
                                reasons=[], details=[], kept=True, existing=True,
                                prompt=record.prompt if record else "",
                                judge=record.extra.get("judge") if record else None)
        else:
            metrics, motion_picture = self._pair_metrics(samples)
            duplicate = self._duplicate_distance(first, last)
            metrics["duplicate_distance"] = None if duplicate is None else round(duplicate, 6)
            failed = _failed_checks(metrics, config)
            prompt, scores = "", None
            if not failed and self.judge is not None:
                scores, prompt, failed = self._ask_judge(input_image, target_image)
            result = PairResult(**common, metrics=metrics, reasons=[code for code, _ in failed],
                                details=[detail for _, detail in failed], kept=not failed, prompt=prompt,
                                judge=scores)
            if result.kept and writer is not None:
                source_record = {"video": source.path or source.name, "video_name": source.name,
                                 "fingerprint": source.fingerprint, "fps": source.fps,
                                 "time_input": first.frame.time, "time_target": last.frame.time,
                                 "frame_input": first.frame.index, "frame_target": last.frame.index}
                fields = {"source": source_record, "metrics": metrics, "mining": config.sampling()}
                if scores is not None:
                    fields["judge"] = scores
                writer.add(sample_id, prompt, frame_to_tensor(input_image), frame_to_tensor(target_image), **fields)
        if result.kept:
            self._kept_thumbnails.append((first.thumbnail, last.thumbnail))
            if keep_images:
                result.input_image, result.target_image = input_image, target_image
        if self.previews:
            small = _fit_size(*first.analysis.shape[:2], 192)
            result.preview = {"input": _resize(first.analysis, small), "target": _resize(last.analysis, small)}
            if motion_picture is not None:
                result.preview["motion"] = _resize(motion_picture, small)
        return result

    def _pair_metrics(self, samples: list[_Sample]) -> tuple[dict[str, float], np.ndarray | None]:
        config = self.config
        first, last = samples[0], samples[-1]
        a, b = first.analysis, last.analysis
        height, width = a.shape[:2]
        diagonal = math.hypot(height, width)
        if config.chain_flow:
            forward = _chain([s.forward for s in samples[1:]])
            backward = _chain([s.backward for s in reversed(samples[1:])])
        else:
            flows = self.estimator(_to_tensor([a, b]), _to_tensor([b, a]))
            forward, backward = (np.ascontiguousarray(f.permute(1, 2, 0).numpy()) for f in flows)
        tolerance = config.flow_tolerance * diagonal
        occluded = forward_backward_occlusion(_flow_tensor(forward), _flow_tensor(backward), alpha1=0.05,
                                              alpha2=tolerance**2)[0, 0].numpy()
        textured = _texture_mask(first.gray, config.min_texture)
        if textured.mean() < 0.01:  # a flat image: judge on every pixel rather than on none
            textured = np.ones_like(textured)
        camera, background = _camera_fit(forward, textured & ~occluded, config.camera_model, tolerance,
                                         config.min_background_fraction)
        residual = forward - camera
        residual_norm = np.linalg.norm(residual, axis=-1) / diagonal
        moving = (residual_norm > config.moving_threshold) & ~occluded
        moving_fraction = float(moving.mean())
        motion = float(residual_norm[moving].mean()) if moving.any() else 0.0
        # Lighting: how the static, visible background's brightness changed, motion-compensated.
        static = ~moving & ~occluded
        warped = _warp_gray(last.gray, forward)
        if static.mean() > 0.02:
            lighting = abs(float(np.median(warped[static] - first.gray[static]))) / 255.0
        else:
            lighting = abs(float(last.gray.mean()) - float(first.gray.mean())) / 255.0
        sharp = (first.sharpness, last.sharpness)
        metrics = {
            "motion": motion,
            "moving_fraction": moving_fraction,
            "subject_flow_mean": float(residual_norm.mean()),
            "flow_mean": float(np.linalg.norm(forward, axis=-1).mean() / diagonal),
            "camera_motion": float(np.linalg.norm(camera, axis=-1).mean() / diagonal),
            "background_fraction": background,
            "occlusion": float(occluded[textured].mean()),
            "cut_score": max(s.cut_score for s in samples[1:]),
            "sharpness": min(sharp),
            "sharpness_ratio": min(sharp) / max(max(sharp), 1e-9),
            "brightness_input": first.brightness,
            "brightness_target": last.brightness,
            "lighting_change": lighting,
        }
        metrics = {key: round(value, 6) for key, value in metrics.items()}
        picture = None
        if self.previews:
            from .flow import flow_to_color
            from .video import tensor_to_frame

            scale = max(config.min_motion * diagonal * 2, float(np.abs(residual).max()), 1e-3)
            picture = tensor_to_frame(flow_to_color(_flow_tensor(np.ascontiguousarray(residual)), max_magnitude=scale)[0])
        return metrics, picture

    def _ask_judge(self, input_image: np.ndarray, target_image: np.ndarray):
        """(scores or None, drafted prompt, [(reason, detail)]) from the judge."""
        config = self.config
        image_a, image_b = frame_to_tensor(input_image), frame_to_tensor(target_image)
        try:
            raw = self.judge.rate_mining_criteria(image_a, image_b)
            scores = {name: float(raw[name]) for name in JUDGE_CRITERIA}
        except Exception as error:  # a judge is a remote service: one failure must not end the run
            return None, "", [("judge_error", f"judge failed: {type(error).__name__}: {error}")]
        failures = [(f"judge_{name}", f"judge {name} {scores[name]:.2f} < min {config.judge_min_score}")
                    for name in JUDGE_CRITERIA if scores[name] < config.judge_min_score]
        if failures:
            return scores, "", failures
        try:
            prompt = str(self.judge.draft_instruction(image_a, image_b)).strip()
        except Exception as error:
            return scores, "", [("judge_error", f"judge could not draft the instruction: {type(error).__name__}: {error}")]
        return scores, prompt, []


# --------------------------------------------------------------------------------------
# Whole runs: several sources into one dataset folder, with a summary.


@dataclass
class MiningSummary:
    """Counts over a run: candidates, kept (new and already present), rejected by reason."""

    candidates: int = 0
    kept: int = 0
    existing: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    analysed_frames: int = 0
    video_seconds: float = 0.0
    seconds: float = 0.0

    def add(self, result: PairResult) -> None:
        self.candidates += 1
        if result.existing:
            self.existing += 1
        elif result.kept:
            self.kept += 1
        else:
            self.rejected += 1
            self.reasons.update(result.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "kept": self.kept, "existing": self.existing,
                "rejected": self.rejected, "reasons": dict(self.reasons.most_common()),
                "analysed_frames": self.analysed_frames, "video_seconds": round(self.video_seconds, 3),
                "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        lines = [f"candidate pairs: {self.candidates}; kept: {self.kept}"
                 + (f" (+{self.existing} already in the dataset)" if self.existing else "")
                 + f"; rejected: {self.rejected}"]
        if self.reasons:
            lines.append("rejected by reason (a pair may fail several checks):")
            lines += [f"  {reason:<24}{count}" for reason, count in self.reasons.most_common()]
        if self.seconds > 0:
            lines.append(f"analysed {self.analysed_frames} frames of {self.video_seconds:.1f} s of video in "
                         f"{self.seconds:.1f} s ({self.analysed_frames / self.seconds:.1f} frames/s, "
                         f"{self.video_seconds / self.seconds:.1f}x real time)")
        return "\n".join(lines)


class RejectionLog:
    """``rejected.jsonl`` next to a dataset: the latest verdict of every rejected pair, by id."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / REJECTIONS_FILE
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records[record["id"]] = record
        self._dirty = False

    def update(self, result: PairResult) -> None:
        if result.kept:
            if self.records.pop(result.id, None) is not None:
                self._dirty = True
            return
        self.records[result.id] = result.record()
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty:
            return
        with atomic_write(self.path, "w") as handle:
            for record in self.records.values():
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._dirty = False


def mine(
    sources: Sequence[MiningSource],
    config: MiningConfig | None = None,
    out: str | os.PathLike | None = None,
    judge=None,
    estimator: FlowEstimator | None = None,
    progress: Callable[[int, int], None] | None = None,
    summary: MiningSummary | None = None,
    keep_images: bool = True,
    previews: bool = False,
) -> Iterator[PairResult]:
    """Mine every source in turn; the one pipeline behind ``motionnft mine`` and the node.

    Args:
        out: dataset folder to append kept pairs to (created; resumable), or None to only
            yield results. Rejections are logged in ``out/rejected.jsonl``.
        progress: ``progress(done, total)`` over the analysed frames of all sources.
        summary: filled in as results are yielded.
    Yields:
        A :class:`PairResult` per candidate pair.
    """
    from .data import DatasetWriter, open_dataset

    miner = PairMiner(config, judge=judge, estimator=estimator, previews=previews)
    summary = summary if summary is not None else MiningSummary()
    totals = [miner.expected_samples(source) for source in sources]
    offset = 0

    def source_progress(index: int):
        def report(done: int, total: int) -> None:
            totals[index] = total
            summary.analysed_frames = offset + done
            if progress is not None:
                progress(offset + done, sum(totals))
        return report

    started = time.perf_counter()
    writer = DatasetWriter(out) if out is not None else None
    log = None
    try:
        if writer is not None:
            writer.__enter__()
            log = RejectionLog(out)
            if len(writer):
                miner.existing = {sample.id: sample for sample in open_dataset(out)}
        for index, source in enumerate(sources):
            for result in miner.mine(source, writer=writer, progress=source_progress(index), keep_images=keep_images):
                summary.add(result)
                if log is not None and not result.existing:
                    log.update(result)
                yield result
            offset += totals[index]
            summary.video_seconds += source.duration
            summary.seconds = time.perf_counter() - started
            if log is not None:
                log.flush()
    finally:
        summary.seconds = time.perf_counter() - started
        if log is not None:
            log.flush()
        if writer is not None:
            writer.__exit__(None, None, None)
