"""Mine Training Pairs inside a real ComfyUI: Load Video and IMAGE-batch inputs, dataset, cancel."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from comfyui_harness import ComfyUIServer
from mining_clips import CLIP_SIZE, write_clip
from PIL import Image

from motionnft.data import open_dataset
from motionnft.video import write_video

MINE = "MotionNFT_MinePairs"


def mine_inputs(**overrides) -> dict:
    inputs = {
        "fps": 24.0, "window_seconds": 3.0, "pairing": "endpoints", "stride_seconds": 0.0, "sample_fps": 4.0,
        "analysis_size": 384, "backend": "dis", "preset": "auto", "max_camera_motion": 0.012, "min_motion": 0.02,
        "max_occlusion": 0.3, "overrides": "", "dataset_name": "", "max_pairs": 32, "show_rejected": True,
    }
    inputs.update(overrides)
    return inputs


@pytest.fixture(scope="module")
def videos(comfyui: ComfyUIServer) -> dict[str, str]:
    """Synthetic clips in ComfyUI's input folder: a subject acting (two windows) and a pan."""
    names = {"subject": "motionnft_subject.mp4", "pan": "motionnft_pan.mp4"}
    write_clip(comfyui.input_dir / names["subject"], "subject", seconds=6.5, seed=2)
    write_clip(comfyui.input_dir / names["pan"], "pan")
    return names


def load_video(node_id: str, name: str) -> dict:
    return {node_id: {"class_type": "LoadVideo", "inputs": {"file": name}}}


def read_png(comfyui: ComfyUIServer, item: dict) -> np.ndarray:
    with Image.open(comfyui.output_file(item)) as picture:
        return np.asarray(picture.convert("RGB"))


def test_mine_node_is_listed_with_video_and_image_inputs(comfyui: ComfyUIServer):
    info = comfyui.object_info()[MINE]
    assert info["category"] == "MotionNFT"
    assert info["output"] == ["IMAGE", "IMAGE", "IMAGE", "STRING"]
    assert info["input"]["optional"]["video"][0] == "VIDEO"
    assert info["input"]["optional"]["images"][0] == "IMAGE"
    assert "dataset_name" in info["input"]["required"]


