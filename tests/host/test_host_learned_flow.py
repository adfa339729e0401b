"""The learned flow backends inside a real ComfyUI: listed, clear without weights, and run
end to end with (random-initialised) weight files placed in the temporary models/optical_flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfyui_harness import ComfyUIServer
from PIL import Image

from learned_flow_fixtures import load_layout, seeded_state_dict
from motionnft.flow import RAFTFlow, flow_to_color
from motionnft.image import load_image as load_png
from motionnft.image import save_image
from motionnft.synthetic import FigurePose, render_scene

SIZE = (80, 112)
LEARNED = ("raft_large", "raft_small", "unimatch")
RAFT_SMALL_FILE = "raft_small_C_T_V2-01064c6d.pth"
UNIMATCH_FILE = "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth"


def options(info: dict, name: str) -> tuple[list[str], bool]:
    """A combo input's options, and whether it is optional."""
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            choices = spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]
            return list(choices), section == "optional"
    raise KeyError(name)


@pytest.fixture(scope="module")
def frames(comfyui: ComfyUIServer) -> dict[str, str]:
    start = FigurePose()
    goal = start.moved(dx=0.05, arm=30)
    names = {}
    for key, pose in (("start", start), ("goal", goal)):
        names[key] = f"learned_{key}.png"
        save_image(render_scene(pose, SIZE, seed=4), comfyui.input_dir / names[key])
    return names


def load(node_id: str, filename: str) -> dict:
    return {node_id: {"class_type": "LoadImage", "inputs": {"image": filename}}}


def test_flow_nodes_list_the_learned_backends_and_their_weight_inputs(comfyui: ComfyUIServer):
    info = comfyui.object_info()
    for node in ("MotionNFT_OpticalFlow", "MotionNFT_MotionReward"):
        backends, _ = options(info[node], "backend")
        assert set(LEARNED) <= set(backends) and backends[0] == "dis"
        presets, _ = options(info[node], "preset")
        assert {"auto", "fast", "medium", "accurate"} <= set(presets)
        weights, optional = options(info[node], "weights")
        assert weights[0] == "auto" and optional
        precisions, optional = options(info[node], "precision")
        assert precisions == ["fp32", "bf16", "fp16"] and optional


def test_missing_weights_name_the_optical_flow_folder_and_the_expected_files(comfyui: ComfyUIServer, frames):
    graph = {
        **load("1", frames["start"]),
        **load("2", frames["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "raft_large", "preset": "auto"}},
        "4": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["3", 0], "max_magnitude": 0.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    message = comfyui.run_expecting_error(graph)
    assert "flow backend 'raft_large' needs a weight file, and none was found" in message
    assert str(comfyui.models_dir / "optical_flow") in message
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in message and "raft-things.pth" in message


def test_a_raft_file_in_models_optical_flow_runs_end_to_end(comfyui: ComfyUIServer, frames):
    folder = comfyui.models_dir / "optical_flow"
    folder.mkdir(exist_ok=True)
    # Gain 0.5: a calm random network, so its flow shows structure (see seeded_state_dict).
    weights = seeded_state_dict(load_layout("raft_small_torchvision"), seed=3, gain=0.5)
    torch.save(weights, folder / RAFT_SMALL_FILE)
    weights_listed, _ = options(comfyui.object_info()["MotionNFT_OpticalFlow"], "weights")
    assert RAFT_SMALL_FILE in weights_listed
    for choice in ("auto", RAFT_SMALL_FILE):
        graph = {
            **load("1", frames["start"]),
            **load("2", frames["goal"]),
            "3": {"class_type": "MotionNFT_OpticalFlow",
                  "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "raft_small", "preset": "fast",
                             "weights": choice, "precision": "fp32"}},
            "4": {"class_type": "MotionNFT_FlowToImage",
                  "inputs": {"flow": ["3", 0], "max_magnitude": 4.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"raft_{choice}"}},
        }
        (item,) = comfyui.run(graph)["5"]["images"]
        with Image.open(comfyui.output_file(item)) as picture:
            colours = np.asarray(picture.convert("RGB"), np.float32) / 255
        # The same weights and images in this process give the same colour coding.
        a, b = (load_png(comfyui.input_dir / frames[k]) for k in ("start", "goal"))
        expected = flow_to_color(RAFTFlow(weights, preset="fast")(a, b), torch.tensor([4.0]))[0]
        assert colours.shape == (*SIZE, 3)
        assert np.abs(colours - expected.permute(1, 2, 0).numpy()).mean() < 2 / 255


def test_motion_reward_runs_with_a_unimatch_file(comfyui: ComfyUIServer, frames):
    folder = comfyui.models_dir / "optical_flow"
    folder.mkdir(exist_ok=True)
    weights = seeded_state_dict(load_layout("gmflow_scale2_regrefine6"), seed=5)
    torch.save({"model": weights}, folder / UNIMATCH_FILE)
    graph = {
        **load("1", frames["start"]),
        **load("2", frames["goal"]),
        "3": {"class_type": "MotionNFT_MotionReward",
              "inputs": {"input_image": ["1", 0], "edited_image": ["2", 0], "target_image": ["2", 0],
                         "backend": "unimatch", "preset": "auto", "variant": "code"}},
    }
    outputs = comfyui.run(graph)
    (record,) = outputs["3"]["motionnft_reward"]
    # The edit is its own ground truth: identical flows, whatever the network's weights.
    assert record["reward"] == 1.0 and record["d_dir"] == pytest.approx(0.0, abs=1e-6)


def test_a_weights_file_of_the_wrong_model_is_refused_with_the_reason(comfyui: ComfyUIServer, frames):
    folder = comfyui.models_dir / "optical_flow"
    folder.mkdir(exist_ok=True)
    torch.save(seeded_state_dict(load_layout("raft_small_torchvision"), seed=1), folder / "my_small.pth")
    graph = {
        **load("1", frames["start"]),
        **load("2", frames["goal"]),
        "3": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["2", 0], "backend": "raft_large", "preset": "auto",
                         "weights": "my_small.pth"}},
        "4": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["3", 0], "max_magnitude": 0.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }
    message = comfyui.run_expecting_error(graph)
    assert "holds RAFT small, not RAFT large: use the raft_small backend" in message


