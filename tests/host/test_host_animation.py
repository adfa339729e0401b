"""Animate Image inside a real ComfyUI: a tiny random TPSMM written by the test into the temporary
models/motionnft_animation, driven by an IMAGE batch (GetVideoComponents) and by a VIDEO from Load
Video (stream-decoded), into Create Video -> Save Video; and the error without a model, naming every
motionnft_animation folder."""

from __future__ import annotations

import pytest
import torch
from comfyui_harness import ComfyUIServer
from mining_clips import CLIP_FPS, write_clip

from motionnft.animation import NETWORKS, TPSMM, TPSMMConfig, save_converted
from motionnft.animation.checkpoint import save_model
from motionnft.animation.paper_model import AnimationModelConfig, build_model
from motionnft.image import save_image
from motionnft.video import probe_video, sample_frames

ANIMATE = "MotionNFT_AnimateImage"
WEIGHTS = "tiny_tpsmm.safetensors"
OFFICIAL = "vox_tiny.pth.tar"  # the official layout and suffix (listed although ComfyUI sees ".tar")
PAPER = "tiny_paper_model.safetensors"  # what train-animation writes for the paper's model
SECONDS = 1.0
FRAMES = round(SECONDS * CLIP_FPS)
SIZE = 64


@pytest.fixture(scope="module")
def inputs(comfyui: ComfyUIServer) -> dict[str, str]:
    """A driving clip and a source picture in ComfyUI's input folder, tiny weights in its models."""
    names = {"video": "animation_driving.mp4", "image": "animation_source.png"}
    write_clip(comfyui.input_dir / names["video"], "subject", seconds=SECONDS, seed=3)
    torch.manual_seed(0)
    save_image(torch.rand(1, 3, 48, 80), comfyui.input_dir / names["image"])
    model = TPSMM(TPSMMConfig.tiny()).eval()
    folder = comfyui.models_dir / "motionnft_animation"
    folder.mkdir(parents=True, exist_ok=True)
    save_converted({name: getattr(model, name).state_dict() for name in NETWORKS
                    if getattr(model, name) is not None}, folder / WEIGHTS)
    torch.save({name: getattr(model, name).state_dict() for name in NETWORKS if getattr(model, name) is not None}
               | {"epoch": 1}, folder / OFFICIAL)
    save_model(build_model(AnimationModelConfig.preset("tiny")).eval(), folder / PAPER)
    return names


def animate_inputs(**overrides) -> dict:
    values = {"model": WEIGHTS, "mode": "relative", "adapt_movement_scale": True, "use_background": False,
              "size": SIZE, "fps": 24.0}
    values.update(overrides)
    return values


def graph(names: dict[str, str], driving: str, prefix: str, **overrides) -> dict:
    nodes = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": names["video"]}},
        "2": {"class_type": "LoadImage", "inputs": {"image": names["image"]}},
    }
    animate = {"source": ["2", 0], **animate_inputs(**overrides)}
    if driving == "video":
        animate["driving_video"] = ["1", 0]
    else:
        nodes["5"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
        animate.update(driving_images=["5", 0], fps=["5", 2])
    nodes["3"] = {"class_type": ANIMATE, "inputs": animate}
    nodes["4"] = {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": ["3", 1]}}
    nodes["6"] = {"class_type": "SaveVideo",
                  "inputs": {"video": ["4", 0], "filename_prefix": prefix, "format": "auto", "codec": "auto"}}
    nodes["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}}
    return nodes


def saved_video(comfyui: ComfyUIServer, node_output: dict):
    files = [item for values in node_output.values() if isinstance(values, list)
             for item in values if isinstance(item, dict) and "filename" in item]
    (item,) = files
    return comfyui.output_file(item)


def test_animate_node_is_listed_with_its_inputs_and_outputs(comfyui: ComfyUIServer, inputs):
    info = comfyui.object_info()[ANIMATE]
    assert info["category"] == "MotionNFT"
    assert info["output"] == ["IMAGE", "FLOAT"]
    assert info["input"]["optional"]["driving_video"][0] == "VIDEO"
    assert info["input"]["optional"]["driving_images"][0] == "IMAGE"
    model = info["input"]["required"]["model"]
    choices = model[1]["options"] if isinstance(model[1], dict) and "options" in model[1] else model[0]
    assert choices[0] == "none" and WEIGHTS in choices and OFFICIAL in choices
    mode = info["input"]["required"]["mode"]
    assert set(mode[1]["options"] if isinstance(mode[1], dict) and "options" in mode[1] else mode[0]) == {
        "standard", "relative", "avd"}


@pytest.mark.parametrize("driving, weights", [("images", WEIGHTS), ("video", WEIGHTS), ("images", OFFICIAL),
                                              ("video", PAPER)])
def test_one_frame_per_driving_frame_into_create_and_save_video(comfyui: ComfyUIServer, inputs, driving, weights):
    outputs = comfyui.run(graph(inputs, driving, f"animated_{driving}", model=weights))
    assert len(outputs["7"]["images"]) == FRAMES
    video = saved_video(comfyui, outputs["6"])
    assert len(list(sample_frames(video))) == FRAMES
    info = probe_video(video)
    assert (info.width, info.height) == (SIZE, SIZE)
    assert info.fps == pytest.approx(CLIP_FPS)
    if driving == "video":
        assert "licence: MIT" in comfyui.log_text()


def test_missing_model_names_every_motionnft_animation_folder(comfyui: ComfyUIServer, inputs):
    message = comfyui.run_expecting_error(graph(inputs, "video", "no_model", model="none"))
    assert "model: Animate Image needs TPSMM weights" in message
    assert str(comfyui.models_dir / "motionnft_animation") in message


def test_bad_driving_inputs_name_themselves(comfyui: ComfyUIServer, inputs):
    both = graph(inputs, "images", "both")
    both["3"]["inputs"]["driving_video"] = ["1", 0]
    assert "driving_video or driving_images" in comfyui.run_expecting_error(both)
    message = comfyui.run_expecting_error(graph(inputs, "video", "odd_size", size=48))
    assert "size 48" in message
    message = comfyui.run_expecting_error(graph(inputs, "video", "avd", mode="avd"))
    assert "avd" in message
