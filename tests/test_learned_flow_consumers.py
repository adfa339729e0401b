"""The miner, the evaluator and the trainer take a learned flow backend by name, with its weights."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from learned_flow_fixtures import weight_folder
from mining_clips import CLIP_FPS, clip_frames, write_clip

from motionnft.cli import main
from motionnft.data import DatasetWriter, open_dataset
from motionnft.evaluate import EditFolder, EvaluationConfig, evaluate
from motionnft.flow.raft import RAFTFlow
from motionnft.image import save_image
from motionnft.lora import load_lora
from motionnft.mining import MiningConfig, PairMiner, frames_source
from motionnft.synthetic import FigurePose, render_scene
from motionnft.train import load_config, train


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    return weight_folder(tmp_path, monkeypatch)


def test_the_miner_runs_the_backend_and_weights_its_config_names(weights_dir):
    # A name the automatic search would never pick, so only the config can have chosen it.
    shutil.copy(weights_dir / "raft-small.pth", weights_dir / "my-raft.pth")
    config = MiningConfig(backend="raft_small", preset="fast", weights="my-raft.pth", precision="fp32")
    miner = PairMiner(config)
    assert isinstance(miner.estimator, RAFTFlow)
    assert miner.estimator.weights == (weights_dir / "my-raft.pth").resolve()
    assert miner.estimator.iterations == 6  # the fast preset
    (result,) = list(miner.mine(frames_source(clip_frames("subject"), fps=CLIP_FPS)))
    assert all(math.isfinite(value) for value in result.metrics.values() if value is not None)


def test_a_mining_config_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match=r"precision='fp8': expected one of fp32, bf16, fp16"):
        MiningConfig(precision="fp8")


def test_the_mine_command_passes_weights_to_the_miner(weights_dir, tmp_path, capsys):
    video = write_clip(tmp_path / "subject.mp4", "subject")
    out = tmp_path / "dataset"
    assert main(["mine", str(video), "--out", str(out), "--backend", "raft_small", "--preset", "fast",
                 "--weights", str(weights_dir / "raft-small.pth"), "--json"]) == 0
    printed = capsys.readouterr().out
    assert "flow raft_small fast" in printed
    config = json.loads(printed[printed.index("{"):])["config"]
    assert (config["backend"], config["weights"]) == ("raft_small", str(weights_dir / "raft-small.pth"))


def test_evaluation_records_the_weight_file_that_scored_it(weights_dir, tmp_path):
    start = FigurePose()
    source, target = render_scene(start, (64, 80)), render_scene(start.moved(dx=0.05, arm=30), (64, 80))
    with DatasetWriter(tmp_path / "bench") as writer:
        writer.add("s0", "move the figure right", source, target)
    (tmp_path / "perfect").mkdir()
    save_image(target, tmp_path / "perfect" / "s0.png")
    config = EvaluationConfig(backend="unimatch")
    result = evaluate(open_dataset(tmp_path / "bench"), [EditFolder("perfect", tmp_path / "perfect")],
                      tmp_path / "out", config, show_progress=False)
    (record,) = result.records
    assert record["mas"] == pytest.approx(100.0)  # the edit's flow equals the ground truth's
    flow = json.loads((tmp_path / "out" / "summary.json").read_text())["constants"]["flow"]
    assert flow == {"backend": "unimatch", "preset": "default", "weights": "gmflow-scale1-things-e9887eda.pth",
                    "precision": "fp32"}
    assert "flow `unimatch` preset `default` weights `gmflow-scale1-things-e9887eda.pth` (fp32)" in \
        (tmp_path / "out" / "table.md").read_text()


def test_the_trainer_rewards_with_a_learned_backend(weights_dir, tmp_path):
    fast = {"tiny_size": "test", "tiny_codec": "patch", "base_weights": "", "synthetic_samples": 4, "prompts_per_epoch": 2, "rollouts_per_prompt": 2,
            "sampling_steps": 2, "save_every": 0, "sample_grid_every": 0, "group_std_min": 0.0,
            "group_mean_max": 1.01, "max_steps": 1, "output_dir": str(tmp_path / "run")}
    config = load_config("tiny", overrides={**fast, "flow_backend": "raft_small", "flow_preset": "fast",
                                            "flow_weights": "raft-small.pth"})
    result = train(config, resume=None, show_progress=False)
    assert result.step == 1
    lora = load_lora(tmp_path / "run" / "motionnft_lora.safetensors")
    assert "(raft_small, code)" in lora.metadata["motionnft.reward"]


def test_the_trainer_refuses_an_unknown_flow_precision():
    with pytest.raises(ValueError, match=r"flow_precision 'half': expected one of fp32, bf16, fp16"):
        load_config("tiny", overrides={"flow_precision": "half"})


def test_the_trainer_names_a_missing_flow_weight_file(weights_dir, tmp_path):
    config = load_config("tiny", overrides={"tiny_size": "test", "tiny_codec": "patch", "base_weights": "",
                                            "output_dir": str(tmp_path / "run"),
                                            "flow_backend": "raft_small", "flow_weights": "absent.pth"})
    with pytest.raises(FileNotFoundError, match=r"absent\.pth") as error:
        train(config, resume=None, show_progress=False)
    assert str(weights_dir) in str(error.value)
