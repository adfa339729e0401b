"""The images a MotionNFT run writes: the reward curve, sample grids and held-out sheets.

Images are ``(3, H, W)`` float tensors in [0, 1] (:mod:`motionnft.image`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .metrics import MetricsLog, moving_average


def reward_curve(log: MetricsLog, heldout: list, model_name: str, path: Path) -> None:
    """``reward_curve.png``: the motion reward per step and its 5-step average, MAS / 100, the
    raw reward when a judge rates, and the held-out scores measured so far."""
    from ..image import save_image
    from ..plot import render_curves

    if not log.rows:
        return
    series = {"motion reward (step mean)": log.series("motion_reward_mean"),
              "motion reward, 5-step average": moving_average(log.series("motion_reward_mean"), 5),
              "MAS / 100, 5-step average": [(x, y / 100) for x, y in moving_average(log.series("mas_mean"), 5)]}
    if log.series("judge_mean"):
        series["raw reward (step mean)"] = log.series("reward_mean")
    if heldout:
        series["held-out: performed the motion"] = [(s.step, s.summary()["performed"][0]) for s in heldout]
        series["held-out: MAS / 100"] = [(s.step, s.summary()["mas"][0] / 100) for s in heldout]
    figure = render_curves(series, title=f"MotionNFT on {model_name}", x_label="optimiser step", y_range=(0.0, 1.0))
    save_image(figure, path)


def sample_grid(last_samples: list | None, path: Path) -> None:
    """One row: the first prompt of the last step, its input, target and rollouts ``(K, 3, H, W)``."""
    from ..image import save_image

    if not last_samples:
        return
    _, entry, _, images = last_samples[0]
    row = torch.cat([entry.input_image.cpu(), entry.target_image.cpu(), images], dim=0)
    grid = torch.cat(list(row), dim=-1)
    save_image(grid, path)


def heldout_before_sheet(entries: list, scores, path: Path) -> None:
    """A row per held-out prompt: input, target, the rollouts ``scores`` kept images of."""
    from ..heldout import image_grid
    from ..image import save_image

    rows = [[entry.input_image[0], entry.target_image[0], images]
            for (_, entry), images in zip(entries, scores.images)]
    save_image(image_grid(rows), path)


def heldout_sheet(before_sheet: Path, after, path: Path) -> None:
    """The ``before_sheet`` with the rollouts of ``after`` appended to each row (when it exists)."""
    from ..heldout import image_grid
    from ..image import load_image, save_image

    if not before_sheet.is_file():
        return
    left = load_image(before_sheet)[0]
    right = image_grid([[images] for images in after.images])[:, :left.shape[-2]]
    save_image(torch.cat((left[:, :right.shape[-2]], right), dim=-1), path)
