"""Frames in and out of :func:`.animate.animate`: the working size, the source fitted to it, and
driving frames streamed from a video file or taken one by one from a batch.

Shared by the ``motionnft animate`` command and the Animate Image node, so both resize and
read the same way. Nothing here holds more than one driving frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import TPSMM


def working_size(model: TPSMM, size: int | None = None) -> int:
    """The square frame size to animate at: ``size``, or the model's training size when None / 0.

    ValueError naming ``size`` when the model cannot work at it (see
    :meth:`.model.TPSMM.check_frame_size`).
    """
    chosen = int(size) if size else int(model.config.frame_size)
    if chosen < 1:
        raise ValueError(f"size: expected a positive frame size, got {chosen}")
    try:
        model.check_frame_size(chosen, chosen)
    except ValueError as error:
        raise ValueError(f"size {chosen}: {error}") from None
    return chosen


def fit_source(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(1, 3, H, W)`` / ``(3, H, W)`` in [0, 1] -> ``(1, 3, size, size)``, resized (anti-aliased
    bilinear) as the official demo does (the aspect ratio is not kept)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"source: expected one RGB image (1, 3, H, W), got {tuple(image.shape)}")
    image = image.float()
    if tuple(image.shape[-2:]) != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return image.clamp(0, 1)


def batch_frames(frames: torch.Tensor) -> Iterator[torch.Tensor]:
    """The frames of a ``(B, 3, H, W)`` batch, one ``(1, 3, H, W)`` view at a time."""
    for index in range(frames.shape[0]):
        yield frames[index:index + 1]


@dataclass(frozen=True)
class DrivingVideo:
    """A driving video file read as a stream: its frame rate, announced frame count and frames."""

    source: object
    """A path or a binary file object (what :func:`motionnft.video.sample_frames` reads)."""
    fps: float
    frame_count: int
    """As the container announces it (0 when it does not say); for progress bars."""
    width: int
    height: int

    @classmethod
    def open(cls, source) -> "DrivingVideo":
        """Probe ``source`` (no decoding); FileNotFoundError / ValueError from :mod:`motionnft.video`."""
        from ..video import probe_video

        info = probe_video(source)
        return cls(source, info.fps or 25.0, info.frame_count, info.width, info.height)

    def frames(self) -> Iterator[torch.Tensor]:
        """Every frame, decoded one at a time, as ``(1, 3, H, W)`` float32 in [0, 1]."""
        from ..video import frame_to_tensor, sample_frames

        for frame in sample_frames(self.source):
            yield frame_to_tensor(frame.rgb)
