"""Motion Guidance, Flow from File and Flow Alignment inside a real ComfyUI.

A one-block FLUX model at the width ComfyUI's detection fixes (random weights) and a random
TAEF1 (the tiny FLUX autoencoder ComfyUI loads from models/vae_approx) make the sampling path
real: SamplerCustomAdvanced drives the guider, which back-propagates through the model, the
decoder and the flow network under ComfyUI's inference mode. Random weights make the edit
meaningless; what is tested is that every piece runs and the errors name their inputs.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from comfyui_harness import ComfyUIServer, _comfyui_python, comfyui_dir
from lora_fixtures import flux_checkpoint_shapes
from safetensors.torch import save_file

from motionnft.flow import write_flo
from motionnft.image import save_image
from motionnft.synthetic import FigurePose, render_scene

FLUX_FILE = "motionnft_tiny_flux.safetensors"  # the LoRA host tests' model, shared when both run
SIZE = 64
TAEF1 = """
import sys, torch
from safetensors.torch import save_file
import comfy.cli_args
comfy.cli_args.args.cpu = True  # comfy.model_management asks CUDA at import otherwise
from comfy.taesd.taesd import Decoder, Encoder
torch.manual_seed(0)
for name, part in (("encoder", Encoder(latent_channels=16)), ("decoder", Decoder(latent_channels=16))):
    # comfy's layers skip weight initialisation (the memory is whatever it was): draw every tensor
    weights = {k: torch.randn(v.shape) * 0.05 for k, v in part.state_dict().items()}
    save_file(weights, f"{sys.argv[1]}/taef1_{name}.safetensors")
