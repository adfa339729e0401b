"""Drag to Flow's FlowGen method inside a real ComfyUI: the combos, the error without weights
(naming every motionnft_drag folder), and a run with tiny weights written by the test into the
temporary models/motionnft_drag, matching the library's flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfyui_harness import ComfyUIServer
from PIL import Image

from motionnft.drag import FlowGen, FlowGenConfig, flowgen_flow, parse_drags, save_flowgen
from motionnft.flow import flow_to_color
from motionnft.image import load_image, save_image
from motionnft.synthetic import FigurePose, render_scene

SIZE = (72, 100)
DRAGS = "50,30 -> 62,24; 30,50 -> 30,56"
WEIGHTS = "tiny_flowgen.safetensors"
MAX_MAGNITUDE = 8.0


def options(info: dict, name: str) -> tuple[list[str], bool]:
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            choices = spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]
            return list(choices), section == "optional"
    raise KeyError(name)


@pytest.fixture(scope="module")
def picture(comfyui: ComfyUIServer) -> str:
    name = "drag_flowgen.png"
    save_image(render_scene(FigurePose(), SIZE, seed=2), comfyui.input_dir / name)
    return name


def graph(picture: str, prefix: str, **drag_inputs) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "2": {"class_type": "MotionNFT_DragToFlow",
              "inputs": {"image": ["1", 0], "drags": DRAGS, "smoothness": 0.0, "pin_borders": True, **drag_inputs}},
        "3": {"class_type": "MotionNFT_FlowToImage",
              "inputs": {"flow": ["2", 0], "max_magnitude": MAX_MAGNITUDE, "arrows": False, "arrow_spacing": 24,
                         "legend": False}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def saved_colours(comfyui: ComfyUIServer, outputs: dict) -> np.ndarray:
    (item,) = outputs["4"]["images"]
    with Image.open(comfyui.output_file(item)) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255


def test_drag_to_flow_offers_the_method_and_the_flowgen_file(comfyui: ComfyUIServer):
    info = comfyui.object_info()["MotionNFT_DragToFlow"]
    methods, optional = options(info, "method")
    assert methods == ["thin-plate spline", "FlowGen"] and optional
    files, optional = options(info, "flowgen")
    assert files[0] == "none" and optional


def test_flowgen_without_weights_names_every_motionnft_drag_folder(comfyui: ComfyUIServer, picture):
    message = comfyui.run_expecting_error(graph(picture, "no_weights", method="FlowGen", flowgen="none"))
    assert "flowgen: method FlowGen needs weights" in message
    assert str(comfyui.models_dir / "motionnft_drag") in message


def test_tiny_flowgen_weights_in_models_motionnft_drag_run_end_to_end(comfyui: ComfyUIServer, picture):
    folder = comfyui.models_dir / "motionnft_drag"
    torch.manual_seed(0)
    generator = FlowGen(FlowGenConfig.tiny()).eval()
    save_flowgen(folder / WEIGHTS, generator)
    files, _ = options(comfyui.object_info()["MotionNFT_DragToFlow"], "flowgen")
    assert WEIGHTS in files
    colours = saved_colours(comfyui, comfyui.run(graph(picture, "flowgen", method="FlowGen", flowgen=WEIGHTS)))
    image = load_image(comfyui.input_dir / picture)
    expected = flow_to_color(flowgen_flow(generator, image, parse_drags(DRAGS)), torch.tensor([MAX_MAGNITUDE]))[0]
    assert colours.shape == (*SIZE, 3)
    assert np.abs(colours - expected.permute(1, 2, 0).numpy()).mean() < 2 / 255
    # The spline (the default, and what a graph without the new inputs gets) differs from it.
    spline = saved_colours(comfyui, comfyui.run(graph(picture, "spline")))
    assert np.abs(spline - colours).mean() > 2 / 255
