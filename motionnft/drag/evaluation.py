"""End-point error of drags -> flow methods on pairs with known flow.

The same drags (pseudo-drags drawn inside the moving region) go to every method; the error
is counted over all pixels, the moving region (ground truth longer than the threshold) and
the static rest, pooled over the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .pseudo_drags import PseudoDrags, moving_mask, sample_pseudo_drags
from .spline import DragList, drags_to_flow

DragsToFlow = Callable[[torch.Tensor, PseudoDrags], torch.Tensor]
"""A method: (images ``(B, 3, H, W)``, drags of B maps) -> flow ``(B, 2, H, W)`` pixels."""

REGIONS = ("overall", "moving", "static")


def endpoint_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel end-point error ``(B, H, W)`` in pixels between flows ``(B, 2, H, W)``."""
    if prediction.shape != target.shape or target.ndim != 4 or target.shape[1] != 2:
        raise ValueError(f"endpoint_error: expected two (B, 2, H, W) flows, got {tuple(prediction.shape)} and "
                         f"{tuple(target.shape)}")
    return (prediction - target).norm(dim=1)


def zero_flow(images: torch.Tensor, drags: PseudoDrags) -> torch.Tensor:
    return torch.zeros_like(drags.sparse)


def spline_flow(images: torch.Tensor, drags: PseudoDrags, pinned_border_points: int = 8,
                masks: torch.Tensor | None = None) -> torch.Tensor:
    """The thin-plate spline of each map's drags (the Drag to Flow node's defaults)."""
    height, width = drags.sparse.shape[-2:]
    flows = []
    for index in range(drags.sparse.shape[0]):
        keep = drags.valid[index]
        sources = drags.points[index][keep].double()
        listed = DragList(sources, sources + drags.displacements[index][keep].double(), (width, height))
        mask = None if masks is None else masks[index].float()
        flows.append(drags_to_flow(listed, height, width, mask=mask, pinned_border_points=pinned_border_points))
    return torch.cat(flows)


def flowgen_flow(generator: torch.nn.Module, batch_size: int = 64) -> DragsToFlow:
    """A method that runs a FlowGen generator (in eval mode, without gradients)."""

    def run(images: torch.Tensor, drags: PseudoDrags) -> torch.Tensor:
        generator.eval()
        with torch.no_grad():
            return torch.cat([generator(i, s) for i, s in zip(images.split(batch_size), drags.sparse.split(batch_size))])

    return run


@dataclass(frozen=True)
class ErrorSums:
    """Summed end-point error and pixel counts per region (pooled over pairs)."""

    error: dict[str, float]
    pixels: dict[str, float]

    def mean(self, region: str) -> float:
        return self.error[region] / max(self.pixels[region], 1.0)

    def __add__(self, other: "ErrorSums") -> "ErrorSums":
        return ErrorSums({k: self.error[k] + other.error[k] for k in REGIONS},
                         {k: self.pixels[k] + other.pixels[k] for k in REGIONS})


def region_errors(prediction: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> ErrorSums:
    error = endpoint_error(prediction, target)
    moving = moving_mask(target, threshold)
    regions = {"overall": torch.ones_like(moving), "moving": moving, "static": ~moving}
    return ErrorSums({k: float((error * m).sum()) for k, m in regions.items()},
                     {k: float(m.sum()) for k, m in regions.items()})


def evaluate_methods(images: torch.Tensor, flows: torch.Tensor, methods: dict[str, DragsToFlow],
                     counts: tuple[int, ...] = (1, 2, 3, 4, 5), seed: int = 0, strategy: str = "random",
                     threshold: float = 0.5) -> dict[str, dict[int, ErrorSums]]:
    """``{method: {drag count: ErrorSums}}`` on pairs ``images`` ``(B, 3, H, W)``, ``flows``
    ``(B, 2, H, W)``; the drags of each count are drawn once (``seed``) and shared."""
    results: dict[str, dict[int, ErrorSums]] = {name: {} for name in methods}
    for count in counts:
        generator = torch.Generator().manual_seed(seed * 1000 + count)
        drags = sample_pseudo_drags(flows, count, strategy, threshold=threshold, generator=generator)
        for name, method in methods.items():
            results[name][count] = region_errors(method(images, drags), flows, threshold)
    return results


def format_table(results: dict[str, dict[int, ErrorSums]]) -> str:
    """A Markdown table: one row per method and drag count (and all counts together)."""
    lines = ["| method | drags | EPE overall | EPE moving | EPE static |", "|---|---:|---:|---:|---:|"]
    for name, by_count in results.items():
        total = None
        for count, sums in by_count.items():
            total = sums if total is None else total + sums
            lines.append(f"| {name} | {count} | " + " | ".join(f"{sums.mean(r):.3f}" for r in REGIONS) + " |")
        lines.append(f"| **{name}** | **all** | " + " | ".join(f"**{total.mean(r):.3f}**" for r in REGIONS) + " |")
    return "\n".join(lines)
