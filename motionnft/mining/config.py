"""How candidate pairs are formed and every threshold that decides which are kept."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..flow import PRECISIONS, get_backend

PAIRINGS = ("endpoints", "sliding")
CAMERA_MODELS = ("homography", "affine", "similarity")


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
    save_flow: bool = _setting(False, "also save each kept pair's flow (images/<id>_flow.flo, input -> target in "
                               "pixels of the saved input) and moving region (images/<id>_mask.png, white = moving): "
                               "training data for FlowGen and FlowDiffusion (motionnft train-drag)")
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
