"""``motionnft animate``: a tiny random TPSMM (save_converted) driven by a short synthetic clip,
streamed to a video with one frame per driving frame; bad inputs exit 2 naming the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import motionnft.cli as cli
from motionnft.animation import NETWORKS, TPSMM, TPSMMConfig, save_converted
from motionnft.image import save_image
from motionnft.video import probe_video, sample_frames, write_video

FRAMES = 7
FPS = 10.0
CLIP = (48, 64)  # (H, W): not square, and not the model's size


def run(argv) -> int:
    return cli.main([str(a) for a in argv])


def moving_square(frames: int = FRAMES) -> list[np.ndarray]:
    """A bright square sliding right over a grey gradient, (H, W, 3) uint8 frames."""
    height, width = CLIP
    background = np.linspace(40, 120, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    out = []
    for index in range(frames):
        frame = background.copy()
        left = 8 + 4 * index
        frame[16:32, left:left + 16] = (230, 200, 60)
        out.append(frame.astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("animate")
    torch.manual_seed(0)
    model = TPSMM(TPSMMConfig.tiny()).eval()
    weights = folder / "tiny_tpsmm.safetensors"
    save_converted({name: getattr(model, name).state_dict() for name in NETWORKS
                    if getattr(model, name) is not None}, weights)
    video = write_video(folder / "driving.mp4", iter(moving_square()), FPS, crf=12)
    image = folder / "source.png"
    save_image(torch.rand(1, 3, 40, 56), image)
    return {"weights": weights, "video": video, "image": image, "folder": folder}


def base(files, out, *extra) -> list:
    return ["animate", "--image", files["image"], "--video", files["video"], "--model", files["weights"],
            "--size", 64, "--out", out, "--quiet", *extra]


def test_the_command_is_listed():
    parser = cli.build_parser()
    args = parser.parse_args(["animate", "--image", "a.png", "--video", "b.mp4", "--model", "c.safetensors",
                              "--out", "d.mp4"])
    assert args.handler.__name__ == "command_animate" and args.mode == "relative"
    assert args.output_files == ("out",) and set(args.input_files) == {"image", "video", "model"}


@pytest.mark.parametrize("mode", ["relative", "standard"])
def test_one_output_frame_per_driving_frame_at_the_driving_fps(files, tmp_path, capsys, mode):
    out = tmp_path / f"{mode}.mp4"
    assert run(base(files, out, "--mode", mode)) == 0
    info = probe_video(out)
    frames = [frame.rgb for frame in sample_frames(out)]
    assert len(frames) == FRAMES
    assert frames[0].shape == (64, 64, 3)
    assert info.fps == pytest.approx(FPS)
    printed = capsys.readouterr().out
    assert "MIT" in printed and f"{FRAMES} frames" in printed


def test_background_and_fps_options(files, tmp_path):
    out = tmp_path / "background.mkv"
    assert run(base(files, out, "--background", "--no-adapt-scale", "--fps", 5)) == 0
    assert len(list(sample_frames(out))) == FRAMES
    assert probe_video(out).fps == pytest.approx(5.0)


def test_bad_inputs_exit_2_naming_the_input(files, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    out = tmp_path / "out.mp4"
    cases = {
        "--image": base(files, out)[:2] + [tmp_path / "missing.png"] + base(files, out)[3:],
        "--video": ["animate", "--image", files["image"], "--video", text, "--model", files["weights"],
                    "--out", out, "--quiet"],
        "--model": ["animate", "--image", files["image"], "--video", files["video"], "--model", text,
                    "--out", out, "--quiet"],
        "--size": base(files, out, "--size", 50),
        "--mode": base(files, out, "--mode", "avd"),
        "--out": base(files, tmp_path / "out.gif"),
        "--fps": base(files, out, "--fps", 0),
    }
    for option, argv in cases.items():
        assert run(argv) == 2, option
        error = capsys.readouterr().err
        assert f"motionnft animate: error: {option}" in error, (option, error)
    missing_video = ["animate", "--image", files["image"], "--video", tmp_path / "none.mp4", "--model",
                     files["weights"], "--out", out, "--quiet"]
    assert run(missing_video) == 2
    assert "--video" in capsys.readouterr().err
    missing_model = ["animate", "--image", files["image"], "--video", files["video"], "--model",
                     tmp_path / "none.safetensors", "--out", out, "--quiet"]
    assert run(missing_model) == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert not out.exists()


def test_train_animation_writes_a_model_that_animate_and_eval_animation_read(files, tmp_path, capsys):
    from mining_clips import write_clip

    clip = write_clip(tmp_path / "clip.mp4", "subject", seconds=2.0)
    folder = tmp_path / "run"
    assert run(["train-animation", "--video", str(clip), "--out", str(folder), "--steps", "2", "--batch-size", "2",
                 "--size", "64", "--perceptual", "l1_pyramid", "--holdout", "0.3"]) == 0
    out = capsys.readouterr().out
    assert (folder / "tpsmm.safetensors").is_file()
    from motionnft.animation.checkpoint import read_animation_config

    assert read_animation_config(folder / "tpsmm.safetensors").kind == "paper"  # the default: the paper's model
    assert "held-out reconstruction L1" in out and "static source" in out
    assert run(["eval-animation", "--model", str(folder / "tpsmm.safetensors"), "--video", str(clip), "--size", "64",
                 "--skip", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "clip.mp4: L1" in out and "motion EPE" in out and "AKD/MKR/AED: not computed" in out
    assert run(["eval-animation", "--model", str(folder / "tpsmm.safetensors"), "--video", str(clip),
                 "--skip", "1.5"]) == 2
    animated = tmp_path / "paper.mp4"  # motionnft animate takes the paper model's file (kind from its header)
    assert run(["animate", "--image", str(files["image"]), "--video", str(files["video"]), "--model",
                str(folder / "tpsmm.safetensors"), "--out", str(animated), "--size", "64", "--quiet"]) == 0
    assert len(list(sample_frames(animated))) == FRAMES
