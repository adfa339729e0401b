"""Colour coding, legend, arrows, warping, flow resizing, occlusion and .flo files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from motionnft.files import atomic_write
from motionnft.flow import (
    chain_flows,
    color_wheel,
    draw_flow_arrows,
    flow_legend,
    flow_to_color,
    forward_backward_occlusion,
    read_flo,
    resize_flow,
    splat_forward,
    valid_flow_mask,
    warp_backward,
    write_flo,
)


def constant_flow(dx, dy, height=6, width=8, batch=1):
    flow = torch.empty(batch, 2, height, width)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


# Colour coding -------------------------------------------------------------------------

def test_color_wheel_is_the_middlebury_wheel():
    wheel = color_wheel()
    assert wheel.shape == (55, 3)
    eight_bit = (wheel * 255).round()
    assert eight_bit[0].tolist() == [255, 0, 0]  # red
    assert eight_bit[15].tolist() == [255, 255, 0]  # yellow starts the second ramp
    assert eight_bit[16].tolist() == [255 - np.floor(255 / 6), 255, 0]
    assert eight_bit[21].tolist() == [0, 255, 0]  # green
    assert eight_bit[25].tolist() == [0, 255, 255]  # cyan
    assert eight_bit[36].tolist() == [0, 0, 255]  # blue
    assert eight_bit[49].tolist() == [255, 0, 255]  # magenta


def test_zero_flow_is_white_and_unknown_flow_is_black():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, :, 0, 0] = 2e9
    flow[0, 0, 1, 1] = float("nan")
    color = flow_to_color(flow, max_magnitude=1.0)
    assert torch.equal(color[0, :, 0, 0], torch.zeros(3))
    assert torch.equal(color[0, :, 1, 1], torch.zeros(3))
    assert torch.allclose(color[0, :, 3, 3], torch.ones(3))


@pytest.mark.parametrize(
    "dx, dy, dominant",
    [(1.0, 0.0, "red"), (-1.0, 0.0, "cyan"), (0.0, -1.0, "blue"), (0.0, 1.0, "yellow")],
)
def test_hue_follows_direction(dx, dy, dominant):
    r, g, b = flow_to_color(constant_flow(dx, dy), max_magnitude=1.0)[0, :, 0, 0].tolist()
    checks = {
        "red": r > 0.9 and g < 0.2 and b < 0.2,
        "cyan": r < 0.2 and g > 0.7 and b > 0.9,
        "blue": b > 0.9 and r < 0.6 and g < 0.2,
        "yellow": r > 0.9 and g > 0.4 and b < 0.2,
    }
    assert checks[dominant], (r, g, b)


def test_saturation_grows_with_speed_and_longer_vectors_are_darkened():
    half = flow_to_color(constant_flow(0.5, 0), max_magnitude=1.0)[0, :, 0, 0]
    full = flow_to_color(constant_flow(1.0, 0), max_magnitude=1.0)[0, :, 0, 0]
    over = flow_to_color(constant_flow(2.0, 0), max_magnitude=1.0)[0, :, 0, 0]
    assert half[1] > full[1]  # paler red: more green and blue
    assert torch.allclose(over, full * 0.75)


def test_automatic_scale_is_per_image():
    flow = torch.cat([constant_flow(1.0, 0), constant_flow(10.0, 0)])
    color = flow_to_color(flow)
    assert torch.allclose(color[0], color[1])


def test_legend_is_a_white_framed_colour_disc_with_a_caption():
    legend = flow_legend(64)
    assert legend.shape == (3, 64, 64)
    assert torch.allclose(legend[:, 0, 0], torch.ones(3))  # outside the disc
    assert legend[:, 32, 32].min() > 0.9  # centre: no motion, nearly white
    right = legend[:, 32, 60]
    assert right[0] > 0.8 and right[2] < 0.3  # rim on the right: red
    captioned = flow_legend(64, max_magnitude=12.5)
    assert captioned.shape[1] > 64 and captioned.shape[2] == 64


def test_arrows_are_drawn_where_there_is_motion_only():
    image = torch.full((1, 3, 64, 64), 128 / 255)  # exactly representable in 8 bits
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0, :, :32] = 6.0  # left half moves right
    drawn = draw_flow_arrows(image, flow, spacing=8)
    changed = (drawn - image).abs().sum(dim=1)[0] > 0
    assert changed[:, :30].any()
    assert not changed[:, 44:].any()


# Warping -------------------------------------------------------------------------------

def test_backward_warp_by_zero_flow_is_the_identity():
    image = torch.rand(2, 3, 9, 13)
    # Up to float rounding of the sampling grid: no half-pixel shift anywhere.
    assert (warp_backward(image, torch.zeros(2, 2, 9, 13)) - image).abs().max() < 1e-6


def test_backward_warp_by_an_integer_shift_samples_the_shifted_pixels():
    image = torch.rand(1, 3, 10, 12)
    warped = warp_backward(image, constant_flow(2, 1, 10, 12))
    assert torch.allclose(warped[:, :, :-1, :-2], image[:, :, 1:, 2:], atol=1e-6)


def test_backward_warp_is_differentiable_in_image_and_flow():
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    flow = (torch.rand(1, 2, 8, 8) * 2).requires_grad_(True)
    warp_backward(image, flow).sum().backward()
    assert image.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_chained_flows_follow_each_pixel_along_its_track():
    # Two translations add up; a flow that differs by place is read where the pixel has got to.
    assert torch.allclose(chain_flows([constant_flow(2, 1, 10, 12), constant_flow(-1, 3, 10, 12)]),
                          constant_flow(1, 4, 10, 12), atol=1e-5)
    second = torch.zeros(1, 2, 10, 12)
    second[:, 0, :, 5:] = 1.0  # only the right part moves on
    chained = chain_flows([constant_flow(3, 0, 10, 12), second])
    assert torch.allclose(chained[:, 0, :, :2], torch.full((1, 10, 2), 3.0), atol=1e-5)  # lands at x < 5
    assert torch.allclose(chained[:, 0, :, 2:8], torch.full((1, 10, 6), 4.0), atol=1e-5)  # lands at x >= 5
    assert chain_flows([second]) is second
    with pytest.raises(ValueError, match="at least one"):
        chain_flows([])


def test_forward_splat_moves_pixels_and_marks_holes():
    image = torch.rand(1, 3, 6, 8)
    warped, covered = splat_forward(image, constant_flow(3, 0, 6, 8))
    assert torch.allclose(warped[:, :, :, 3:], image[:, :, :, :5], atol=1e-6)
    assert not covered[..., :3].any() and covered[..., 3:].all()
    assert torch.equal(warped[:, :, :, :3], torch.zeros(1, 3, 6, 3))


def test_forward_splat_of_a_half_pixel_shift_keeps_brightness():
    image = torch.full((1, 1, 4, 6), 0.7)
    warped, covered = splat_forward(image, constant_flow(0.5, 0, 4, 6))
    assert torch.allclose(warped[covered.expand_as(warped)], torch.tensor(0.7))


def test_resize_flow_rescales_vectors_to_the_new_size():
    flow = constant_flow(3.0, -2.0, 10, 20)
    resized = resize_flow(flow, (30, 40))
    assert resized.shape == (1, 2, 30, 40)
    assert torch.allclose(resized[:, 0], torch.full((1, 30, 40), 6.0))
    assert torch.allclose(resized[:, 1], torch.full((1, 30, 40), -6.0))


def test_consistent_motion_is_not_occluded_except_where_it_leaves_the_frame():
    forward, backward = constant_flow(2, 0, 8, 10), constant_flow(-2, 0, 8, 10)
    occluded = forward_backward_occlusion(forward, backward)[0, 0]
    assert not occluded[:, :8].any()
    assert occluded[:, 8:].all()  # x + 2 > 9: outside frame B


def test_inconsistent_motion_is_occluded():
    forward = constant_flow(2, 0, 8, 10)
    backward = torch.zeros_like(forward)  # B says nothing moved
    assert forward_backward_occlusion(forward, backward).all()


# .flo files ----------------------------------------------------------------------------

def test_flo_round_trip_keeps_values_and_unknown_markers(tmp_path):
    flow = torch.randn(2, 5, 7) * 10
    flow[:, 0, 0] = 1e10
    path = write_flo(tmp_path / "f.flo", flow)
    back = read_flo(path)
    assert torch.equal(back, flow)
    assert not valid_flow_mask(back)[0, 0] and valid_flow_mask(back)[1:].all()
    assert os.listdir(tmp_path) == ["f.flo"]  # no temporary file left behind


def test_flo_layout_is_middlebury(tmp_path):
    flow = torch.zeros(1, 2, 2, 3)
    flow[0, 0, 1, 2] = 4.5  # u at row 1, column 2
    data = write_flo(tmp_path / "f.flo", flow).read_bytes()
    assert np.frombuffer(data[:4], "<f4")[0] == np.float32(202021.25)
    assert np.frombuffer(data[4:12], "<i4").tolist() == [3, 2]  # width, height
    values = np.frombuffer(data[12:], "<f4").reshape(2, 3, 2)
    assert values[1, 2, 0] == 4.5


def test_reading_a_bad_flo_file_names_it(tmp_path):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"JUNK" + b"\0" * 20)
    with pytest.raises(ValueError, match="bad.flo: not a .flo file"):
        read_flo(bad)
    truncated = tmp_path / "short.flo"
    truncated.write_bytes(np.array([202021.25], "<f4").tobytes() + np.array([100, 100], "<i4").tobytes())
    with pytest.raises(ValueError, match="short.flo: truncated"):
        read_flo(truncated)
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        read_flo(tmp_path / "missing.flo")
    longer = write_flo(tmp_path / "long.flo", torch.ones(2, 3, 4))
    longer.write_bytes(longer.read_bytes() + b"\0" * 8)  # a second file's bytes run on
    with pytest.raises(ValueError, match="long.flo: 8 bytes after the 4x3 flow; a .flo of that size is 108 bytes"):
        read_flo(longer)


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = write_flo(tmp_path / "f.flo", torch.ones(2, 3, 3))
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.flo"]


def test_atomically_written_files_get_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_flo(tmp_path / "f.flo", torch.ones(2, 2, 2))
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_flow_files_of_other_tools_read_as_the_same_flow(tmp_path):
    from motionnft.flow import read_flow_file, write_flo

    flow = torch.randn(2, 5, 7) * 3
    write_flo(tmp_path / "f.flo", flow)
    np.save(tmp_path / "hw2.npy", flow.permute(1, 2, 0).numpy())  # OpenCV / RAFT demo layout
    np.save(tmp_path / "chw.npy", flow.numpy())
    np.save(tmp_path / "batched.npy", flow.permute(1, 2, 0)[None].numpy())
    np.savez(tmp_path / "named.npz", flow=flow.numpy(), other=np.zeros(3))
    for name in ("f.flo", "hw2.npy", "chw.npy", "batched.npy", "named.npz"):
        assert torch.equal(read_flow_file(tmp_path / name), flow), name


def test_a_flow_file_of_the_wrong_shape_or_kind_is_refused_naming_it(tmp_path):
    from motionnft.flow import read_flow_file

    np.save(tmp_path / "rgb.npy", np.zeros((5, 7, 3)))
    with pytest.raises(ValueError, match=r"rgb.npy: expected a flow array .*got shape \(5, 7, 3\)"):
        read_flow_file(tmp_path / "rgb.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy: not a readable NumPy file"):
        read_flow_file(tmp_path / "objects.npy")
    with pytest.raises(ValueError, match=r"flow.png: expected a flow file \(.flo, .npy, .npz\)"):
        read_flow_file(tmp_path / "flow.png")


def test_a_nan_flow_warps_to_the_padding_and_back_propagates_safely():
    from motionnft.flow import warp_backward

    image = torch.rand(2, 3, 16, 16, requires_grad=True)
    flow = torch.zeros(2, 2, 16, 16)
    flow[:, :, 4:8, 4:8] = float("nan")  # what a diverged model's flow holds
    warped = warp_backward(image, flow, padding_mode="zeros")
    assert torch.isfinite(warped).all()
    assert (warped[:, :, 4:8, 4:8] == 0).all()  # sampled outside the image: the padding
    assert torch.allclose(warped[:, :, 10:, 10:], image[:, :, 10:, 10:], atol=1e-4)  # the rest: identity
    warped.sum().backward()  # grid_sample's CPU backward indexed out of bounds on NaN coordinates
    assert torch.isfinite(image.grad).all()