"""


@pytest.fixture(scope="module")
def guidance_files(comfyui: ComfyUIServer) -> dict[str, str]:
    models = comfyui.models_dir
    (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
    if not (models / "diffusion_models" / FLUX_FILE).exists():
        generator = torch.Generator().manual_seed(1)
        save_file({k: (torch.randn(s, generator=generator) * 0.02).to(torch.bfloat16)
                   for k, s in flux_checkpoint_shapes().items()}, str(models / "diffusion_models" / FLUX_FILE))
    (models / "vae_approx").mkdir(parents=True, exist_ok=True)
    root = comfyui_dir()  # (rewritten each session: an older file may hold uninitialised weights)
    subprocess.run([_comfyui_python(root), "-c", TAEF1, str(models / "vae_approx")], cwd=root, check=True)
    source = render_scene(FigurePose(), (SIZE, SIZE), seed=2)
    save_image(source, comfyui.input_dir / "motionnft_guide_source.png")
    flow = torch.zeros(2, SIZE, SIZE)
    flow[0, 20:44, 20:44] = 4.0  # a block moves 4 px right
    write_flo(comfyui.input_dir / "motionnft_guide_target.flo", flow)
    np.save(comfyui.input_dir / "motionnft_guide_small.npy", np.zeros((SIZE // 2, SIZE // 2, 2), np.float32))
    return {"source": "motionnft_guide_source.png", "flow": "motionnft_guide_target.flo",
            "small": "motionnft_guide_small.npy"}


def read_png(comfyui: ComfyUIServer, item: dict) -> np.ndarray:
    from PIL import Image

    with Image.open(comfyui.output_file(item)) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def guided_graph(files: dict, flow_file: str, **guider) -> dict:
    inputs = {"model": ["1", 0], "vae": ["2", 0], "positive": ["3", 0], "negative": ["3", 0], "cfg": 1.0,
              "source_image": ["4", 0], "target_flow": ["5", 0], "flow_network": "correlation", "flow_weight": 1.0,
              "colour_weight": 100.0, "scale": 300.0, "recursions": 2, "start": 0.0, "end": 1.0,
              "gradient": "clean estimate only (less memory)", **guider}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "VAELoader", "inputs": {"vae_name": "taef1"}},
        "3": {"class_type": "HostTest_FluxConditioning", "inputs": {"tokens": 4}},
        "4": {"class_type": "LoadImage", "inputs": {"image": files["source"]}},
        "5": {"class_type": "MotionNFT_FlowFromFile", "inputs": {"file": flow_file}},
        "6": {"class_type": "MotionNFT_MotionGuidance", "inputs": inputs},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 3,
                                                          "denoise": 1.0}},
        "10": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["6", 0],
                                                                  "sampler": ["8", 0], "sigmas": ["9", 0],
                                                                  "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["2", 0]}},
        "13": {"class_type": "MotionNFT_FlowAlignment", "inputs": {
            "source_image": ["4", 0], "result": ["12", 0], "target_flow": ["5", 0], "backend": "dis",
            "preset": "auto", "max_error": 0.0}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "guided"}},
    }


def test_a_flux_model_samples_under_motion_guidance(comfyui: ComfyUIServer, guidance_files):
    graph = guided_graph(guidance_files, guidance_files["flow"])
    del graph["13"]  # the random model's result may hold NaN, which Flow Alignment rightly refuses
    outputs = comfyui.run(graph, timeout=600)
    assert outputs["14"]["images"]
    # every step guided but the first (at σ = 1 the clean estimate carries no signal): gradients computed
    assert "MotionNFT Motion Guidance: 2 guided steps" in comfyui.log_text()


def test_an_edit_mask_of_nothing_keeps_the_source_latent(comfyui: ComfyUIServer, guidance_files):
    graph = guided_graph(guidance_files, guidance_files["flow"], recursions=1, start=0.3, end=0.9)
    graph["15"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}}
    graph["6"]["inputs"]["mask"] = ["15", 0]
    graph["16"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["2", 0]}}
    graph["17"] = {"class_type": "VAEDecode", "inputs": {"samples": ["16", 0], "vae": ["2", 0]}}
    graph["18"] = {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "source_round_trip"}}
    outputs = comfyui.run(graph, timeout=600)
    # nothing may change: the result is the source's latent (the random model's own output is ignored)
    result = read_png(comfyui, outputs["14"]["images"][0])
    round_trip = read_png(comfyui, outputs["18"]["images"][0])
    assert np.abs(result - round_trip).max() <= 2 / 255
    summary = outputs["13"]["text"][0]  # and Flow Alignment scores it: nothing moved
    assert "EPE moved" in summary and "MAS" in summary


def test_a_target_flow_of_another_size_is_refused_naming_both(comfyui: ComfyUIServer, guidance_files):
    message = comfyui.run_expecting_error(guided_graph(guidance_files, guidance_files["small"]), timeout=300)
    assert "target_flow is 32x32" in message and "source_image is 64x64" in message


def test_flow_from_file_reads_numpy_and_flo_alike(comfyui: ComfyUIServer, guidance_files):
    spec = comfyui.object_info()["MotionNFT_FlowFromFile"]["input"]["required"]["file"]
    files = spec[1]["options"] if isinstance(spec[1], dict) and "options" in spec[1] else spec[0]
    assert {guidance_files["flow"], guidance_files["small"]} <= set(files)
    for name in (guidance_files["flow"], guidance_files["small"]):
        graph = {"1": {"class_type": "MotionNFT_FlowFromFile", "inputs": {"file": name}},
                 "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}
        assert comfyui.run(graph)["2"]["images"]


def test_the_gradient_through_flux_is_refused_clearly_where_comfyui_has_no_backward(comfyui: ComfyUIServer,
                                                                                     guidance_files):
    graph = guided_graph(guidance_files, guidance_files["flow"], gradient="through the model (paper)")
    message = comfyui.run_expecting_error(graph, timeout=600)
    assert "cannot be back-propagated in this ComfyUI" in message and "clean estimate only" in message
    graph = {"1": {"class_type": "MotionNFT_FlowFromFile", "inputs": {"file": guidance_files["flow"]}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}
    assert comfyui.run(graph)["2"]["images"]  # the server is still up
