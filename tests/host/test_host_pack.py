"""The pack inside a real ComfyUI: it imports, registers every node, and its graphs run."""

from __future__ import annotations

import numpy as np
import pytest
from comfyui_harness import PACK_NAME, ComfyUIServer, pack_node_ids
from PIL import Image

from motionnft.image import save_image
from motionnft.synthetic import FigurePose, render_scene

SIZE = (96, 128)  # (H, W): small, and not square so a transposition would show


@pytest.fixture(scope="module")
def scene_files(comfyui: ComfyUIServer) -> dict[str, str]:
    """Input-folder PNGs of one motion: start, ground truth, and a different end size."""
    start = FigurePose()
    goal = start.moved(dx=0.04, arm=25)
    files = {
        "start": render_scene(start, SIZE, seed=3),
        "goal": render_scene(goal, SIZE, seed=3),
        "goal_large": render_scene(goal, (SIZE[0] * 2, SIZE[1] * 2), seed=3),
    }
    names = {}
    for key, image in files.items():
        name = f"motionnft_{key}.png"
        save_image(image, comfyui.input_dir / name)
        names[key] = name
    return names


def load_image(node_id: str, filename: str) -> dict:
    return {node_id: {"class_type": "LoadImage", "inputs": {"image": filename}}}


def read_png(comfyui: ComfyUIServer, item: dict) -> np.ndarray:
    with Image.open(comfyui.output_file(item)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def test_pack_imports_without_errors(comfyui: ComfyUIServer):
    log = comfyui.log_text()
    failures = [
        line for line in log.splitlines()
        if ("IMPORT FAILED" in line or "Cannot import" in line) and PACK_NAME in line
    ]
    assert not failures, "the pack failed to import:\n" + "\n".join(failures) + "\n" + comfyui.log_tail()


def test_object_info_lists_every_node_of_the_pack(comfyui: ComfyUIServer):
    declared = pack_node_ids()
    assert len(declared) >= 4
    listed = {name for name in comfyui.object_info() if name.startswith("MotionNFT_")}
    assert listed == declared


def test_flow_type_is_namespaced_in_object_info(comfyui: ComfyUIServer):
    info = comfyui.object_info()["MotionNFT_OpticalFlow"]
    assert info["output"] == ["MOTIONNFT_FLOW"]
    assert info["category"] == "MotionNFT"
    backends = info["input"]["required"]["backend"]
    options = backends[1]["options"] if isinstance(backends[1], dict) and "options" in backends[1] else backends[0]
    assert "dis" in options


def test_flow_graph_saves_colour_coding_and_legend(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "dis", "preset": "medium"}},
        "4": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["3", 0], "max_magnitude": 0.0, "arrows": True, "arrow_spacing": 16, "legend": True}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "flow"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "legend"}},
    }
    outputs = comfyui.run(graph)
    (flow_item,) = outputs["5"]["images"]
    flow_png = read_png(comfyui, flow_item)
    assert flow_png.shape == (*SIZE, 3)
    # The figure moves, so the colour coding is not white everywhere.
    assert (flow_png.min(axis=2) < 0.8).mean() > 0.02
    (legend_item,) = outputs["6"]["images"]
    legend_png = read_png(comfyui, legend_item)
    np.testing.assert_allclose(legend_png[0, 0], 1.0)  # white outside the wheel
    saturation = legend_png.max(axis=2) - legend_png.min(axis=2)
    assert saturation.max() > 0.5  # the rim is fully coloured


def test_single_first_image_is_broadcast_over_a_batch(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 3}},
        "4": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["3", 0], "backend": "dis", "preset": "fast"}},
        "5": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["4", 0], "max_magnitude": 8.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "batch"}},
    }
    images = comfyui.run(graph)["6"]["images"]
    assert len(images) == 3
    first, last = read_png(comfyui, images[0]), read_png(comfyui, images[2])
    np.testing.assert_array_equal(first, last)


def test_backward_warp_of_the_second_frame_rebuilds_the_first(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "dis", "preset": "medium"}},
        "4": {"class_type": "MotionNFT_WarpImageByFlow",
              "inputs": {"image": ["2", 0], "flow": ["3", 0], "direction": "backward"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "warp"}},
    }
    (item,) = comfyui.run(graph)["5"]["images"]
    warped = read_png(comfyui, item)
    start = np.asarray(Image.open(comfyui.input_dir / scene_files["start"]).convert("RGB"), np.float32) / 255
    goal = np.asarray(Image.open(comfyui.input_dir / scene_files["goal"]).convert("RGB"), np.float32) / 255
    assert warped.shape == start.shape
    assert np.abs(warped - start).mean() < 0.6 * np.abs(goal - start).mean()