def test_load_video_to_kept_pairs_contact_sheet_and_dataset(comfyui: ComfyUIServer, videos):
    graph = {
        **load_video("1", videos["subject"]),
        "2": {"class_type": MINE, "inputs": {"video": ["1", 0], **mine_inputs(dataset_name="mined/subject")}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "mined_input"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 1], "filename_prefix": "mined_target"}},
    }
    outputs = comfyui.run(graph)
    node = outputs["2"]
    pairs = node["motionnft_pairs"]
    assert [(p["time_input"], p["time_target"], p["kept"]) for p in pairs] == [(0.0, 3.0, True), (3.0, 6.0, True)]
    assert "kept: 2" in node["text"][0]
    inputs, targets = outputs["3"]["images"], outputs["4"]["images"]
    assert len(inputs) == len(targets) == 2
    first_input, first_target = read_png(comfyui, inputs[0]), read_png(comfyui, targets[0])
    assert first_input.shape == (*CLIP_SIZE, 3)
    assert np.abs(first_input.astype(int) - first_target.astype(int)).mean() > 2  # the subject moved
    (sheet,) = node["images"]
    assert read_png(comfyui, sheet).shape[0] > 2 * 144
    dataset = open_dataset(comfyui.output_dir / "mined" / "subject")
    assert [s.id for s in dataset] == [p["id"] for p in pairs]
    assert dataset[0].extra["source"]["video"].endswith(videos["subject"])
    assert dataset[0].extra["source"]["time_target"] == 3.0
    assert np.array_equal((dataset[0].input_image()[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                          first_input)


def test_image_batch_with_its_fps_gives_the_same_pairs(comfyui: ComfyUIServer, videos):
    graph = {
        **load_video("1", videos["subject"]),
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": MINE, "inputs": {"images": ["2", 0], **mine_inputs(fps=["2", 2])}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 1], "filename_prefix": "batch_target"}},
    }
    outputs = comfyui.run(graph)
    pairs = outputs["3"]["motionnft_pairs"]
    assert [(p["time_input"], p["time_target"], p["kept"]) for p in pairs] == [(0.0, 3.0, True), (3.0, 6.0, True)]
    assert [p["frame_target"] for p in pairs] == [30, 60]
    assert len(outputs["4"]["images"]) == 2


def test_a_panning_clip_is_rejected_with_its_reason_and_empty_batches(comfyui: ComfyUIServer, videos):
    graph = {
        **load_video("1", videos["pan"]),
        "2": {"class_type": MINE, "inputs": {"video": ["1", 0], **mine_inputs()}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pan_input"}},
    }
    outputs = comfyui.run(graph)
    (pair,) = outputs["2"]["motionnft_pairs"]
    assert not pair["kept"] and pair["reasons"] == ["camera_motion"]
    assert "camera_motion" in outputs["2"]["text"][0]
    assert "3" not in outputs  # Save Image was skipped: nothing to save
    # The threshold widget decides: a generous one keeps the same pair.
    graph["2"]["inputs"]["max_camera_motion"] = 1.0
    (pair,) = comfyui.run(graph)["2"]["motionnft_pairs"]
    assert pair["kept"]


def test_bad_settings_and_inputs_name_themselves(comfyui: ComfyUIServer, videos):
    graph = {**load_video("1", videos["pan"]),
             "2": {"class_type": MINE, "inputs": {"video": ["1", 0], **mine_inputs(overrides="max_camera=1")}}}
    assert "max_camera" in comfyui.run_expecting_error(graph)
    graph["2"]["inputs"].update(overrides="", dataset_name="../outside")
    assert "dataset_name" in comfyui.run_expecting_error(graph)
    graph = {"2": {"class_type": MINE, "inputs": mine_inputs()},
             "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}}}
    message = comfyui.run_expecting_error(graph)
    assert "video" in message and "images" in message


def test_mining_can_be_cancelled_and_leaves_a_valid_dataset(comfyui: ComfyUIServer):
    # A minute of a textured patch crossing a textured background: a kept pair every 3 s.
    rng = np.random.default_rng(1)
    background = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    patch = rng.integers(0, 256, (15, 15, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)

    def frames():
        for index in range(600):
            frame = background.copy()
            x = 10 + (index * 2) % 200
            frame[60:120, x : x + 60] = patch
            yield frame

    write_video(comfyui.input_dir / "motionnft_long.mp4", frames(), fps=10, preset="ultrafast")
    graph = {**load_video("1", "motionnft_long.mp4"),
             "2": {"class_type": MINE, "inputs": {"video": ["1", 0], **mine_inputs(dataset_name="cancelled")}}}
    prompt_id = comfyui.queue(graph)
    metadata = comfyui.output_dir / "cancelled" / "metadata.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metadata.is_file() and metadata.stat().st_size):
        time.sleep(0.05)  # wait until the node is running and has written a pair
    comfyui.post("/interrupt", {})
    entry = comfyui.wait(prompt_id, timeout=120)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in kinds, comfyui.log_tail()
    written = open_dataset(comfyui.output_dir / "cancelled")
    lines = metadata.read_text().splitlines()
    assert 0 < len(written) == len(lines) < 19  # 19 windows in 60 s, cut short
    assert all(json.loads(line)["id"] for line in lines)
    assert all(sample.input_image().shape[1:] == (3, 180, 320) for sample in written)


def test_front_end_shows_the_mining_summary_on_the_node(comfyui: ComfyUIServer):
    import urllib.request

    (script,) = [path for path in comfyui.get("/extensions") if path.endswith("/motionnft/common.js")]
    with urllib.request.urlopen(comfyui.url + script, timeout=10) as response:
        assert MINE.encode() in response.read()  # the summary panel registers for this node
