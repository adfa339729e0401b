"""``motionnft mine``: videos in, a dataset folder and a summary by reason out."""

from __future__ import annotations

import json
import sys
import types

import pytest
from mining_clips import write_clip

from motionnft.cli import main
from motionnft.data import open_dataset
from motionnft.image import load_image


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_clips")
    return {kind: write_clip(folder / f"{kind}.mp4", kind) for kind in ("subject", "pan")}


def test_mine_writes_the_dataset_and_summarises_by_reason(videos, tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["mine", str(videos["subject"]), str(videos["pan"]), "--out", str(out),
                 "--contact-sheet", str(tmp_path / "sheet.png")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "candidate pairs: 2; kept: 1; rejected: 1" in printed
    assert "camera_motion" in printed and "no judge (prompts left empty)" in printed
    assert f"{out}/ holds 1 pairs" in printed
    (sample,) = open_dataset(out)
    assert sample.extra["source"]["video_name"] == "subject.mp4" and sample.prompt == ""
    assert load_image(tmp_path / "sheet.png").shape[2] > 2 * 144  # two rows
    assert (out / "rejected.jsonl").is_file()
    # A rerun resumes: nothing is added twice.
    assert main(["mine", str(videos["subject"]), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    assert "kept: 0 (+1 already in the dataset)" in printed
    summary = json.loads(printed[printed.index("{"):])
    assert (summary["kept"], summary["existing"]) == (0, 1)
    assert summary["config"]["window_seconds"] == 3.0
    assert len(open_dataset(out)) == 1


def test_every_threshold_is_a_flag(videos, tmp_path, capsys):
    code = main(["mine", str(videos["pan"]), "--out", str(tmp_path / "ds"), "--max-camera-motion", "1",
                 "--camera-model", "similarity", "--json"])
    assert code == 0
    summary = json.loads((out := capsys.readouterr().out)[out.index("{"):])
    assert summary["kept"] == 1
    assert summary["config"]["max_camera_motion"] == 1.0 and summary["config"]["camera_model"] == "similarity"
    assert main(["mine", str(videos["pan"]), "--out", str(tmp_path / "ds2"), "--no-chain-flow",
                 "--window-seconds", "2", "--sample-fps", "2", "--json"]) == 0
    summary = json.loads((out := capsys.readouterr().out)[out.index("{"):])
    assert summary["config"]["chain_flow"] is False and summary["analysed_frames"] == 7  # 3.5 s at 2 per second


def test_bad_inputs_exit_2_naming_them(videos, tmp_path, capsys):
    assert main(["mine", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "ds")]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    assert main(["mine", str(videos["pan"]), "--out", str(tmp_path / "ds"), "--min-motion", "0.9"]) == 2
    assert "min_motion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mine", str(videos["pan"]), "--out", str(tmp_path / "ds"), "--pairing", "random"])


def test_a_judge_server_drafts_the_prompts(videos, tmp_path, monkeypatch, capsys):
    made = []

    class FakeJudgeClient:
        def __init__(self, base_url, model, api_key=None, **options):
            made.append((base_url, model))

        def rate_mining_criteria(self, input_image, target_image):
            return {"stable_setting": 1.0, "significant_motion": 1.0, "intact_subjects": 1.0}

        def draft_instruction(self, input_image, target_image):
            return "Make the figure walk right."

    monkeypatch.setitem(sys.modules, "motionnft.judge", types.SimpleNamespace(JudgeClient=FakeJudgeClient))
    code = main(["mine", str(videos["subject"]), "--out", str(tmp_path / "ds"),
                 "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "qwen"])
    assert code == 0 and made == [("http://127.0.0.1:9/v1", "qwen")]
    assert "judge http://127.0.0.1:9/v1" in capsys.readouterr().out
    assert open_dataset(tmp_path / "ds")[0].prompt == "Make the figure walk right."


def test_save_flow_writes_each_pairs_flow_and_moving_region_close_to_the_true_motion(videos, tmp_path, capsys):
    from mining_clips import clip

    from motionnft.flow import read_flo
    from motionnft.guidance.targets import edit_region

    out = tmp_path / "ds"
    assert main(["mine", str(videos["subject"]), "--out", str(out), "--save-flow"]) == 0
    capsys.readouterr()
    (sample,) = open_dataset(out)
    flow = read_flo(out / sample.extra["flow"])
    mask = load_image(out / sample.extra["mask"])[0, 0] > 0.5
    source = sample.extra["source"]
    truth = clip("subject").flow(source["time_input"], source["time_target"])
    assert flow.shape == truth.shape and mask.shape == truth.shape[-2:]
    moving = truth.norm(dim=0) > 0.5
    error = (flow - truth).norm(dim=0)
    assert error[moving].mean() < 0.4 * truth.norm(dim=0)[moving].mean()  # the subject's motion, measured
    background = edit_region(truth[None], margin=6)[0, 0] < 0.5  # neither the subject nor where it lands
    motion = truth.norm(dim=0)[moving].mean()
    assert error[background].mean() < 0.05 * motion  # the still background stays still (to DIS's noise)
    assert (mask & moving).sum() > 0.85 * moving.sum()  # the mask holds the moving subject
    assert (mask & moving).sum() > 0.5 * mask.sum()  # and mostly it
