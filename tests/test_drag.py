"""Drag lists and the thin-plate-spline flow they imply."""

from __future__ import annotations

import json

import pytest
import torch

from motionnft.drag import (apply_thin_plate_spline, border_points, drags_to_flow, fit_thin_plate_spline, parse_drags,
                            thin_plate_spline)
from motionnft.flow.warp import pixel_grid


def test_json_object_list_and_text_forms_parse_alike():
    as_object = parse_drags('{"size": [100, 50], "drags": [[10, 20, 30, 25], [50, 5, 45, 5]]}')
    as_list = parse_drags("[[10, 20, 30, 25], [50, 5, 45, 5]]")
    as_text = parse_drags("10,20 -> 30,25; (50, 5) -> (45, 5)")
    for drags in (as_object, as_list, as_text):
        assert drags.sources.tolist() == [[10, 20], [50, 5]]
        assert drags.targets.tolist() == [[30, 25], [45, 5]]
    assert as_object.size == (100, 50) and as_list.size is None
    assert len(parse_drags("")) == 0 and len(parse_drags("[]")) == 0


def test_to_json_round_trips():
    drags = parse_drags('{"size": [64, 32], "drags": [[1, 2, 3, 4]]}')
    again = parse_drags(drags.to_json())
    assert again.size == (64, 32) and again.sources.tolist() == [[1, 2]]
    assert json.loads(drags.to_json())["drags"] == [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[1, 2, 3]]", "list of \\[x0, y0, x1, y1\\]"),
        ('{"size": [0, 5], "drags": []}', '"size" must be'),
        ('{"points": []}', 'needs a "drags" list'),
        ("{not json", "not valid JSON"),
        ("1,2 => 3,4", "cannot read"),
    ],
)
def test_malformed_drags_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        parse_drags(text)


def test_every_drag_source_moves_exactly_to_its_target():
    drags = parse_drags("[[20, 30, 35, 22], [70, 60, 60, 75], [50, 10, 52, 18]]")
    flow = drags_to_flow(drags, 80, 100)
    assert flow.shape == (1, 2, 80, 100)
    for (x0, y0), (x1, y1) in zip(drags.sources.tolist(), drags.targets.tolist()):
        assert flow[0, :, int(y0), int(x0)].tolist() == pytest.approx([x1 - x0, y1 - y0], abs=1e-3)


def test_pinned_borders_keep_the_motion_local():
    drags = parse_drags("[[50, 50, 60, 40]]")
    pinned = drags_to_flow(drags, 100, 100)
    free = drags_to_flow(drags, 100, 100, pinned_border_points=0)
    assert torch.allclose(free, free[:, :, :1, :1].expand_as(free))  # one drag: a global shift
    assert pinned[0, :, 50, 50].tolist() == pytest.approx([10, -10], abs=1e-3)
    border = torch.cat((pinned[0, :, 0, :], pinned[0, :, -1, :], pinned[0, :, :, 0], pinned[0, :, :, -1]), dim=1)
    assert border.norm(dim=0).max() < 0.02 * 14.2  # the frame stays put (within 2 % of the drag)
    assert pinned.norm(dim=1).mean() < 0.5 * free.norm(dim=1).mean()


def test_drags_are_rescaled_from_the_editor_size():
    drags = parse_drags('{"size": [50, 50], "drags": [[25, 25, 30, 25]]}')
    flow = drags_to_flow(drags, 100, 100)
    assert flow[0, :, 50, 50].tolist() == pytest.approx([10, 0], abs=1e-3)


def test_a_mask_confines_the_flow():
    mask = torch.zeros(40, 40)
    mask[:, :20] = 1
    flow = drags_to_flow(parse_drags("[[10, 20, 15, 20]]"), 40, 40, mask=mask)
    assert flow[..., 20:].abs().max() == 0 and flow[0, 0, 20, 10] == pytest.approx(5, abs=1e-3)
    with pytest.raises(ValueError, match="mask"):
        drags_to_flow(parse_drags("[[1, 1, 2, 2]]"), 40, 40, mask=torch.ones(10, 10))


def test_thin_plate_spline_reproduces_affine_fields_exactly():
    torch.manual_seed(0)
    sources = torch.rand(6, 2) * 50
    affine = torch.tensor([[0.1, -0.3], [0.2, 0.05]])
    values = sources @ affine.T + torch.tensor([2.0, -1.0])
    points = torch.rand(20, 2) * 50
    expected = points @ affine.T + torch.tensor([2.0, -1.0])
    assert torch.allclose(thin_plate_spline(sources, values, points).float(), expected, atol=1e-4)


