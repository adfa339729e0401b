"""Synthetic videos with known motion for the miner's tests (encoded with PyAV, in code)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from motionnft.synthetic import MotionClip
from motionnft.video import write_video

CLIP_SIZE = (144, 192)  # (H, W): small, and not square so a transposition would show
CLIP_FPS = 10.0


def clip(kind: str, seconds: float = 3.5, seed: int = 0, **options) -> MotionClip:
    """A clip whose first 3-second window is the one the tests look at."""
    return MotionClip(kind=kind, size=CLIP_SIZE, fps=CLIP_FPS, seconds=seconds, seed=seed, **options)


@contextlib.contextmanager
def one_torch_thread():
    """The renderer's small tensors run fastest on one thread (and far faster than on two
    when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def clip_frames(kind: str, seconds: float = 3.5, seed: int = 0, **options) -> torch.Tensor:
    """Every frame of a clip, ``(T, 3, H, W)`` float in [0, 1]."""
    with one_torch_thread():
        return torch.stack(list(clip(kind, seconds, seed, **options).frames()))


def write_clip(path: Path, kind: str, seconds: float = 3.5, seed: int = 0, **options) -> Path:
    """Render and encode a clip (H.264, near-lossless) to ``path``."""
    motion_clip = clip(kind, seconds, seed, **options)
    with one_torch_thread():
        return write_video(path, motion_clip.frames(), motion_clip.fps, crf=12)
