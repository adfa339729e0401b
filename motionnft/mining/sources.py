"""What is mined: a video file, an open file object, or frames already in memory, with a content hash."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..video import TimeSampler, VideoFrame, VideoSource, probe_video, sample_frames, source_fingerprint


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
