"""Training data: the centre crop + resize, and the built-in synthetic motion dataset."""

from __future__ import annotations

import pytest
import torch

from motionnft.image import center_crop_resize
from motionnft.synthetic import (MOTION_INSTRUCTIONS, TASKS, FigurePose, motion_edit_dataset, render_scene,
                                 scene_flow)


def test_centre_crop_keeps_the_middle_window_of_the_target_aspect():
    tall = torch.zeros(1, 1, 8, 4)
    tall[..., 2:6, :] = 1.0  # the centre 4 x 4 square
    assert torch.equal(center_crop_resize(tall, (4, 4)), torch.ones(1, 1, 4, 4))
    wide = torch.arange(12.0).view(1, 1, 2, 6)
    assert center_crop_resize(wide, (2, 2)).flatten().tolist() == [2.0, 3.0, 8.0, 9.0]
    square = torch.rand(1, 3, 10, 10)
    assert center_crop_resize(square, (5, 5)).shape == (1, 3, 5, 5)
    assert torch.equal(center_crop_resize(square, (10, 10)), square)


def test_shrinking_is_antialiased():
    # one bright line every three pixels, shrunk 3x: the true average is 1/3 everywhere;
    # a plain bilinear sampler lands on the bright lines and sees only them
    stripes = torch.zeros(1, 1, 48, 48)
    stripes[..., 1::3] = 1.0
    shrunk = center_crop_resize(stripes, (16, 16))
    assert shrunk.shape == (1, 1, 16, 16)
    assert torch.allclose(shrunk, torch.full_like(shrunk, 1 / 3), atol=0.05)


def test_crop_and_resize_match_the_release_pil_lanczos(tmp_path):
    # the release: crop the centred square of the PIL image, then resize((R, R), LANCZOS)
    import numpy as np
    from PIL import Image

    from motionnft.image import load_image, resize_lanczos

    rgb = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    release = Image.open(tmp_path / "wide.png").crop((16, 0, 80, 64)).resize((40, 40), Image.Resampling.LANCZOS)
    expected = torch.from_numpy(np.asarray(release, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
    ours = center_crop_resize(load_image(tmp_path / "wide.png"), (40, 40))
    assert ours.shape == expected.shape == (1, 3, 40, 40)
    assert float((ours - expected).abs().max()) < 1.5 / 255  # PIL rounds to 8 bits after each pass
    batch = torch.rand(2, 3, 30, 20, dtype=torch.float64)
    out = resize_lanczos(batch, (15, 10))
    assert out.dtype == torch.float64 and out.shape == (2, 3, 15, 10) and 0 <= float(out.min()) <= float(out.max()) <= 1


def test_the_synthetic_dataset_moves_each_figure_as_its_instruction_says():
    dataset = motion_edit_dataset(24, size=64, seed=5)
    again = motion_edit_dataset(4, size=64, seed=5)  # the same seed draws the same first samples
    assert len(dataset) == 24 and dataset.layout == "synthetic"
    assert [s.prompt for s in again] == [s.prompt for s in dataset[:4]]
    assert torch.equal(dataset[3].target_image(), again[3].target_image())
    kinds = {sample.extra["motion"] for sample in dataset}
    assert kinds == set(TASKS["steps"].motions)  # the built-in task by default
    for sample in dataset:
        instruction, change = MOTION_INSTRUCTIONS[sample.extra["motion"]]
        assert sample.prompt == instruction
        start, goal = FigurePose(**sample.extra["start"]), FigurePose(**sample.extra["goal"])
        assert goal == start.moved(**change)
        flow = scene_flow(start, goal, (64, 64))
        moving = flow.norm(dim=0) > 0.5
        mean_dx = float(flow[0][moving].mean())
        mean_dy = float(flow[1][moving].mean())
        expected = {"step_right": (16, 0), "step_left": (-16, 0), "jump": (0, -8)}[sample.extra["motion"]]
        assert abs(mean_dx - expected[0]) < 0.5 and abs(mean_dy - expected[1]) < 0.5  # pixels at 64 px
        assert sample.input_image().shape == (1, 3, 64, 64)
        assert not torch.equal(sample.input_image(), sample.target_image())


def test_the_synthetic_dataset_can_under_move_a_share_of_its_targets():
    dataset = motion_edit_dataset(16, size=32, seed=2, motions=("raise", "right"), partial_share=0.5,
                                  partial_scale=0.5, first_scene=100, scenes=3, task="poses")
    scales = [sample.extra["motion_scale"] for sample in dataset]
    assert set(scales) == {0.5, 1.0}  # both kinds occur in 16 draws of a fair coin (seeded)
    for sample in dataset:
        assert sample.extra["motion"] in ("raise", "right") and 100 <= sample.extra["scene"] <= 102
        instruction, change = MOTION_INSTRUCTIONS[sample.extra["motion"]]
        start = FigurePose(**sample.extra["start"])
        # the instruction and the goal are the full motion; the target shows its given share
        assert sample.prompt == instruction and FigurePose(**sample.extra["goal"]) == start.moved(**change)
        shown = start.moved(**{k: v * sample.extra["motion_scale"] for k, v in change.items()})
        expected = render_scene(shown, (32, 32), sample.extra["scene"])
        assert (sample.target_image() - expected).abs().max() <= 1 / 255 + 1e-6  # PNG rounding only

    still = motion_edit_dataset(6, size=32, seed=2, partial_share=1.0, partial_scale=0.0, task="poses")
    assert all(s.extra["motion_scale"] == 0.0 and torch.equal(s.input_image(), s.target_image()) for s in still)


def test_the_synthetic_dataset_rejects_unknown_motions_and_shares_outside_0_1():
    with pytest.raises(ValueError, match="hop"):
        motion_edit_dataset(2, size=32, motions=("raise", "hop"))
    with pytest.raises(ValueError, match="task 'dance'"):
        motion_edit_dataset(2, size=32, task="dance")
    with pytest.raises(ValueError, match="partial_share"):
        motion_edit_dataset(2, size=32, partial_share=1.5)


def test_synthetic_draws_of_different_seeds_share_no_scene():
    first, second = motion_edit_dataset(40, size=32, seed=0), motion_edit_dataset(40, size=32, seed=1)
    scenes = [sample.extra["scene"] for sample in first]
    assert len(set(scenes)) == 40  # every sample its own scene
    assert not set(scenes) & {sample.extra["scene"] for sample in second}
    # the scene number really is the drawing: the same pose in another scene looks different
    pose = FigurePose()
    assert not torch.equal(render_scene(pose, (32, 32), scenes[0], "plain"), render_scene(pose, (32, 32), scenes[1], "plain"))


def test_the_poses_task_draws_arm_and_step_edits_over_textured_scenes():
    dataset = motion_edit_dataset(24, size=32, seed=5, task="poses")
    assert {sample.extra["motion"] for sample in dataset} == set(TASKS["poses"].motions)
    assert {sample.extra["style"] for sample in dataset} == {"textured"}
