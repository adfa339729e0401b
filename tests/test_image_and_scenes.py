"""Image files <-> tensors, and the synthetic scenes' ground truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from motionnft.flow import warp_backward
from motionnft.image import load_image, resize_image, save_image, to_gray_uint8
from motionnft.synthetic import FigurePose, demo_sample, render_scene, scene_flow


def test_png_round_trip_is_exact_in_8_bits(tmp_path):
    image = torch.randint(0, 256, (1, 3, 7, 9)).float() / 255
    loaded = load_image(save_image(image, tmp_path / "a.png"))
    assert loaded.shape == (1, 3, 7, 9) and loaded.dtype == torch.float32
    assert torch.equal(loaded, image)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_pil_mode_loads_as_rgb(tmp_path, mode):
    Image.new(mode, (5, 4)).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png").shape == (1, 3, 4, 5)


def test_unreadable_and_missing_files_are_named(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="folder.png: is a folder, expected an image file"):
        load_image(tmp_path / "folder.png")
    with pytest.raises(ValueError, match="unknown image suffix"):
        save_image(torch.zeros(3, 2, 2), tmp_path / "x.unknown")


def test_grey_conversion_matches_opencv_within_one_level():
    rgb8 = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ours = to_gray_uint8(torch.from_numpy(rgb8).permute(2, 0, 1).unsqueeze(0).float() / 255)[0]
    theirs = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_resize_is_plain_bilinear_and_a_no_op_at_the_same_size():
    image = torch.rand(1, 3, 4, 4)
    assert resize_image(image, (4, 4)) is image
    assert torch.allclose(resize_image(image, (8, 8)), torch.nn.functional.interpolate(image, (8, 8), mode="bilinear"))


def test_scene_flow_maps_visible_figure_pixels_onto_the_same_colour():
    size = (128, 160)
    start, goal = FigurePose(), FigurePose().moved(dx=0.05, dy=-0.02, arm=40)
    a, b = render_scene(start, size, seed=1), render_scene(goal, size, seed=1)
    flow = scene_flow(start, goal, size)
    moving = flow.norm(dim=0) > 0
    # Sample B where the flow says each pixel of A went: the figure's texture is found there.
    sampled = warp_backward(b.unsqueeze(0), flow.unsqueeze(0))[0]
    error = (sampled - a).abs().mean(dim=0)
    # Some arm pixels land behind nothing and edges are resampled: judge the bulk.
    assert error[moving].median() < 0.02
    without_motion = (b - a).abs().mean(dim=0)
    assert float(error[moving].mean()) < 0.3 * float(without_motion[moving].mean())


def test_scenes_are_deterministic_per_seed_and_differ_across_seeds():
    pose = FigurePose()
    assert torch.equal(render_scene(pose, (64, 64), seed=4), render_scene(pose, (64, 64), seed=4))
    assert not torch.equal(render_scene(pose, (64, 64), seed=4), render_scene(pose, (64, 64), seed=5))


def test_demo_sample_has_an_input_target_and_four_edits():
    sample = demo_sample(size=64)
    assert sample.input.shape == sample.target.shape == (1, 3, 64, 64)
    assert set(sample.edits) == {"faithful", "half_way", "opposite", "unchanged"}
    assert torch.equal(sample.edits["unchanged"], sample.input)
