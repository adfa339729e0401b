"""What mining reports: one :class:`PairResult` per candidate pair, a :class:`MiningSummary` per run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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


@dataclass
class MiningSummary:
    """Counts over a run: candidates, kept (new and already present), rejected by reason."""

    candidates: int = 0
    kept: int = 0
    existing: int = 0
    missing_images: int = 0  #: pairs of the dataset whose image files were gone on resume (made again)
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
                "missing_images": self.missing_images, "rejected": self.rejected, "reasons": dict(self.reasons.most_common()),
                "analysed_frames": self.analysed_frames, "video_seconds": round(self.video_seconds, 3),
                "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        lines = [f"candidate pairs: {self.candidates}; kept: {self.kept}"
                 + (f" (+{self.existing} already in the dataset)" if self.existing else "")
                 + f"; rejected: {self.rejected}"]
        if self.missing_images:
            lines.append(f"{self.missing_images} pair(s) of the dataset had lost their image files: "
                         "dropped from metadata.jsonl and mined again")
        if self.reasons:
            lines.append("rejected by reason (a pair may fail several checks):")
            lines += [f"  {reason:<24}{count}" for reason, count in self.reasons.most_common()]
        if self.seconds > 0:
            lines.append(f"analysed {self.analysed_frames} frames of {self.video_seconds:.1f} s of video in "
                         f"{self.seconds:.1f} s ({self.analysed_frames / self.seconds:.1f} frames/s, "
                         f"{self.video_seconds / self.seconds:.1f}x real time)")
        return "\n".join(lines)
