"""The command line with the learned flow backends: --weights, --precision, --device, backends."""

from __future__ import annotations

import json

import pytest
import torch

from learned_flow_fixtures import weight_folder
from motionnft.cli import main
from motionnft.flow import read_flo
from motionnft.flow.weights import WEIGHTS_ENV
from motionnft.image import save_image
from motionnft.reward import motion_reward
from motionnft.synthetic import FigurePose, render_scene


@pytest.fixture
def pair(tmp_path):
    start, goal = FigurePose(), FigurePose().moved(dx=0.03, arm=20)
    a = save_image(render_scene(start, (48, 64)), tmp_path / "a.png")
    b = save_image(render_scene(goal, (48, 64)), tmp_path / "b.png")
    return a, b


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A folder in $MOTIONNFT_FLOW_WEIGHTS with RAFT small and UniMatch files; torch hub isolated."""
    return weight_folder(tmp_path, monkeypatch)


def test_flow_runs_a_learned_backend_from_a_weights_path(pair, tmp_path, capsys, weights_dir):
    a, b = pair
    out = tmp_path / "raft.flo"
    assert main(["flow", str(a), str(b), "--backend", "raft_small", "--preset", "fast",
                 "--weights", str(weights_dir / "raft-small.pth"), "--precision", "fp32", "--out", str(out)]) == 0
    assert read_flo(out).shape == (2, 48, 64)
    assert "RAFTFlow(small, raft-small.pth, preset='fast', iterations=6" in capsys.readouterr().out
    # A bare name is looked up in the weight folders.
    assert main(["flow", str(a), str(b), "--backend", "unimatch", "--weights", "gmflow-scale1-things-e9887eda.pth",
                 "--out", str(out)]) == 0


def test_missing_weights_exit_2_naming_the_folders_and_files(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    a, b = pair
    assert main(["flow", str(a), str(b), "--backend", "raft_large", "--out", str(tmp_path / "f.flo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("motionnft flow: error: flow backend 'raft_large' needs a weight file")
    assert str(tmp_path / "nowhere") in err and "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in err and "raft-things.pth" in err


def test_options_that_do_not_fit_the_backend_exit_2(pair, tmp_path, capsys, weights_dir):
    a, b = pair
    out = str(tmp_path / "f.flo")
    assert main(["flow", str(a), str(b), "--weights", "x.pth", "--out", out]) == 2
    assert "flow backend 'dis' uses no weights" in capsys.readouterr().err
    assert main(["flow", str(a), str(b), "--backend", "raft_small", "--device", "nodevice", "--out", out]) == 2
    assert "device 'nodevice'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["flow", str(a), str(b), "--backend", "raft_small", "--device", "cuda", "--out", out]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_reward_json_records_the_flow_weights(pair, capsys, weights_dir):
    a, b = pair
    assert main(["reward", str(a), str(b), str(b), "--json", "--backend", "unimatch"]) == 0
    flow = json.loads(capsys.readouterr().out)["flow"]
    assert flow == {"backend": "unimatch", "preset": "default",
                    "weights": str((weights_dir / "gmflow-scale1-things-e9887eda.pth").resolve()), "precision": "fp32"}


def test_backends_lists_presets_files_and_folders(capsys, weights_dir):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "raft_small: RAFT small" in out and f"found {weights_dir / 'raft-small.pth'}" in out
    assert "raft_large: RAFT large" in out and "MISSING" in out and "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in out
    assert "presets: fast, medium (default), accurate" in out
    assert f"  {weights_dir}\n" in out


def test_the_reward_takes_an_estimator_built_from_a_backend_name(pair):
    from motionnft.flow import create_estimator
    from motionnft.image import load_image

    a, b = (load_image(p) for p in pair)
    assert motion_reward(a, b, b, estimator=create_estimator("farneback")).reward.item() == 1.0
