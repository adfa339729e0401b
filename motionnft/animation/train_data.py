"""Training data of the animation trainer: videos read once, streamed, as uint8 frames at the
training size, split into a training part and a held-out tail, and (source, driving) pairs."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..video import sample_frames

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".gif")


def video_paths(path: str | os.PathLike) -> list[Path]:
    """One video file, or the video files of a folder (sorted by name)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        if not found:
            raise FileNotFoundError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    return [path]


def square_frame(rgb, size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, size, size)`` uint8: centre square crop, anti-aliased resize."""
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    height, width = image.shape[2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[:, :, top:top + side, left:left + side]
    if side != size:
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return image[0].round().clamp(0, 255).to(torch.uint8)


class VideoFrames:
    """The frames of some videos at the training size, split into training and held-out parts.

    Each video is decoded streamed (one frame at a time) and only its resized copy is kept.

    Attributes:
        videos: one ``(T, 3, size, size)`` uint8 tensor per video.
        train_counts: frames of each video that training draws from (the first ones).
    """

    def __init__(self, videos: list[torch.Tensor], holdout: float = 0.0, names: list[str] | None = None):
        self.videos, self.names = videos, names or [str(i) for i in range(len(videos))]
        self.train_counts = [len(v) - int(round(holdout * len(v))) for v in videos]
        for name, count, video in zip(self.names, self.train_counts, videos):
            if count < 2:
                raise ValueError(f"{name}: {len(video)} frames leave {count} to train on (need 2)")

    @classmethod
    def read(cls, path: str | os.PathLike, size: int, holdout: float = 0.0, sample_fps: float | None = None) -> "VideoFrames":
        videos, names = [], []
        for file in video_paths(path):
            frames = [square_frame(frame.rgb, size) for frame in sample_frames(file, sample_fps or None)]
            if not frames:
                raise ValueError(f"{file}: no frames decoded")
            videos.append(torch.stack(frames))
            names.append(str(file))
        return cls(videos, holdout, names)

    def held_out(self, index: int = 0) -> torch.Tensor:
        """``(T', 3, size, size)`` float in [0, 1]: the held-out frames of video ``index``."""
        return self.videos[index][self.train_counts[index]:].float() / 255

    def pairs(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` (source, driving) pairs ``(B, 3, S, S)`` in [0, 1]: a random video, two
        frames of its training part drawn with replacement, the earlier one the source."""
        sources, drivings = [], []
        for _ in range(batch):
            video = int(torch.randint(len(self.videos), (1,), generator=generator))
            first, second = torch.randint(self.train_counts[video], (2,), generator=generator).sort().values.tolist()
            sources.append(self.videos[video][first])
            drivings.append(self.videos[video][second])
        return torch.stack(sources).float() / 255, torch.stack(drivings).float() / 255
