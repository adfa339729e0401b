"""Whole runs: several sources mined into one dataset folder, with a summary."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, Sequence

from ..flow import FlowEstimator
from .config import MiningConfig
from .dataset import RejectionLog
from .miner import PairMiner
from .results import MiningSummary, PairResult
from .sources import MiningSource


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
    from ..data import DatasetWriter, open_dataset

    miner = PairMiner(config, judge=judge, estimator=estimator, previews=previews)
    summary = summary if summary is not None else MiningSummary()
    frames = _RunProgress([miner.expected_samples(source) for source in sources], summary, progress)
    started = time.perf_counter()
    writer = DatasetWriter(out) if out is not None else None
    log = None
    try:
        if writer is not None:
            writer.__enter__()
            log = RejectionLog(out)
            summary.missing_images = len(writer.missing_images)
            if len(writer):
                miner.existing = {sample.id: sample for sample in open_dataset(out)}
        for index, source in enumerate(sources):
            for result in miner.mine(source, writer=writer, progress=frames.of_source(index), keep_images=keep_images):
                summary.add(result)
                if log is not None and not result.existing:
                    log.update(result)
                yield result
            frames.finished(index)
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


class _RunProgress:
    """Turns each source's ``(done, total)`` into the run's, over the analysed frames of all sources."""

    def __init__(self, totals: list[int], summary: MiningSummary, progress: Callable[[int, int], None] | None):
        self.totals, self.summary, self.progress = totals, summary, progress
        self.offset = 0  # frames analysed in the sources before the current one

    def finished(self, index: int) -> None:
        self.offset += self.totals[index]

    def of_source(self, index: int) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            self.totals[index] = total  # a source may hold more frames than its duration promised
            self.summary.analysed_frames = self.offset + done
            if self.progress is not None:
                self.progress(self.offset + done, sum(self.totals))
        return report
