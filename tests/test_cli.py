"""The motionnft command line, run as users run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from motionnft.cli import main
from motionnft.flow import read_flo
from motionnft.image import load_image, save_image
from motionnft.synthetic import FigurePose, render_scene

KEYS = {"d_mag", "d_dir", "m_move", "combined", "reward_continuous", "reward", "mas", "mas_hard_failure"}


@pytest.fixture
def pair(tmp_path):
    start, goal = FigurePose(), FigurePose().moved(dx=0.03, arm=20)
    a = save_image(render_scene(start, (80, 96)), tmp_path / "a.png")
    b = save_image(render_scene(goal, (80, 96)), tmp_path / "b.png")
    return a, b


def test_flow_writes_a_flo_and_its_colour_coding(pair, tmp_path, capsys):
    a, b = pair
    code = main(["flow", str(a), str(b), "--preset", "fast", "--out", str(tmp_path / "f.flo"),
                 "--viz", str(tmp_path / "f.png"), "--legend"])
    assert code == 0
    flow = read_flo(tmp_path / "f.flo")
    assert flow.shape == (2, 80, 96)
    assert flow.norm(dim=0).max() > 1  # the figure moved
    assert load_image(tmp_path / "f.png").shape == (1, 3, 80, 96)
    assert "f.flo: 96x80 flow" in capsys.readouterr().out


def test_reward_json_carries_every_term_and_the_constants(pair, capsys):
    a, b = pair
    assert main(["reward", str(a), str(b), str(b), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert KEYS <= set(payload)
    assert payload["reward"] == 1.0 and payload["mas"] == 100.0
    assert payload["constants"]["mas"]["alpha"] == 0.7
    assert payload["constants"]["reward"]["variant"] == "code"


def test_reward_table_and_breakdown(pair, tmp_path, capsys):
    a, b = pair
    assert main(["reward", str(a), str(a), str(b), "--variant", "paper", "--breakdown", str(tmp_path / "bd.png")]) == 0
    out = capsys.readouterr().out
    for label in ("D_mag", "D_dir", "M_move", "reward, quantised", "MAS", "hard failure", "variant=paper"):
        assert label in out
    assert load_image(tmp_path / "bd.png").shape[-1] > 3 * 96


def test_missing_and_unreadable_inputs_exit_2_with_the_path(pair, tmp_path, capsys):
    a, _ = pair
    assert main(["reward", str(a), str(tmp_path / "nope.png"), str(a)]) == 2
    assert "nope.png" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("hello")
    assert main(["flow", str(a), str(tmp_path / "text.png"), "--out", str(tmp_path / "x.flo")]) == 2
    assert "cannot read" in capsys.readouterr().err and not (tmp_path / "x.flo").exists()


def test_an_output_path_that_cannot_be_a_file_exits_2_naming_it(pair, tmp_path, capsys):
    a, b = pair
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "folder.flo").mkdir()
    cases = {str(tmp_path / "notes.txt" / "x.flo"): f"{tmp_path / 'notes.txt'} is a file, not a folder",
             str(tmp_path / "folder.flo"): f"{tmp_path / 'folder.flo'}: is a folder, expected a file to write"}
    for out, message in cases.items():
        assert main(["flow", str(a), str(b), "--preset", "fast", "--out", out]) == 2
        error = capsys.readouterr().err
        assert message in error and ".tmp" not in error and len(error.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not any((tmp_path / "folder.flo").iterdir())


def test_flow_of_different_sizes_resizes_the_second_image(pair, tmp_path, capsys):
    a, _ = pair
    big = save_image(torch.rand(3, 40, 50), tmp_path / "big.png")
    assert main(["flow", str(a), str(big), "--out", str(tmp_path / "f.flo")]) == 0
    assert read_flo(tmp_path / "f.flo").shape == (2, 80, 96)
    assert "resized" in capsys.readouterr().err


def test_demo_scores_the_built_in_sample(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "motionnft", "demo", "--size", "96", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    numbers = json.loads((out / "rewards.json").read_text())
    assert set(numbers["edits"]) == {"faithful", "half_way", "opposite", "unchanged"}
    assert numbers["edits"]["unchanged"]["mas"] == 0.0
    for name in ("input.png", "target.png", "breakdown_faithful.png", "flow_opposite.png"):
        assert (out / name).is_file()
    assert "MAS constants: alpha=0.7" in result.stdout
