"""Bad input on the command line: every case exits 2 with one line naming what was wrong, before
any work and without writing anything; and inputs that used to give a silently wrong result."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from motionnft.cli import main
from motionnft.image import save_image

FAKE_URL = "http://127.0.0.1:9/v1"  # the discard port: never reached, inputs fail first


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A folder of good and bad inputs; commands run from inside it (relative paths as users type)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "b.png", "c.png"):
        save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(len(name))), name)
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "bad.png").write_text("not a png either\n")
    (tmp_path / "folder").mkdir()
    os.symlink("loop", tmp_path / "loop")
    os.replace(save_image(torch.rand(1, 3, 16, 16), tmp_path / "still.png"), tmp_path / "still.mp4")
    (tmp_path / "bad.toml").write_text("lora_rank = = 4\n")
    (tmp_path / "wrong.toml").write_text("lora_rank = 'four'\n")
    state = tmp_path / "run" / "checkpoints" / "step-000001"
    state.mkdir(parents=True)
    (state / "trainer_state.pt").write_text("step 1\n")
    (state.parent / "latest").write_text("step-000001\n")
    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.full((4, 8), float("nan")),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(tmp_path / "nan.safetensors"))
    _dataset(tmp_path / "no_id", {"prompt": "p", "input_image": "images/a.png", "target_image": "images/a.png"})
    _dataset(tmp_path / "typed", {"id": "s", "prompt": 5, "input_image": 7, "target_image": "images/a.png"})
    _dataset(tmp_path / "outside", {"id": "s", "prompt": "p", "input_image": "../a.png", "target_image": "../b.png"})
    _dataset(tmp_path / "bad_id", {"id": "../../x", "prompt": "p", "input_image": "images/a.png",
                                   "target_image": "images/a.png"})
    _dataset(tmp_path / "good", {"id": "s", "prompt": "p", "input_image": "images/a.png", "target_image": "images/a.png"})
    return tmp_path


def _dataset(folder, record) -> None:
    (folder / "images").mkdir(parents=True)
    save_image(torch.rand(1, 3, 32, 32), folder / "images" / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps(record) + "\n")


# (command line, text the one-line message must hold)
CASES = [
    ("flow missing.png b.png --out o.flo", "missing.png"),
    ("flow folder b.png --out o.flo", "folder"),
    ("flow bad.png b.png --out o.flo", "bad.png"),
    ("flow a.png notes.txt --out o.flo", "notes.txt"),
    ("flow a.png b.png --out notes.txt/x.flo", "notes.txt/x.flo"),
    ("flow a.png b.png --out folder", "--out folder"),
    ("flow a.png b.png --out o.flo --viz notes.txt/v.png", "--viz notes.txt/v.png"),
    ("flow a.png b.png --out o.flo --viz folder", "--viz folder"),
    ("flow a.png b.png --out a.png", "is the input a.png"),
    ("flow a.png b.png --out o.flo --preset nowhere", "nowhere"),
    ("reward a.png b.png missing.png", "missing.png"),
    ("reward a.png b.png c.png --breakdown folder", "--breakdown folder"),
    ("reward a.png b.png c.png --breakdown c.png", "is the input c.png"),
    ("demo --out notes.txt", "--out notes.txt"),
    ("demo --out notes.txt/sub", "--out notes.txt/sub"),
    ("mine notes.txt --out mined", "notes.txt"),
    ("mine missing.mp4 --out mined", "missing.mp4"),
    ("mine still.mp4 --out mined", "still.mp4 is a still image"),
    ("mine still.mp4 --out notes.txt", "--out notes.txt"),
    ("mine still.mp4 --out loop", "--out loop"),
    ("mine still.mp4 --out mined --contact-sheet folder", "--contact-sheet folder"),
    ("train --output-dir notes.txt", "--output-dir notes.txt"),
    ("train --output-dir notes.txt/run", "--output-dir notes.txt/run"),
    ("train --config bad.toml --output-dir r", "bad.toml"),
    ("train --config wrong.toml --output-dir r", "lora_rank"),
    ("train --config missing.toml --output-dir r", "missing.toml"),
    ("train --set resolution=7 --output-dir r", "resolution"),
    ("train --set no_such_setting=1 --output-dir r", "no_such_setting"),
    ("train --set lora_rank=abc --output-dir r", "lora_rank"),
    ("train --set sampler=nope --output-dir r", "sampler"),
    ("train --resume run --output-dir r", "trainer_state.pt"),
    ("train --set base_weights=other.safetensors --output-dir r", "other.safetensors"),
    ("train --set base_weights=notes.txt --output-dir r", "notes.txt"),
    ("train --data no_id --output-dir r", "missing id"),
    ("train --data typed --output-dir r", "input_image"),
    ("train --data outside --output-dir r", "resolves outside"),
    ("train --data missing_folder --output-dir r", "missing_folder"),
    ("lora info notes.txt", "notes.txt"),
    ("lora info missing.safetensors", "missing.safetensors"),
    ("lora info nan.safetensors", "NaN or infinite"),
    ("lora info other.safetensors", "other.safetensors"),
    ("lora convert nan.safetensors out.safetensors", "nan.safetensors"),
    ("lora convert nan.safetensors folder", "OUT folder"),
    ("lora convert nan.safetensors notes.txt/x.safetensors", "OUT notes.txt/x.safetensors"),
    ("eval no_id --edits a=folder --out e", "missing id"),
    ("eval outside --edits a=folder --out e", "resolves outside"),
    ("eval bad_id --edits a=folder --out e", "../../x"),
    ("eval missing_folder --edits a=folder --out e", "missing_folder"),
    ("eval good --edits a=missing_edits --out e", "missing_edits"),
    ("eval good --edits a=folder --out notes.txt/e", "--out notes.txt/e"),
    ("edit --model tiny --data missing_folder --out e", "missing_folder"),
    ("edit --model tiny --data good --out notes.txt", "--out notes.txt"),
    ("edit --model tiny --data good --out e --lora nan.safetensors", "nan.safetensors"),
    ("edit --model tiny --data good --out e --base-weights notes.txt", "notes.txt"),
    ("edit --model tiny --data bad_id --out e", "../../x"),
    ("data synthetic --count 2 --seed 0 --out notes.txt", "--out notes.txt"),
    ("data synthetic --count 0 --seed 0 --out s", "count"),
    (f"judge a.png missing.png --instruction x --judge-url {FAKE_URL}", "missing.png"),
    (f"judge a.png bad.png --instruction x --judge-url {FAKE_URL}", "bad.png"),
]


def _files(root) -> set:
    return {(path, path.stat().st_size if path.is_file() else -1) for path in root.rglob("*") if not path.is_symlink()}


@pytest.mark.parametrize("command, named", CASES, ids=[c for c, _ in CASES])
def test_a_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(place, capsys, command, named):
    before = _files(place)
    code = main(command.split())
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"motionnft {command.split()[0]}: error: "), err
    assert named in err, err
    assert _files(place) == before  # refused before any work: no output, no folder, no temporary


def test_the_fuzz_table_covers_at_least_40_distinct_inputs():
    assert len({command for command, _ in CASES}) >= 40


# The inputs below used to succeed with a wrong result -------------------------------------------

def test_a_16_bit_grey_png_keeps_its_grey_levels(tmp_path):
    from motionnft.image import load_image

    levels = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")  # mode I;16
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (1, 3, 64, 64)
    assert torch.allclose(image[0, 0], torch.from_numpy(levels / 65535.0).float(), atol=1e-6)
    assert (image == 1.0).float().mean() < 0.01  # not clipped to white


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    from motionnft.image import load_image

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "phone.jpg")
    assert image.shape == (1, 3, 40, 20)  # displayed portrait
    assert image[0, :, :15].mean() > 0.9 and image[0, :, 25:].mean() < 0.1  # the white half is now on top


def test_flow_refuses_to_write_over_its_own_input(tmp_path):
    a = save_image(torch.rand(1, 3, 32, 32), tmp_path / "a.png")
    save_image(torch.rand(1, 3, 32, 32), tmp_path / "b.png")
    before = a.read_bytes()
    assert main(["flow", str(a), str(tmp_path / "b.png"), "--out", str(tmp_path / "." / "a.png")]) == 2
    assert a.read_bytes() == before


def test_a_lora_with_nan_is_refused_naming_the_tensors(tmp_path):
    from motionnft.lora import load_lora

    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 8),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.tensor(float("inf")).expand(8, 4).clone()},
              str(tmp_path / "inf.safetensors"))
    with pytest.raises(ValueError, match="1 tensor.*transformer_blocks.0.attn.to_q.lora_B.weight"):
        load_lora(tmp_path / "inf.safetensors")


def test_an_image_over_the_pixel_limit_is_refused_with_its_size_and_the_limit(tmp_path, monkeypatch):
    from motionnft.image import load_image

    save_image(torch.rand(1, 3, 64, 64), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    with pytest.raises(ValueError, match=r"big.png.*4096 pixels.*limit.*2000 pixels"):
        load_image(tmp_path / "big.png")


def _clip(path, frames: int = 40, faststart: bool = True) -> bytes:
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            picture = np.full((32, 32, 3), index * 6, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_a_truncated_video_warns_where_decoding_stopped(tmp_path):
    from motionnft.video import VideoWarning, sample_frames

    data = _clip(tmp_path / "whole.mp4")
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 3 // 4])
    with pytest.warns(VideoWarning, match=r"cut.mp4: decoding stopped after \d+ of 40 frames"):
        frames = list(sample_frames(tmp_path / "cut.mp4"))
    assert 0 < len(frames) < 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(sample_frames(tmp_path / "whole.mp4"))) == 40  # a whole file: no warning


def test_mine_resuming_over_deleted_images_makes_them_again(tmp_path):
    from motionnft.data import DatasetWriter, open_dataset

    with DatasetWriter(tmp_path / "ds") as writer:
        for name in ("one", "two", "three"):
            writer.add(name, "p", torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    (tmp_path / "ds" / "images" / "two_target.png").unlink()
    with DatasetWriter(tmp_path / "ds") as writer:
        assert writer.missing_images == ["two"]
        assert "two" not in writer and "one" in writer and len(writer) == 2
        writer.add("two", "p", torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    assert sorted(s.id for s in open_dataset(tmp_path / "ds")) == ["one", "three", "two"]
    for sample in open_dataset(tmp_path / "ds"):
        assert sample.target_image().shape == (1, 3, 8, 8)


# Smaller points -------------------------------------------------------------------------------

def test_an_unanswering_judge_costs_one_timeout_and_one_connection_as_reported():
    import socket
    import threading
    import time

    from motionnft.judge import JudgeClient, JudgeUnreachableError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def accept():  # accept and never answer, as a stuck server does
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        judge = JudgeClient(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "", timeout=0.5, max_retries=0)
        start = time.perf_counter()
        with pytest.raises(JudgeUnreachableError, match=r"no answer within 0.5 s \(1 attempt\)"):
            judge.rate_benchmark_metrics(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), "jump")
        elapsed = time.perf_counter() - start
    finally:
        stop.set()
        thread.join()
        listener.close()
        for connection in accepted:
            connection.close()
    assert len(accepted) == 1  # the three ratings in flight share the one failed model lookup
    assert elapsed < 1.2


def test_train_without_flow_weights_names_the_setting_not_a_command_option(tmp_path, capsys):
    code = main(["train", "--set", "flow_backend=raft_large", "--set", "max_steps=1",
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--set flow_weights=PATH" in err and "--weights PATH" not in err