@pytest.fixture(scope="module")
def comfyui_with_extra_paths(tmp_path_factory):
    """A second ComfyUI whose extra_model_paths.yaml already declares an optical_flow folder."""
    from comfyui_harness import comfyui_dir

    base = tmp_path_factory.mktemp("comfyui-extra-paths")
    shared = base / "shared_models" / "flow"
    shared.mkdir(parents=True)
    torch.save(seeded_state_dict(load_layout("raft_small_torchvision"), seed=2), shared / "shared_raft_small.pth")
    config = base / "extra_model_paths.yaml"
    config.write_text(f"shared:\n  base_path: {base / 'shared_models'}\n  optical_flow: flow\n")
    server = ComfyUIServer(comfyui_dir(), base / "root", extra_args=("--extra-model-paths-config", str(config)))
    server.start()
    yield server, shared
    server.stop()


def test_an_existing_extra_model_paths_entry_is_kept(comfyui_with_extra_paths):
    server, shared = comfyui_with_extra_paths
    default = server.models_dir / "optical_flow"
    default.mkdir(exist_ok=True)
    torch.save(seeded_state_dict(load_layout("raft_small_torchvision"), seed=4), default / "default_raft_small.pth")
    listed = server.get("/models/optical_flow")
    assert {"shared_raft_small.pth", "default_raft_small.pth"} <= set(listed)
    weights, _ = options(server.object_info()["MotionNFT_OpticalFlow"], "weights")
    assert {"shared_raft_small.pth", "default_raft_small.pth"} <= set(weights)
    # Without any expected file anywhere, the error lists both folders, the user's first.
    image = "extra_frame.png"
    save_image(render_scene(FigurePose(), SIZE, seed=1), server.input_dir / image)
    graph = {
        **load("1", image),
        "2": {"class_type": "MotionNFT_OpticalFlow",
              "inputs": {"image_a": ["1", 0], "image_b": ["1", 0], "backend": "unimatch", "preset": "auto"}},
        "3": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["2", 0], "max_magnitude": 0.0, "arrows": False, "arrow_spacing": 24, "legend": False}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    message = server.run_expecting_error(graph)
    assert message.index(str(shared)) < message.index(str(default))
    graph["2"]["inputs"].update(backend="raft_small", weights="shared_raft_small.pth")
    assert server.run(graph)["4"]["images"]
