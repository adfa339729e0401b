"""Where mined pairs go: the dataset folder (kept pairs, with where they came from) and its rejection log."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..files import atomic_write
from .config import MiningConfig
from .frames import AnalysedFrame
from .results import PairResult
from .sources import MiningSource

REJECTIONS_FILE = "rejected.jsonl"


def sample_fields(source: MiningSource, first: AnalysedFrame, last: AnalysedFrame, metrics: dict[str, float],
                  config: MiningConfig, scores: dict[str, float] | None) -> dict[str, Any]:
    """What a kept sample records beside its images: its source and timestamps, metrics, settings, judge."""
    source_record = {"video": source.path or source.name, "video_name": source.name,
                     "fingerprint": source.fingerprint, "fps": source.fps,
                     "time_input": first.frame.time, "time_target": last.frame.time,
                     "frame_input": first.frame.index, "frame_target": last.frame.index}
    fields = {"source": source_record, "metrics": metrics, "mining": config.sampling()}
    if scores is not None:
        fields["judge"] = scores
    return fields


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
