"""Drag edits: point pairs (from -> to) and the dense flow they imply.

A drag list says "move the content at (x0, y0) to (x1, y1)", for one or more points. As a
string (what the ComfyUI drag editor writes) it is JSON::

    {"size": [W, H], "drags": [[x0, y0, x1, y1], ...]}

with coordinates in pixels of an image of ``size`` (the editor's image); a bare list
``[[x0, y0, x1, y1], ...]`` means pixels of whatever image it is applied to. A plain text
form ``"x0,y0 -> x1,y1; x0,y0 -> x1,y1"`` is accepted too, for typing by hand.

:func:`drags_to_flow` turns the points into a dense flow ``(B, 2, H, W)`` by thin-plate
spline interpolation of the displacements (Bookstein 1989): the smoothest field that moves
every source point exactly to its target, optionally confined to a mask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from .flow.warp import pixel_grid


@dataclass(frozen=True)
class DragList:
    """Source and target points ``(N, 2)`` each, in pixels of an image of ``size = (W, H)``."""

    sources: torch.Tensor
    targets: torch.Tensor
    size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.sources.shape[0])

    def scaled_to(self, width: int, height: int) -> "DragList":
        """The same drags in pixels of a ``width`` x ``height`` image."""
        if self.size is None or tuple(self.size) == (width, height):
            return DragList(self.sources, self.targets, (width, height))
        scale = torch.tensor([width / self.size[0], height / self.size[1]], dtype=self.sources.dtype)
        return DragList(self.sources * scale, self.targets * scale, (width, height))

    def to_json(self) -> str:
        drags = [[*map(float, s), *map(float, t)] for s, t in zip(self.sources.tolist(), self.targets.tolist())]
        payload = {"drags": drags} if self.size is None else {"size": list(self.size), "drags": drags}
        return json.dumps(payload)


_TEXT_PAIR = re.compile(
    r"^\s*\(?\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)?\s*(?:->|→|to)\s*\(?\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)?\s*$"
)


def parse_drags(text: str) -> DragList:
    """Parse a drag list (JSON object, JSON list, or ``"x,y -> x,y; ..."`` text).

    An empty string or ``[]`` is an empty list. Errors say what was expected.
    """
    text = (text or "").strip()
    if not text:
        return DragList(torch.zeros(0, 2), torch.zeros(0, 2))
    size = None
    if text[0] in "[{":
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"drags: not valid JSON ({error}); expected {{\"size\": [W, H], \"drags\": [[x0, y0, x1, y1], ...]}}") from None
        if isinstance(payload, dict):
            if "drags" not in payload:
                raise ValueError('drags: a JSON object needs a "drags" list of [x0, y0, x1, y1]')
            if payload.get("size") is not None:
                size = payload["size"]
                if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in size)):
                    raise ValueError(f'drags: "size" must be [width, height] in pixels, got {size!r}')
                size = (int(size[0]), int(size[1]))
            rows = payload["drags"]
        else:
            rows = payload
        if not isinstance(rows, list) or not all(
            isinstance(row, list) and len(row) == 4 and all(isinstance(v, (int, float)) for v in row) for row in rows
        ):
            raise ValueError("drags: expected a list of [x0, y0, x1, y1] number quadruples")
        values = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    else:
        rows = []
        for part in filter(None, (p.strip() for p in re.split(r"[;\n]", text))):
            match = _TEXT_PAIR.match(part)
            if not match:
                raise ValueError(f"drags: cannot read {part!r}; expected 'x0,y0 -> x1,y1' pairs separated by ';'")
            rows.append([float(v) for v in match.groups()])
        values = torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)
    if not torch.isfinite(values).all():
        raise ValueError("drags: coordinates must be finite numbers")
    return DragList(values[:, :2].contiguous(), values[:, 2:].contiguous(), size)


def _radial(r2: torch.Tensor) -> torch.Tensor:
    """The thin-plate kernel ``U(r) = r² log r`` written in ``r²`` (0 at r = 0)."""
    return 0.5 * r2 * torch.log(r2.clamp_min(1e-30))


def thin_plate_spline(
    sources: torch.Tensor, values: torch.Tensor, points: torch.Tensor, smoothness: float = 0.0
) -> torch.Tensor:
    """Interpolate ``values`` given at ``sources`` to ``points`` with a thin-plate spline.

    Args:
        sources: ``(N, 2)`` control points.
        values: ``(N, C)`` values at them.
        points: ``(M, 2)`` where to evaluate.
        smoothness: ridge weight λ; 0 interpolates exactly, larger values smooth.
    Returns:
        ``(M, C)``. With fewer than 3 (or collinear) points the affine part is reduced to
        a constant, so one point gives a constant field and two a smooth blend.
    """
    n = sources.shape[0]
    dtype = torch.float64
    sources, values, points = sources.to(dtype), values.to(dtype), points.to(dtype)
    if n == 0:
        return torch.zeros(points.shape[0], values.shape[1], dtype=dtype)
    kernel = _radial(torch.cdist(sources, sources).pow(2)) + smoothness * torch.eye(n, dtype=dtype)
    affine = torch.cat((torch.ones(n, 1, dtype=dtype), sources), dim=1)
    if n < 3 or torch.linalg.matrix_rank(affine - affine.mean(0)) < 2:
        affine = affine[:, :1]
    k = affine.shape[1]
    system = torch.zeros(n + k, n + k, dtype=dtype)
    system[:n, :n] = kernel
    system[:n, n:] = affine
    system[n:, :n] = affine.T
    rhs = torch.cat((values, torch.zeros(k, values.shape[1], dtype=dtype)))
    solution = torch.linalg.lstsq(system, rhs).solution
    weights, coefficients = solution[:n], solution[n:]
    evaluation = _radial(torch.cdist(points, sources).pow(2))
    point_affine = torch.cat((torch.ones(points.shape[0], 1, dtype=dtype), points), dim=1)[:, :k]
    return evaluation @ weights + point_affine @ coefficients


def border_points(height: int, width: int, per_side: int) -> torch.Tensor:
    """``(4·per_side, 2)`` points evenly spaced around the image border (corners included)."""
    steps = torch.linspace(0, 1, per_side + 1, dtype=torch.float64)[:-1]
    right, bottom = float(width - 1), float(height - 1)
    edges = [
        torch.stack((steps * right, torch.zeros_like(steps)), 1),
        torch.stack((torch.full_like(steps, right), steps * bottom), 1),
        torch.stack(((1 - steps) * right, torch.full_like(steps, bottom)), 1),
        torch.stack((torch.zeros_like(steps), (1 - steps) * bottom), 1),
    ]
    return torch.cat(edges)


def drags_to_flow(
    drags: DragList,
    height: int,
    width: int,
    mask: torch.Tensor | None = None,
    smoothness: float = 0.0,
    pinned_border_points: int = 8,
) -> torch.Tensor:
    """Dense flow ``(1, 2, H, W)`` in pixels that carries each drag's source to its target.

    Args:
        drags: the point pairs; rescaled from their ``size`` to ``width`` x ``height``.
        mask: optional ``(H, W)`` or ``(B, H, W)`` in [0, 1]: where content may move. The
            flow is multiplied by it (so it is 0 outside), giving ``(B, 2, H, W)``.
        smoothness: thin-plate ridge weight (0 = exact interpolation).
        pinned_border_points: points per image side held still, so a drag bends the image
            locally instead of sliding all of it (0 = none: one drag moves everything).
    """
    drags = drags.scaled_to(width, height)
    points = pixel_grid(height, width, dtype=torch.float64)[0].reshape(2, -1).T
    sources, displacements = drags.sources, drags.targets - drags.sources
    if pinned_border_points > 0 and len(drags) > 0:
        pins = border_points(height, width, pinned_border_points)
        # A pin sitting on a drag's source would contradict it: leave those out.
        far = torch.cdist(pins, sources).min(dim=1).values > 1.0
        pins = pins[far]
        sources = torch.cat((sources, pins))
        displacements = torch.cat((displacements, torch.zeros_like(pins)))
    displacement = thin_plate_spline(sources, displacements, points, smoothness)
    flow = displacement.T.reshape(1, 2, height, width).float()
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim != 3 or tuple(mask.shape[-2:]) != (height, width):
            raise ValueError(f"mask: expected (H, W) or (B, H, W) with H, W = {height}, {width}; got {tuple(mask.shape)}")
        flow = flow * mask.float().clamp(0, 1).unsqueeze(1)
    return flow
