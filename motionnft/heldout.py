"""Held-out evaluation of an editing policy: fixed prompts, fixed noise, K rollouts each.

The trainer measures its policy on prompts it never trains on, before the first optimiser
step and after the last, with the same noise for every measurement, so the two are
paired rollout by rollout. Per held-out prompt it records, over its K rollouts:

- the motion reward (the training reward, six levels) and its continuous value;
- MAS (0–100);
- the share of rollouts that **performed the instructed motion**
  (:func:`performed_motion`: the edit's flow is nearer the ground truth's flow than
  no motion at all, by a margin).

Means are over prompts, ``±`` is the standard error over prompts, and a change is the
mean of the per-prompt differences with its own standard error (a paired comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

METRICS = ("reward", "reward_continuous", "mas", "performed")
"""Per-rollout metrics recorded by :class:`HeldoutScores`, in table order."""

LABELS = {"reward": "motion reward", "reward_continuous": "continuous reward", "mas": "MAS",
          "performed": "performed the motion"}


def performed_motion(flow_edit: torch.Tensor, flow_target: torch.Tensor, moving_threshold: float = 0.5,
                     margin: float = 0.5) -> torch.Tensor:
    """Whether each edit performed the ground truth's motion: ``(B,)`` bool.

    On the pixels where the ground truth moves (``‖Vg‖ > moving_threshold`` px), the mean
    end-point error of the edit's flow must be below ``margin`` times the mean ground-truth
    motion there. Not moving at all has an error of exactly that mean (ratio 1); moving
    the wrong way has more; an edit that moves the right parts roughly as far as asked has
    less. A ground truth that does not move counts as performed when the edit does not
    move either (mean ``‖Vp‖`` ≤ ``moving_threshold``).

    Args:
        flow_edit: ``(B, 2, H, W)`` flow from the input to each edit, pixels.
        flow_target: ``(B, 2, H, W)`` or ``(1, 2, H, W)`` flow from the input to the
            ground truth, pixels.
        moving_threshold: pixels of ground-truth motion for a pixel to count as moving.
        margin: the largest error, as a share of the ground-truth motion, that counts.

    Example:
        >>> target = torch.zeros(1, 2, 8, 8); target[:, 0, 2:6, 2:6] = 4.0
        >>> performed_motion(torch.cat((target, torch.zeros_like(target))), target).tolist()
        [True, False]
    """
    if flow_edit.ndim != 4 or flow_edit.shape[1] != 2:
        raise ValueError(f"flow_edit: expected (B, 2, H, W), got {tuple(flow_edit.shape)}")
    if flow_target.ndim != 4 or flow_target.shape[1] != 2 or flow_target.shape[-2:] != flow_edit.shape[-2:]:
        raise ValueError(f"flow_target: expected (B, 2, {flow_edit.shape[-2]}, {flow_edit.shape[-1]}), "
                         f"got {tuple(flow_target.shape)}")
    flow_target = flow_target.expand_as(flow_edit)
    speed = flow_target.norm(dim=1)
    moving = (speed > moving_threshold).flatten(1).float()
    count = moving.sum(1)
    error = ((flow_edit - flow_target).norm(dim=1).flatten(1) * moving).sum(1) / count.clamp_min(1)
    motion = (speed.flatten(1) * moving).sum(1) / count.clamp_min(1)
    still_target = flow_edit.norm(dim=1).flatten(1).mean(1) <= moving_threshold
    return torch.where(count > 0, error < margin * motion, still_target)


def mean_and_error(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, math.sqrt(variance / n)


@dataclass
class HeldoutScores:
    """Per-rollout scores of ``P`` held-out prompts × ``K`` rollouts.

    Attributes:
        ids: the ``P`` sample ids, in order.
        step: the optimiser step the policy had taken.
        scores: metric name -> ``(P, K)`` float tensor (``performed`` as 0/1).
        images: ``(P', K, 3, H, W)`` rollouts of the first ``P'`` prompts, for sample sheets.
    """

    ids: list[str]
    step: int
    scores: dict[str, torch.Tensor]
    images: torch.Tensor | None = field(default=None, repr=False)

    def per_prompt(self, metric: str) -> list[float]:
        """The metric's mean over each prompt's rollouts, ``P`` values."""
        return self.scores[metric].float().mean(dim=1).tolist()

    def summary(self) -> dict[str, tuple[float, float]]:
        """Metric -> (mean over prompts, standard error over prompts)."""
        return {metric: mean_and_error(self.per_prompt(metric)) for metric in self.scores}

    def to_dict(self) -> dict:
        return {"step": self.step, "ids": list(self.ids),
                "scores": {k: v.tolist() for k, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "HeldoutScores":
        return cls(list(data["ids"]), int(data["step"]), {k: torch.tensor(v) for k, v in data["scores"].items()})


def paired_change(before: HeldoutScores, after: HeldoutScores, metric: str) -> tuple[float, float]:
    """Mean and standard error of the per-prompt change ``after − before`` of ``metric``."""
    if before.ids != after.ids:
        raise ValueError("held-out scores of different prompts cannot be paired")
    return mean_and_error([a - b for a, b in zip(after.per_prompt(metric), before.per_prompt(metric))])


def format_comparison(before: HeldoutScores, after: HeldoutScores) -> str:
    """The held-out table printed at the end of a run: before, after and the paired change."""
    prompts, rollouts = before.scores["reward"].shape
    digits = {"reward": 3, "reward_continuous": 3, "mas": 2, "performed": 3}
    lines = [f"held-out: {prompts} prompts x {rollouts} rollouts, the same noise before and after; "
             f"mean ± standard error over prompts",
             f"{'':22s}{'before (step ' + str(before.step) + ')':>22s}{'after (step ' + str(after.step) + ')':>22s}"
             f"{'change':>22s}"]
    first, second = before.summary(), after.summary()
    for metric in METRICS:
        d = digits[metric]
        change = paired_change(before, after, metric)
        cells = [f"{first[metric][0]:.{d}f} ± {first[metric][1]:.{d}f}",
                 f"{second[metric][0]:.{d}f} ± {second[metric][1]:.{d}f}",
                 f"{change[0]:+.{d}f} ± {change[1]:.{d}f}"]
        lines.append(f"{LABELS[metric]:22s}" + "".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


RolloutFn = Callable[[int], torch.Tensor]
"""``rollouts(prompt_index) -> (K, 3, H, W)`` edits of one held-out prompt in [0, 1]."""


def score_heldout(ids: Sequence[str], rollouts: RolloutFn, score: Callable[[int, torch.Tensor], dict],
                  step: int, keep_images: int = 0, progress: Callable[[], None] | None = None) -> HeldoutScores:
    """Run ``rollouts`` for every held-out prompt and score them.

    Args:
        ids: sample ids of the ``P`` prompts.
        rollouts: the policy's edits of prompt ``i``, ``(K, 3, H, W)``.
        score: ``score(i, edits)`` -> metric name -> ``(K,)`` tensor, for every name in
            :data:`METRICS`.
        step: recorded with the scores.
        keep_images: keep the edits of the first this many prompts.
        progress: called after each prompt.
    """
    columns: dict[str, list[torch.Tensor]] = {metric: [] for metric in METRICS}
    kept = []
    for index in range(len(ids)):
        edits = rollouts(index)
        values = score(index, edits)
        for metric in METRICS:
            columns[metric].append(values[metric].detach().float().cpu())
        if index < keep_images:
            kept.append(edits.detach().float().cpu())
        if progress is not None:
            progress()
    return HeldoutScores(list(ids), step, {k: torch.stack(v) for k, v in columns.items()},
                         torch.stack(kept) if kept else None)


def image_grid(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Rows of ``(3, H, W)`` or ``(N, 3, H, W)`` images laid side by side: ``(3, rows·H, columns·W)``."""
    lines = []
    for row in rows:
        tiles = [tile for part in row for tile in (part if part.ndim == 4 else part.unsqueeze(0))]
        lines.append(torch.cat([t.float().cpu() for t in tiles], dim=-1))
    return torch.cat(lines, dim=-2)
