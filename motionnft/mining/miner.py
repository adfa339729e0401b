"""The miner: streams a source's frames, analyses each once, and judges the end pair of every window."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..flow import FlowEstimator, chain_flows, create_estimator, resize_flow
from ..video import VideoFrame, frame_to_tensor
from .checks import ask_judge, check_judge, failed_checks
from .config import MiningConfig
from .dataset import sample_fields
from .filters import occlusion_mask, unexplained_fraction
from .frames import AnalysedFrame, analyse_frame, duplicate_distance, fit_size, resize
from .metrics import METRIC_DIGITS, motion_picture, pair_metrics
from .results import PairResult
from .sources import MiningSource, pair_id

PREVIEW_SIDE = 192


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with ``count`` torch CPU threads (0: unchanged), then restore the setting.

    Entered around each analysis step only, never across a ``yield``, so the caller's
    setting holds whenever the caller runs.
    """
    previous = torch.get_num_threads()
    if count and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count and count != previous:
            torch.set_num_threads(previous)


class PairMiner:
    """Scores the candidate pairs of videos and writes the kept ones to a dataset.

    Args:
        config: sampling and thresholds.
        judge: ``None``, or an object with ``rate_mining_criteria(input, target) -> dict`` and
            ``draft_instruction(input, target) -> str`` (images ``(1, 3, H, W)`` in [0, 1]).
            It sees only the pairs the automatic filters keep.
        estimator: a flow estimator; default: the one ``config``'s backend, preset, weights,
            precision and device describe (:func:`motionnft.flow.create_estimator`).
        previews: attach small preview pictures to every result (for contact sheets).
    """

    def __init__(self, config: MiningConfig | None = None, judge=None, estimator: FlowEstimator | None = None,
                 previews: bool = False):
        self.config = config or MiningConfig()
        check_judge(judge)
        self.judge = judge
        self.estimator = estimator or create_estimator(
            self.config.backend, self.config.preset,
            weights=self.config.weights, precision=self.config.precision, device=self.config.device,
        )
        self.previews = previews
        self.existing: dict[str, Any] = {}
        """Samples already in the output dataset by id (their metrics and prompts are reported)."""
        self._kept_thumbnails: list[tuple[np.ndarray, np.ndarray]] = []

    # Sampling grid -------------------------------------------------------------------
    def _grid(self, source: MiningSource) -> tuple[float, int, int]:
        """(effective sample fps, window length in samples, stride in samples)."""
        config = self.config
        sample_fps = min(config.sample_fps, source.fps) if source.fps > 0 else config.sample_fps
        window = max(1, round(config.window_seconds * sample_fps))
        if config.stride_seconds is not None:
            stride = max(1, round(config.stride_seconds * sample_fps))
        else:
            stride = window if config.pairing == "endpoints" else 1
        return sample_fps, window, stride

    def expected_samples(self, source: MiningSource) -> int:
        """About how many frames will be analysed (for progress bars)."""
        sample_fps, _, _ = self._grid(source)
        return max(1, math.ceil(source.duration * sample_fps - 1e-6))

    # Main loop -----------------------------------------------------------------------
    def mine(self, source: MiningSource, writer=None, progress: Callable[[int, int], None] | None = None,
             keep_images: bool = True) -> Iterator[PairResult]:
        """Yield a :class:`PairResult` for every candidate pair of ``source``, in time order.

        Args:
            writer: an open :class:`motionnft.data.DatasetWriter`; kept pairs are added to it
                and pairs whose id it already holds are skipped (``existing=True``).
            progress: ``progress(done, total)`` after each analysed frame; may raise to cancel.
            keep_images: attach the full-size frames to kept results.
        """
        threads = self.config.torch_threads
        sample_fps, window, stride = self._grid(source)
        total = self.expected_samples(source)
        buffer: dict[int, AnalysedFrame] = {}  # the current window's samples by grid index
        previous: AnalysedFrame | None = None
        done = 0
        for frame in source.frames(sample_fps):
            grid = round(frame.time * sample_fps)
            if previous is not None and grid <= previous.grid:
                continue
            endpoint = grid % stride == 0 or (grid >= window and (grid - window) % stride == 0)
            with torch_threads(threads):
                sample = self._analyse_frame(grid, frame, previous, keep_full=endpoint)
            buffer[grid] = previous = sample
            done += 1
            if progress is not None:
                total = max(total, done)
                progress(done, total)
            start = grid - window
            if start >= 0 and start % stride == 0 and start in buffer:
                window_samples = [buffer[g] for g in sorted(buffer) if start <= g <= grid]
                with torch_threads(threads):
                    result = self._evaluate(source, window_samples, writer, keep_images)
                del window_samples  # a generator's locals live on while it waits at the yield
                yield result
            for old in [g for g in buffer if g <= grid - window]:
                del buffer[old]
        if progress is not None and done:
            progress(done, done)

    # Frames --------------------------------------------------------------------------
    def _analyse_frame(self, grid: int, frame: VideoFrame, previous: AnalysedFrame | None,
                       keep_full: bool) -> AnalysedFrame:
        if previous is None:
            size = fit_size(*frame.rgb.shape[:2], self.config.analysis_size)
        else:
            size = previous.analysis.shape[:2]  # one analysis size per source, even if the video's size changes
        sample = analyse_frame(grid, frame, size)
        if not keep_full:  # only window ends are saved: drop the full-size picture now
            sample.frame = VideoFrame(frame.index, frame.time, np.empty((0, 0, 3), np.uint8))
        if previous is not None:
            sample.forward, sample.backward = self._flows(previous.analysis, sample.analysis)
            sample.cut_score = unexplained_fraction(previous.gray, sample.gray, sample.forward)
        return sample

    def _flows(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Flows ``a -> b`` and ``b -> a`` (``(1, 2, h, w)`` float32, pixels) in one estimator batch."""
        flows = self.estimator(_to_tensor([a, b]), _to_tensor([b, a]))
        return flows[0:1], flows[1:2]

    def _window_flows(self, samples: list[AnalysedFrame]) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward flow between the window's ends: the window's steps chained, or direct."""
        if self.config.chain_flow:
            forwards, backwards = [s.forward for s in samples[1:]], [s.backward for s in reversed(samples[1:])]
            return chain_flows(forwards), chain_flows(backwards)
        return self._flows(samples[0].analysis, samples[-1].analysis)

    # Pairs ---------------------------------------------------------------------------
    def _evaluate(self, source: MiningSource, samples: list[AnalysedFrame], writer, keep_images: bool) -> PairResult:
        first, last = samples[0], samples[-1]
        sample_id = pair_id(source, first.frame.time, last.frame.time)
        common = dict(id=sample_id, video=source.name, time_input=first.frame.time, time_target=last.frame.time,
                      frame_input=first.frame.index, frame_target=last.frame.index)
        output_max_side = self.config.output_max_side
        output_size = (fit_size(*first.frame.rgb.shape[:2], output_max_side)
                       if output_max_side else first.frame.rgb.shape[:2])
        input_image = resize(first.frame.rgb, output_size)
        target_image = resize(last.frame.rgb, output_size)
        picture = None
        if writer is not None and sample_id in writer:
            result = self._existing_result(common)
        else:
            result, picture, flows = self._judge_pair(common, samples, input_image, target_image)
            if result.kept and writer is not None:
                files = pair_flow_files(*flows, output_size, self.config) if self.config.save_flow else {}
                writer.add(sample_id, result.prompt, frame_to_tensor(input_image), frame_to_tensor(target_image),
                           **files, **sample_fields(source, first, last, result.metrics, self.config, result.judge))
        if result.kept:
            self._kept_thumbnails.append((first.thumbnail, last.thumbnail))
            if keep_images:
                result.input_image, result.target_image = input_image, target_image
        if self.previews:
            result.preview = _preview(first, last, picture)
        return result

    def _existing_result(self, common: dict[str, Any]) -> PairResult:
        """A pair an earlier run wrote: reported from the dataset, neither analysed nor judged again."""
        record = self.existing.get(common["id"])
        return PairResult(**common, metrics=dict(record.extra.get("metrics", {})) if record else {},
                          reasons=[], details=[], kept=True, existing=True,
                          prompt=record.prompt if record else "",
                          judge=record.extra.get("judge") if record else None)

    def _judge_pair(self, common: dict[str, Any], samples: list[AnalysedFrame], input_image: np.ndarray,
                    target_image: np.ndarray) -> tuple[PairResult, np.ndarray | None, tuple[torch.Tensor, torch.Tensor]]:
        """The verdict on a new pair (metrics, checks, then the judge), with previews its motion picture,
        and its flows at the analysis size (first -> last, and what is left once the camera's is removed)."""
        config = self.config
        first, last = samples[0], samples[-1]
        forward, backward = self._window_flows(samples)
        metrics, residual = pair_metrics(first, last, forward, backward, max(s.cut_score for s in samples[1:]), config)
        duplicate = duplicate_distance(first.thumbnail, last.thumbnail, self._kept_thumbnails)
        metrics["duplicate_distance"] = None if duplicate is None else round(duplicate, METRIC_DIGITS)
        failed = failed_checks(metrics, config)
        prompt, scores = "", None
        if not failed and self.judge is not None:
            scores, prompt, failed = ask_judge(self.judge, input_image, target_image, config.judge_min_score)
        result = PairResult(**common, metrics=metrics, reasons=[code for code, _ in failed],
                            details=[detail for _, detail in failed], kept=not failed, prompt=prompt, judge=scores)
        return result, motion_picture(residual, config.min_motion) if self.previews else None, (forward, backward, residual)


def pair_flow_files(forward: torch.Tensor, backward: torch.Tensor, residual: torch.Tensor,
                    output_size: tuple[int, int], config: MiningConfig) -> dict[str, torch.Tensor]:
    """A kept pair's flow and moving region at the saved images' size, for ``DatasetWriter.add``.

    Args:
        forward: ``(1, 2, h, w)`` pixels at the analysis size, first -> last frame.
        backward: ``(1, 2, h, w)`` pixels, last -> first frame.
        residual: ``(1, 2, h, w)`` pixels, ``forward`` less the camera's motion.
        output_size: ``(H, W)`` of the saved images.
    Returns:
        ``{"flow": (2, H, W) pixels, "mask": (H, W) in {0, 1}}``: a pixel moves where its
        residual exceeds ``moving_threshold`` of the diagonal (the metrics' rule) and a fifth of
        the subject's motion (the 99th percentile), and it passes the forward-backward check:
        flow noise in flat background, a pixel or two, and background the subject covers (whose
        flow is undefined) stay out of the mask of a subject that moved tens of pixels.
    """
    flow = resize_flow(forward.float(), tuple(output_size))[0]
    length = residual.float().norm(dim=1, keepdim=True)
    threshold = max(config.moving_threshold * math.hypot(*residual.shape[-2:]), 0.2 * float(length.quantile(0.99)))
    tolerance = config.flow_tolerance * math.hypot(*residual.shape[-2:])
    visible = torch.from_numpy(~occlusion_mask(forward, backward, tolerance)).reshape(length.shape)
    moving = (length > threshold) & visible
    mask = F.interpolate(moving.float(), size=tuple(output_size), mode="nearest")[0, 0]
    return {"flow": flow, "mask": mask}


def _to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.cat([frame_to_tensor(image) for image in images])


def _preview(first: AnalysedFrame, last: AnalysedFrame, motion: np.ndarray | None) -> dict[str, np.ndarray]:
    small = fit_size(*first.analysis.shape[:2], PREVIEW_SIDE)
    preview = {"input": resize(first.analysis, small), "target": resize(last.analysis, small)}
    if motion is not None:
        preview["motion"] = resize(motion, small)
    return preview
