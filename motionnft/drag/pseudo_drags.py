"""Pseudo-drags: sparse drag maps drawn from a dense flow, to train and test FlowGen.

A video pair with a dense flow has no drags; InstantDrag samples some of the flow's
vectors inside the moving region and asks FlowGen to give back the whole flow. The points
come from one of three strategies:

- ``random``: uniformly among the moving pixels;
- ``grid``: on a randomly offset grid whose spacing spreads ``count`` points over the
  moving region (the paper's grid sampling);
- ``topk``: the pixels of largest motion, greedily, each at least a spacing away from the
  ones already taken (the paper's keypoints: where the motion is, not one cluster of it).

Convention: flow ``(B, 2, H, W)`` in pixels (channel 0 = x, 1 = y); points ``(x, y)`` integer
pixel indices; a drag goes from ``(x, y)`` to ``(x, y) + flow[:, :, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STRATEGIES = ("random", "grid", "topk")


@dataclass(frozen=True)
class PseudoDrags:
    """Sparse drag maps and their points.

    Attributes:
        sparse: ``(B', 2, H, W)`` pixels; the flow at each drawn point, 0 elsewhere.
        points: ``(B', K, 2)`` long ``(x, y)``; K is the largest count drawn.
        valid: ``(B', K)`` bool; False for the padding of maps with fewer points (or a
            moving region with too few pixels).
        displacements: ``(B', K, 2)`` pixels, the flow at each point (0 where not valid).
        source: ``(B',)`` long: the index of the target flow each map was drawn from.
    """

    sparse: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    displacements: torch.Tensor
    source: torch.Tensor

    def counts(self) -> torch.Tensor:
        """``(B',)`` drags per map."""
        return self.valid.sum(dim=1)


def moving_mask(flow: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``(B, H, W)`` bool: pixels whose flow ``(B, 2, H, W)`` is longer than ``threshold`` pixels
    (and finite)."""
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow: expected (B, 2, H, W) in pixels, got {tuple(flow.shape)}")
    length = flow.norm(dim=1)
    return torch.isfinite(length) & (length > threshold)


def _greedy_pick(scores: torch.Tensor, count: int, spacing: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Take the best-scoring pixel ``count`` times, each time ruling out pixels within
    ``spacing`` ``(B,)`` of it. ``scores`` ``(B, H·W)``, -inf = never. Returns flat indices
    ``(B, count)`` and whether each is a real pick ``(B, count)``."""
    scores = scores.clone()
    batch, pixels = scores.shape
    ys = torch.arange(pixels, device=scores.device) // width
    xs = torch.arange(pixels, device=scores.device) % width
    picks, valid = [], []
    for _ in range(count):
        best, index = scores.max(dim=1)
        picks.append(index)
        valid.append(torch.isfinite(best))
        near = (xs[None] - xs[index][:, None]).pow(2) + (ys[None] - ys[index][:, None]).pow(2) \
            <= spacing.pow(2)[:, None]
        near[torch.arange(batch), index] = True  # never the same pixel twice, whatever the spacing
        scores = scores.masked_fill(near, float("-inf"))
    return torch.stack(picks, 1), torch.stack(valid, 1)


def _scores(strategy: str, flow: torch.Tensor, mask: torch.Tensor, count: torch.Tensor,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel scores ``(B, H·W)`` (-inf outside ``mask``) and the pick spacing ``(B,)``."""
    batch, _, height, width = flow.shape
    noise = torch.rand(batch, height * width, generator=generator).to(flow.device)
    area = mask.flatten(1).sum(1).clamp_min(1).float()
    # The spacing that would tile the moving region with `count` squares.
    spread = (area / count.float()).sqrt()
    if strategy == "random":
        scores, spacing = noise, torch.zeros_like(area)
    elif strategy == "grid":
        stride = spread.floor().clamp_min(2).long()
        offset = (torch.rand(batch, 2, generator=generator).to(flow.device) * stride[:, None]).long()
        ys, xs = torch.meshgrid(torch.arange(height, device=flow.device), torch.arange(width, device=flow.device),
                                indexing="ij")
        on_grid = ((xs[None] - offset[:, 0, None, None]) % stride[:, None, None] == 0) \
            & ((ys[None] - offset[:, 1, None, None]) % stride[:, None, None] == 0)
        # Grid points first (in random order); other moving pixels only when the grid misses the region.
        scores, spacing = noise + on_grid.flatten(1).float(), torch.zeros_like(area)
    elif strategy == "topk":
        length = flow.norm(dim=1).flatten(1)
        scores = length + 1e-3 * noise  # the noise breaks ties of a rigid translation at random
        spacing = spread / 2
    else:
        raise ValueError(f"pseudo-drag strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return scores.masked_fill(~mask.flatten(1), float("-inf")), spacing


def sample_pseudo_drags(
    flow: torch.Tensor,
    count: int | tuple[int, int] = (1, 5),
    strategy: str | tuple[str, ...] = STRATEGIES,
    mask: torch.Tensor | None = None,
    maps_per_target: int = 1,
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> PseudoDrags:
    """Draw sparse drag maps from dense flows.

    Args:
        flow: ``(B, 2, H, W)`` dense flow in pixels.
        count: drags per map, or an inclusive range ``(low, high)`` drawn uniformly per map.
        strategy: one of :data:`STRATEGIES`, or several to choose from at random per map.
        mask: optional ``(B, H, W)`` moving region (bool or [0, 1]); points are drawn inside
            it *and* where the flow is longer than ``threshold``: a drag of zero length is
            invisible in a sparse map, so a point that does not move cannot be a drag.
        maps_per_target: sparse maps drawn for each flow; map ``b · maps_per_target + r``
            comes from flow ``b``.
        threshold: pixels; shorter flow does not count as moving.
        generator: CPU generator for every random draw (reproducible batches).
    Returns:
        :class:`PseudoDrags` with ``B' = B · maps_per_target`` maps.

    Example:
        >>> flow = torch.zeros(1, 2, 32, 32); flow[:, 0, 8:16, 8:16] = 3.0
        >>> drags = sample_pseudo_drags(flow, count=2, strategy="grid")
        >>> drags.sparse.shape, drags.points.shape, drags.counts().tolist()
        (torch.Size([1, 2, 32, 32]), torch.Size([1, 2, 2]), [2])
    """
    moving = moving_mask(flow, threshold)
    if mask is not None:
        if mask.shape != moving.shape:
            raise ValueError(f"mask: expected {tuple(moving.shape)} (B, H, W), got {tuple(mask.shape)}")
        moving = moving & (mask > 0.5)
    strategies = (strategy,) if isinstance(strategy, str) else tuple(strategy)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"pseudo-drag strategy {unknown or strategies}: expected some of {', '.join(STRATEGIES)}")
    low, high = (count, count) if isinstance(count, int) else count
    if not 1 <= low <= high:
        raise ValueError(f"count: expected an integer >= 1 or a range (low, high) with 1 <= low <= high, got {count}")
    if maps_per_target < 1:
        raise ValueError(f"maps_per_target: expected >= 1, got {maps_per_target}")

    source = torch.arange(flow.shape[0], device=flow.device).repeat_interleave(maps_per_target)
    flow, moving = flow[source], moving[source]
    batch, _, height, width = flow.shape
    counts = torch.randint(low, high + 1, (batch,), generator=generator).to(flow.device)
    choice = torch.randint(len(strategies), (batch,), generator=generator)
    scores = torch.empty(batch, height * width, device=flow.device)
    spacing = torch.empty(batch, device=flow.device)
    for index, name in enumerate(strategies):
        # Every strategy draws its noise for the whole batch, so one map's draws do not
        # depend on which strategies the others got.
        strategy_scores, strategy_spacing = _scores(name, flow, moving, counts, generator)
        chosen = (choice == index).to(flow.device)
        scores[chosen], spacing[chosen] = strategy_scores[chosen], strategy_spacing[chosen]
    flat, valid = _greedy_pick(scores, high, spacing, width)
    valid &= torch.arange(high, device=flow.device)[None] < counts[:, None]
    flat = torch.where(valid, flat, torch.zeros_like(flat))
    points = torch.stack((flat % width, flat // width), dim=2)
    displacements = flow.flatten(2).gather(2, flat[:, None].expand(-1, 2, -1)).transpose(1, 2)
    displacements = displacements * valid[..., None]
    sparse = torch.zeros_like(flow).flatten(2)
    sparse.scatter_add_(2, flat[:, None].expand(-1, 2, -1), displacements.transpose(1, 2))
    return PseudoDrags(sparse.view_as(flow), points, valid, displacements, source)


def drags_to_sparse(points: torch.Tensor, displacements: torch.Tensor, height: int, width: int,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """A sparse drag map ``(B, 2, H, W)`` from points ``(B, K, 2)`` ``(x, y)`` in pixels (rounded
    to the nearest pixel) and their displacements ``(B, K, 2)``: how user drags reach FlowGen."""
    if points.ndim != 3 or points.shape[-1] != 2 or displacements.shape != points.shape:
        raise ValueError(f"points and displacements: expected (B, K, 2) each, got {tuple(points.shape)} and "
                         f"{tuple(displacements.shape)}")
    batch = points.shape[0]
    xy = points.round().long()
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)
    if valid is not None:
        inside &= valid
    # Points left out go to one spare slot past the image, dropped below.
    flat = torch.where(inside, xy[..., 1].clamp(0, height - 1) * width + xy[..., 0].clamp(0, width - 1),
                       height * width)
    sparse = torch.zeros(batch, 2, height * width + 1, device=points.device)
    # Two drags from one pixel: the later one wins, as the spline would have to choose too.
    sparse.scatter_(2, flat[:, None].expand(-1, 2, -1), displacements.to(sparse.dtype).transpose(1, 2))
    return sparse[..., :-1].reshape(batch, 2, height, width)
