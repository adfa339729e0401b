"""``motionnft guide`` and the flow-alignment score it prints: what a user runs on the tiny base."""

from __future__ import annotations

import re

import pytest
import torch

from motionnft.cli import main
from motionnft.flow import WeightsNotFoundError, create_estimator, write_flo
from motionnft.guidance.alignment import flow_alignment, guidance_flow
from motionnft.image import load_image, save_image
from motionnft.synthetic import FigurePose, render_scene, scene_flow

SIZE = (64, 64)
POSE = FigurePose(x=0.4, y=0.62, arm_angle=20.0)


@pytest.fixture
def scene(tmp_path):
    """The tiny base's kind of image and a target flow moving the figure 8 px right."""
    goal = POSE.moved(dx=8 / SIZE[1])
    source = save_image(render_scene(POSE, SIZE, 0, "plain"), tmp_path / "source.png")
    write_flo(tmp_path / "target.flo", scene_flow(POSE, goal, SIZE))
    return source, tmp_path / "target.flo", render_scene(goal, SIZE, 0, "plain")[None]


def test_flow_alignment_ranks_the_result_that_moved_as_told_above_a_copy(scene):
    source_path, flow_path, goal = scene
    source = load_image(source_path)
    from motionnft.flow import read_flo

    target = read_flo(flow_path)[None]
    estimator = create_estimator("dis", "medium")
    moved = flow_alignment(source, goal, target, estimator)
    copy = flow_alignment(source, source, target, estimator)
    assert copy.errors.moved.item() == pytest.approx(8.0, abs=1.0)  # nothing moved: the whole 8 px missing
    assert moved.errors.moved.item() < 2.0
    assert moved.reward.mas.score.item() > copy.reward.mas.score.item() + 5
    assert moved.error_map.shape == (1, *SIZE)


def test_guide_ends_nearer_the_target_flow_than_the_same_noise_unguided(scene, tmp_path, capsys):
    source, flow, _ = scene
    code = main(["guide", "--model", "tiny", "--image", str(source), "--flow", str(flow), "--prompt", "step right",
                 "--out", str(tmp_path / "guided.png"), "--unguided-out", str(tmp_path / "unguided.png"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    moved = {name: float(value) for name, value in re.findall(r"(\w+): EPE moved ([\d.]+) px", out)}
    assert set(moved) == {"unguided", "guided"}, out
    assert moved["guided"] < 0.5 * moved["unguided"], out
    assert load_image(tmp_path / "guided.png").shape == (1, 3, *SIZE)
    assert load_image(tmp_path / "unguided.png").shape == (1, 3, *SIZE)


def test_guide_refuses_a_flow_of_another_size_naming_both(scene, tmp_path, capsys):
    source, _, _ = scene
    write_flo(tmp_path / "small.flo", torch.zeros(2, 32, 32))
    code = main(["guide", "--model", "tiny", "--image", str(source), "--flow", str(tmp_path / "small.flo"),
                 "--out", str(tmp_path / "r.png")])
    err = capsys.readouterr().err
    assert code == 2 and "small.flo is 32x32" in err and "source.png is 64x64" in err
    assert not (tmp_path / "r.png").exists()


def test_the_guiding_flow_is_chosen_by_name_and_a_missing_network_names_its_folders():
    flow_fn = guidance_flow("correlation")
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    flow_fn(image.detach(), image).sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0  # differentiable in the result
    with pytest.raises(ValueError, match="guiding flow 'dis'"):
        guidance_flow("dis")
    with pytest.raises(WeightsNotFoundError, match="Folders searched"):
        guidance_flow("raft_small", weights="no_such_raft.pth")