def test_border_points_go_round_the_frame():
    points = border_points(10, 20, 4)
    assert points.shape == (16, 2)
    on_edge = (points[:, 0] == 0) | (points[:, 0] == 19) | (points[:, 1] == 0) | (points[:, 1] == 9)
    assert on_edge.all()


# -- the spline before it moved to kornia's evaluation (motionnft/drag.py at 90febb3), frozen ----------
def _old_radial(r2):
    return 0.5 * r2 * torch.log(r2.clamp_min(1e-30))


def _old_thin_plate_spline(sources, values, points, smoothness=0.0):
    n = sources.shape[0]
    dtype = torch.float64
    sources, values, points = sources.to(dtype), values.to(dtype), points.to(dtype)
    if n == 0:
        return torch.zeros(points.shape[0], values.shape[1], dtype=dtype)
    kernel = _old_radial(torch.cdist(sources, sources).pow(2)) + smoothness * torch.eye(n, dtype=dtype)
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
    evaluation = _old_radial(torch.cdist(points, sources).pow(2))
    point_affine = torch.cat((torch.ones(points.shape[0], 1, dtype=dtype), points), dim=1)[:, :k]
    return evaluation @ weights + point_affine @ coefficients


def _old_drags_to_flow(drags, height, width, mask=None, smoothness=0.0, pinned_border_points=8):
    drags = drags.scaled_to(width, height)
    points = pixel_grid(height, width, dtype=torch.float64)[0].reshape(2, -1).T
    sources, displacements = drags.sources, drags.targets - drags.sources
    if pinned_border_points > 0 and len(drags) > 0:
        pins = border_points(height, width, pinned_border_points)
        far = torch.cdist(pins, sources).min(dim=1).values > 1.0
        pins = pins[far]
        sources = torch.cat((sources, pins))
        displacements = torch.cat((displacements, torch.zeros_like(pins)))
    displacement = _old_thin_plate_spline(sources, displacements, points, smoothness)
    flow = displacement.T.reshape(1, 2, height, width).float()
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        flow = flow * mask.float().clamp(0, 1).unsqueeze(1)
    return flow


SPLINE_CASES = [
    ("[[20, 30, 35, 22], [70, 60, 60, 75], [50, 10, 52, 18]]", 80, 100, {}),
    ("[[50, 50, 60, 40]]", 100, 100, {}),
    ("[[50, 50, 60, 40]]", 100, 100, {"pinned_border_points": 0}),
    ("[[10, 50, 20, 40], [70, 20, 75, 25]]", 64, 96, {"pinned_border_points": 0}),
    ("[[10, 10, 15, 10], [20, 20, 25, 22], [30, 30, 28, 35]]", 48, 48, {"pinned_border_points": 0}),  # collinear
    ("[[20, 30, 35, 22], [70, 60, 60, 75], [50, 10, 52, 18]]", 80, 100, {"smoothness": 50.0}),
    ('{"size": [50, 40], "drags": [[25, 20, 30, 25], [0, 0, 3, 3]]}', 80, 100, {"pinned_border_points": 3}),
]


@pytest.mark.parametrize("text, height, width, options", SPLINE_CASES)
def test_the_spline_on_kornia_equals_the_old_formula(text, height, width, options):
    drags = parse_drags(text)
    mask = torch.rand(height, width, generator=torch.Generator().manual_seed(0))
    for masked in (None, mask):
        new = drags_to_flow(drags, height, width, mask=masked, **options)
        old = _old_drags_to_flow(drags, height, width, mask=masked, **options)
        assert new.shape == old.shape and new.dtype == old.dtype
        assert torch.allclose(new, old, atol=1e-4, rtol=0), (new - old).abs().max()


def test_the_batched_fit_and_apply_pair_matches_one_set_at_a_time():
    generator = torch.Generator().manual_seed(2)
    sources = torch.rand(3, 5, 2, generator=generator, dtype=torch.float64) * 40
    values = torch.randn(3, 5, 2, generator=generator, dtype=torch.float64)
    sources[1, 1:] = sources[1, :1] + torch.arange(1, 5, dtype=torch.float64)[:, None] * torch.tensor([1.0, 2.0],
                                                                                                       dtype=torch.float64)
    points = torch.rand(3, 50, 2, generator=generator, dtype=torch.float64) * 40
    kernel, affine = fit_thin_plate_spline(sources, values, smoothness=0.5)
    assert kernel.shape == (3, 5, 2) and affine.shape == (3, 3, 2)
    batched = apply_thin_plate_spline(points, sources, kernel, affine, chunk=7)
    for b in range(3):
        one = _old_thin_plate_spline(sources[b], values[b], points[b], smoothness=0.5)
        assert torch.allclose(batched[b], one, atol=1e-8)
    with pytest.raises(ValueError, match="sources"):
        fit_thin_plate_spline(sources[0], values[0])
