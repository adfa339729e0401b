"""Video files frame by frame with PyAV: probe, stream-decode at a sampling rate, encode.

Decoding is streamed: :func:`sample_frames` yields one sampled frame at a time and keeps
nothing else, so a long high-resolution clip is read in bounded memory. Frames are
``(H, W, 3)`` uint8 RGB numpy arrays (the cheapest form to hold and resize); convert with
:func:`frame_to_tensor` where the library wants ``(1, 3, H, W)`` floats.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Union

import numpy as np
import torch

from .files import atomic_write

class VideoWarning(UserWarning):
    """A video was read only in part (truncated or damaged): the frames after the stop are missing."""


VideoSource = Union[str, os.PathLike, BinaryIO]
"""A video file path, or an open binary file object (e.g. ``io.BytesIO``) holding one."""


def _import_av():
    try:
        import av
    except ImportError:
        raise ImportError("reading and writing video needs PyAV: pip install av") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream."""

    name: str
    """The file name, or ``"<stream>"`` for a file object."""
    width: int
    height: int
    fps: float
    """Average frame rate (frames per second)."""
    duration: float
    """Seconds; estimated from the frame count when the container does not say."""
    frame_count: int
    """Frames, as stated by the container or estimated from duration and fps."""
    codec: str


@dataclass
class VideoFrame:
    """One decoded frame."""

    index: int
    """Its position among the decoded frames of the stream (0-based)."""
    time: float
    """Presentation time in seconds from the stream's start."""
    rgb: np.ndarray
    """``(H, W, 3)`` uint8 RGB."""


def _describe(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or "<stream>"


def _open(source: VideoSource):
    av = _import_av()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: {path}")
        target = str(path)
    else:
        source.seek(0)
        target = source
    try:
        container = av.open(target, mode="r")
    except (av.error.FFmpegError, ValueError) as error:
        raise ValueError(f"cannot read {_describe(source)} as a video: {error}") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"{_describe(source)} holds no video stream")
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        container.close()  # FFmpeg reads a still image as a one-frame video
        raise ValueError(f"{_describe(source)} is a still image ({container.format.name}), not a video")
    return container


def probe_video(source: VideoSource) -> VideoInfo:
    """Size, frame rate, duration and frame count of the first video stream (no decoding)."""
    with _open(source) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = int(stream.frames or 0)
        if not frames and duration and fps:
            frames = int(round(duration * fps))
        if not duration and frames and fps:
            duration = frames / fps
        name = Path(_describe(source)).name
        return VideoInfo(name, stream.codec_context.width, stream.codec_context.height, fps, duration, frames,
                         stream.codec_context.name)


def source_fingerprint(source: VideoSource, chunk: int = 1 << 20) -> str:
    """A short content hash of a video (size + first and last MiB): stable across renames.

    Hashing only the ends keeps this instant for multi-GB files while telling apart any two
    real clips (their container headers and final packets differ).
    """
    digest = hashlib.sha1()
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest.update(str(size).encode())
            digest.update(handle.read(chunk))
            if size > chunk:
                handle.seek(max(chunk, size - chunk))
                digest.update(handle.read(chunk))
    else:
        position = source.tell()
        source.seek(0, io.SEEK_END)
        size = source.tell()
        digest.update(str(size).encode())
        source.seek(0)
        digest.update(source.read(chunk))
        if size > chunk:
            source.seek(max(chunk, size - chunk))
            digest.update(source.read(chunk))
        source.seek(position)
    return digest.hexdigest()[:10]


