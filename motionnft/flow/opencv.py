"""Weight-free OpenCV backends: DIS (the default) and Farneback."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..image import to_gray_uint8
from .base import FlowBackend, FlowEstimator, ProgressCallback, register_backend

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _padded_size(height: int, width: int, patch: int, finest: int) -> tuple[int, int]:
    """The smallest size >= (height, width) whose pyramid reaches the preset's finest scale.

    DIS derives its coarsest scale from the image size; below these sizes the coarsest
    falls under the finest scale and OpenCV refuses the image or crashes (seen: 16x300
    at the fast preset).
    """
    short = patch * 2**finest
    long = math.ceil(4 * patch * 2 ** (finest - 0.5))
    height, width = max(height, short), max(width, short)
    if max(height, width) < long:
        if height >= width:
            height = long
        else:
            width = long
    return height, width


class _OpenCVFlow(FlowEstimator):
    """Runs a grey-level OpenCV flow method pair by pair on the CPU."""

    def _calc(self, gray1: np.ndarray, gray2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _min_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def estimate(self, image1, image2, progress: ProgressCallback | None) -> torch.Tensor:
        gray1, gray2 = to_gray_uint8(image1), to_gray_uint8(image2)
        batch, height, width = gray1.shape
        padded_h, padded_w = self._min_size(height, width)
        pad_y, pad_x = padded_h - height, padded_w - width
        out = np.empty((batch, height, width, 2), dtype=np.float32)
        for index in range(batch):
            a, b = gray1[index], gray2[index]
            if pad_y or pad_x:
                # Edge-replicated padding below and right: the image's own pixels keep
                # their coordinates, and the flow is cropped back.
                a = cv2.copyMakeBorder(a, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
                b = cv2.copyMakeBorder(b, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
            out[index] = self._calc(a, b)[:height, :width]
            if progress is not None:
                progress(index + 1, batch)
        return torch.from_numpy(out).permute(0, 3, 1, 2)


class DISFlow(_OpenCVFlow):
    """OpenCV's Dense Inverse Search flow (Kroeger et al. 2016) at a speed/accuracy preset.

    RubberWhale EPE: ultrafast 0.54, fast 0.44, medium 0.22 px. Accurate for small and
    moderate motion; it fails on large displacements (tens of pixels at 512²).
    """

    name = "dis"

    def __init__(self, preset: str = "medium"):
        if preset not in DIS_PRESETS:
            raise ValueError(f"DIS preset {preset!r}: expected one of {', '.join(DIS_PRESETS)}")
        self.preset = preset

    def _new_dis(self):
        return cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])

    def _min_size(self, height, width):
        dis = self._new_dis()
        return _padded_size(height, width, dis.getPatchSize(), dis.getFinestScale())

    def _calc(self, gray1, gray2):
        # A fresh DIS object per pair (~5 µs): OpenCV lowers the finest pyramid scale of
        # an object that met a small image and keeps it lowered, which would silently
        # change the preset for every later call.
        return self._new_dis().calc(gray1, gray2, None)

    def __repr__(self) -> str:
        return f"DISFlow(preset={self.preset!r})"


class FarnebackFlow(_OpenCVFlow):
    """OpenCV's Farneback polynomial-expansion flow (RubberWhale EPE 0.36 px)."""

    name = "farneback"

    def __init__(self, preset: str = "default"):
        self.preset = preset

    def _calc(self, gray1, gray2):
        return cv2.calcOpticalFlowFarneback(gray1, gray2, None, 0.5, 3, 15, 3, 5, 1.2, 0)


register_backend(
    FlowBackend(
        name="dis",
        factory=DISFlow,
        presets=tuple(DIS_PRESETS),
        default_preset="medium",
        description="OpenCV DIS, no weights needed",
    )
)
register_backend(
    FlowBackend(
        name="farneback",
        factory=FarnebackFlow,
        presets=("default",),
        default_preset="default",
        description="OpenCV Farneback, no weights needed",
    )
)
