"""Drag lists and the thin-plate-spline flow they imply."""

from __future__ import annotations

import json

import pytest
import torch

from motionnft.drag import border_points, drags_to_flow, parse_drags, thin_plate_spline


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