class TimeSampler:
    """Picks frames at about ``sample_fps`` by their timestamps.

    A frame is taken when its time reaches the next point of the grid ``k / sample_fps``
    (within half a frame), so samples follow the timestamps even in variable-frame-rate
    files, and grid points a frame has already passed (a gap, a low frame rate) are skipped.
    ``sample_fps=None`` takes every frame.
    """

    def __init__(self, sample_fps: float | None, fps: float):
        if sample_fps is not None and not sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
        self.step = None if sample_fps is None else 1.0 / sample_fps
        self.tolerance = 0.5 / fps if fps > 0 else 0.0
        self.next_time = 0.0

    def take(self, time: float) -> bool:
        if time + self.tolerance < self.next_time:
            return False
        if self.step is not None:
            self.next_time = (math.floor((time + self.tolerance) / self.step) + 1) * self.step
        return True


def sample_frames(source: VideoSource, sample_fps: float | None = None) -> Iterator[VideoFrame]:
    """Stream-decode a video and yield frames at about ``sample_fps`` (``None``: every frame).

    Frames are picked by :class:`TimeSampler`; times count from the stream's first frame.
    Only a yielded frame is converted to RGB and nothing is kept after it is yielded, so
    memory does not grow with the video's length.
    """
    if sample_fps is not None and not sample_fps > 0:
        raise ValueError(f"sample_fps must be > 0, got {sample_fps}")
    av = _import_av()
    with _open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        sampler = TimeSampler(sample_fps, fps)
        expected = _expected_frames(stream, container, fps)
        first_time, decoded, stopped_by = None, 0, None
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as error:  # damaged data: keep what was read, say where it stopped
                stopped_by = error
                break
            index, decoded = decoded, decoded + 1
            time = frame.time
            if time is None:
                time = index / fps
            if first_time is None:
                first_time = time
            time -= first_time  # streams may start at a non-zero pts
            if sampler.take(time):
                yield VideoFrame(index=index, time=round(time, 6), rgb=frame.to_ndarray(format="rgb24"))
        if stopped_by is not None or (expected and decoded < expected - max(2, expected // 50)):
            warnings.warn(VideoWarning(
                f"{_describe(source)}: decoding stopped after {decoded} of {expected or '?'} frames "
                f"({decoded / fps:.2f} s of {expected / fps:.2f} s)" + (f": {stopped_by}" if stopped_by else "")
                + "; the file looks truncated or damaged, the rest is not used"), stacklevel=2)


def _expected_frames(stream, container, fps: float) -> int:
    """The frame count a video's header announces (0 if it does not say)."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * fps))
    return int(round(container.duration / 1_000_000 * fps)) if container.duration else 0


def frame_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def tensor_to_frame(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` / ``(1, 3, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8."""
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray | torch.Tensor],
    fps: float,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "veryfast",
) -> Path:
    """Encode frames into a video file atomically (``.mp4``, ``.mkv``, ``.mov`` ...).

    Args:
        frames: ``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` / ``(1, 3, H, W)`` float tensors in
            [0, 1], all of one size; consumed one at a time (a generator keeps memory flat).
        codec: an FFmpeg encoder PyAV offers (``libx264``, ``mpeg4``, ``libvpx-vp9``, ...).
        crf, preset: quality and speed of x264 (ignored by other encoders).
    """
    av = _import_av()
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    container_format = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm",
                        ".avi": "avi"}.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(f"cannot write {path}: unknown video suffix {path.suffix!r} (use .mp4, .mkv, .mov, .webm)")
    count = 0
    with atomic_write(path, "wb") as handle:
        with av.open(handle, mode="w", format=container_format) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": preset}
            for frame in frames:
                if isinstance(frame, torch.Tensor):
                    frame = tensor_to_frame(frame)
                if count == 0:
                    height, width = frame.shape[:2]
                    if height % 2 or width % 2:
                        raise ValueError(f"frame size {width}x{height}: yuv420p video needs even width and height")
                    stream.width, stream.height = width, height
                elif frame.shape[:2] != (stream.height, stream.width):
                    raise ValueError(
                        f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was {stream.width}x{stream.height}"
                    )
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                    container.mux(packet)
                count += 1
            if count == 0:
                raise ValueError(f"cannot write {path}: no frames")
            for packet in stream.encode():
                container.mux(packet)
    return path