def test_motion_reward_scores_perfect_and_static_edits(comfyui: ComfyUIServer, scene_files):
    # A batch of two edits: the ground truth itself (at twice the size, so it is resized)
    # and the unchanged input.
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["1", 0]}},
        **load_image("4", scene_files["goal_large"]),
        "5": {"class_type": "MotionNFT_MotionReward",
              "inputs": {"input_image": ["1", 0], "edited_image": ["3", 0], "target_image": ["4", 0],
                         "backend": "dis", "preset": "medium", "variant": "code"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "breakdown"}},
    }
    outputs = comfyui.run(graph)
    records = outputs["5"]["motionnft_reward"]
    assert len(records) == 2
    perfect, static = records
    assert perfect["reward"] == 1.0 and perfect["mas"] > 90
    assert static["mas"] == 0.0 and static["mas_hard_failure"] is True
    assert static["m_move"] > 0
    summary = outputs["5"]["text"][0]
    assert "#1: reward 1.0" in summary and "hard failure" in summary and "alpha=0.7" in summary
    breakdowns = outputs["6"]["images"]
    assert len(breakdowns) == 2
    figure = read_png(comfyui, breakdowns[0])
    assert figure.shape[0] > 3 * SIZE[0] and figure.shape[1] > 3 * SIZE[1]
    assert outputs["5"]["images"], "the node previews its breakdown"


def test_motion_reward_names_the_input_with_a_wrong_batch(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 2}},
        "5": {"class_type": "MotionNFT_MotionReward",
              "inputs": {"input_image": ["3", 0], "edited_image": ["4", 0], "target_image": ["2", 0],
                         "backend": "dis", "preset": "auto", "variant": "code"}},
    }
    message = comfyui.run_expecting_error(graph)
    assert "input_image" in message and "batch of 3" in message


def test_optical_flow_rejects_a_preset_the_backend_lacks(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "farneback", "preset": "fast"}},
        "4": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["3", 0], "max_magnitude": 0.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    message = comfyui.run_expecting_error(graph)
    assert "farneback" in message and "preset" in message


def test_front_end_extension_is_served(comfyui: ComfyUIServer):
    import urllib.request

    listed = [path for path in comfyui.get("/extensions") if "/motionnft/" in path]
    names = {path.rsplit("/", 1)[-1] for path in listed}
    assert {"reward_breakdown.js", "flow_legend.js", "drag_editor.js", "summary_panels.js", "common.js"} <= names
    for path in listed:
        with urllib.request.urlopen(comfyui.url + path, timeout=10) as response:
            assert response.status == 200
    wheel = next(p for p in listed if p.endswith("common.js")).replace("common.js", "assets/flow_wheel.png")
    with urllib.request.urlopen(comfyui.url + wheel, timeout=10) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_controlnet_aux_layout_round_trip_keeps_the_flow(comfyui: ComfyUIServer, scene_files):
    def colour(flow_source: list) -> dict:
        return {"class_type": "MotionNFT_FlowToImage",
                "inputs": {"flow": flow_source, "max_magnitude": 6.0, "arrows": False, "arrow_spacing": 24, "legend": False}}

    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "dis", "preset": "fast"}},
        "4": {"class_type": "MotionNFT_FlowToOpticalFlow", "inputs": {"flow": ["3", 0]}},
        "5": {"class_type": "MotionNFT_OpticalFlowToFlow", "inputs": {"optical_flow": ["4", 0]}},
        "6": colour(["3", 0]),
        "7": colour(["5", 0]),
        "8": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "direct"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "roundtrip"}},
    }
    outputs = comfyui.run(graph)
    direct = read_png(comfyui, outputs["8"]["images"][0])
    round_trip = read_png(comfyui, outputs["9"]["images"][0])
    np.testing.assert_array_equal(direct, round_trip)
    assert comfyui.object_info()["MotionNFT_FlowToOpticalFlow"]["output"] == ["OPTICAL_FLOW"]


def test_an_rgba_image_is_refused_with_the_input_named(comfyui: ComfyUIServer, scene_files):
    graph = {
        **load_image("1", scene_files["start"]),
        **load_image("2", scene_files["goal"]),
        "3": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["2", 0], "alpha": ["2", 1]}},
        "4": {"class_type": "MotionNFT_MotionReward",
              "inputs": {"input_image": ["1", 0], "edited_image": ["3", 0], "target_image": ["2", 0],
                         "backend": "dis", "preset": "auto", "variant": "code"}},
    }
    message = comfyui.run_expecting_error(graph)
    assert "edited_image" in message and "3 colour channels, got 4" in message
