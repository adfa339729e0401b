"""FlowDiffusion Edit inside a real ComfyUI: a tiny FlowDiffusion file in models/motionnft_drag
run through /prompt (the edit equals the library's), an SD 1.5-layout checkpoint loaded by
CheckpointLoaderSimple with a delta file on top, and the errors a user meets first: no weights
(every motionnft_drag folder named) and a delta file without its checkpoint."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from comfyui_harness import ComfyUIServer
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file
from sd_layout import taesd_state, tiny_sd15_config, to_ldm

from motionnft.drag import drags_to_flow, parse_drags
from motionnft.drag.flowdiffusion import FlowDiffusion, from_sd_unet
from motionnft.drag.flowdiffusion_conditioning import PooledRGBCodec
from motionnft.drag.flowdiffusion_files import CodecSpec, save_flowdiffusion
from motionnft.drag.flowdiffusion_sampling import edit_at_working_size
from motionnft.drag.train_flowdiffusion import add_lora
from motionnft.image import load_image, save_image
from motionnft.synthetic import FigurePose, render_scene

SIZE = (72, 100)
DRAGS = "50,30 -> 62,24; 30,50 -> 30,56"
TINY = "tiny_flowdiffusion.safetensors"
DELTA = "sd15_flowdiffusion_delta.safetensors"
LORA = "sd15_flowdiffusion_lora.safetensors"
POOLED_DELTA = "sd15_flowdiffusion_pooled_delta.safetensors"
CHECKPOINT = "tiny_sd15.safetensors"
STEPS, SEED = 3, 5


@pytest.fixture(scope="module")
def picture(comfyui: ComfyUIServer) -> str:
    name = "flowdiffusion_source.png"
    save_image(render_scene(FigurePose(), SIZE, seed=4), comfyui.input_dir / name)
    return name


def graph(picture: str, prefix: str, weights: str, checkpoint: str | None = None) -> dict:
    edit = {"image": ["1", 0], "flow": ["2", 0], "flowdiffusion": weights, "image_guidance": 1.5,
            "flow_guidance": 1.5, "steps": STEPS, "seed": SEED}
    nodes = {
        "1": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "2": {"class_type": "MotionNFT_DragToFlow",
              "inputs": {"image": ["1", 0], "drags": DRAGS, "smoothness": 0.0, "pin_borders": True}},
        "3": {"class_type": "MotionNFT_FlowDiffusionEdit", "inputs": edit},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if checkpoint is not None:
        nodes["5"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
        edit.update(model=["5", 0], vae=["5", 2])
    return nodes


def saved(comfyui: ComfyUIServer, outputs: dict) -> np.ndarray:
    (item,) = outputs["4"]["images"]
    with Image.open(comfyui.output_file(item)) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255


def test_the_node_is_offered_with_its_inputs(comfyui: ComfyUIServer):
    info = comfyui.object_info()["MotionNFT_FlowDiffusionEdit"]
    assert info["display_name"] == "FlowDiffusion Edit (MotionNFT)"
    assert set(info["input"]["optional"]) == {"model", "vae"}
    required = info["input"]["required"]
    assert required["image_guidance"][1]["default"] == 1.5 and required["steps"][1]["default"] == 20


def test_without_weights_the_error_names_every_motionnft_drag_folder(comfyui: ComfyUIServer, picture):
    message = comfyui.run_expecting_error(graph(picture, "no_weights", "none"))
    assert "flowdiffusion: FlowDiffusion Edit needs weights" in message
    assert str(comfyui.models_dir / "motionnft_drag") in message


def test_a_tiny_flowdiffusion_file_edits_like_the_library(comfyui: ComfyUIServer, picture):
    torch.manual_seed(0)
    model = FlowDiffusion.tiny(16).eval()
    with torch.no_grad():
        model.unet.conv_in.weight.normal_(0, 0.1)  # the image and the flow matter
    save_flowdiffusion(comfyui.models_dir / "motionnft_drag" / TINY, model, CodecSpec.pooled(2, 2.5), 32)
    edit = saved(comfyui, comfyui.run(graph(picture, "tiny_edit", TINY)))
    assert edit.shape == (*SIZE, 3)
    image = load_image(comfyui.input_dir / picture)
    flow = drags_to_flow(parse_drags(DRAGS), *SIZE, smoothness=0.0, pinned_border_points=8)
    expected = edit_at_working_size(model, image, flow, codec=PooledRGBCodec(2, 2.5), size=32, steps=STEPS, seed=SEED)
    assert np.abs(edit - expected[0].permute(1, 2, 0).numpy()).mean() < 2 / 255


@pytest.fixture(scope="module")
def sd15_checkpoint(comfyui: ComfyUIServer) -> FlowDiffusion:
    """The smallest UNet ComfyUI detects as SD 1.5, saved in the original layout with a VAE that
    ComfyUI reads as a (random) TAESD (its every weight: ComfyUI leaves missing ones uninitialised), and a FlowDiffusion delta fine-tuned from it."""
    torch.manual_seed(1)
    base = UNet2DConditionModel(**tiny_sd15_config()).eval()
    tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in to_ldm(base).items()}
    tensors.update({f"first_stage_model.{k}": v for k, v in taesd_state().items()})
    folder = comfyui.models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / CHECKPOINT))
    model = from_sd_unet(base)
    with torch.no_grad():
        model.unet.conv_in.weight.normal_(0, 0.05)
        model.unet.down_blocks[0].attentions[0].proj_out.weight.mul_(1.1)
    save_flowdiffusion(comfyui.models_dir / "motionnft_drag" / DELTA, model, CodecSpec.sd_vae(), 64, "delta",
                       base=base)
    # The same delta on the weight-free codec: the edit can be recomputed outside ComfyUI.
    save_flowdiffusion(comfyui.models_dir / "motionnft_drag" / POOLED_DELTA, model, CodecSpec.pooled(8, 1.0), 64,
                       "delta", base=base)
    fine_tuned = from_sd_unet(base)
    fine_tuned.load_state_dict(model.state_dict())
    add_lora(model, rank=4)
    save_flowdiffusion(comfyui.models_dir / "motionnft_drag" / LORA, model, CodecSpec.sd_vae(), 64, "lora")
    return fine_tuned.eval()


@pytest.mark.parametrize("weights", [DELTA, LORA], ids=["delta", "lora"])
def test_an_sd15_checkpoint_with_a_delta_or_lora_file_edits_at_the_image_size(comfyui: ComfyUIServer, picture,
                                                                              sd15_checkpoint, weights):
    edit = saved(comfyui, comfyui.run(graph(picture, f"sd15_{weights[:-12]}", weights, CHECKPOINT)))
    assert edit.shape == (*SIZE, 3) and np.isfinite(edit).all()
    assert edit.std() > 0  # an image, not a constant
    assert "Missing VAE keys" not in comfyui.log_text()


def test_the_checkpoint_loaders_unet_plus_the_delta_is_the_fine_tuned_model(comfyui: ComfyUIServer, picture,
                                                                            sd15_checkpoint):
    """ComfyUI's UNet (original layout), converted and with the delta applied, edits exactly as the
    diffusers model the delta was saved from."""
    edit = saved(comfyui, comfyui.run(graph(picture, "sd15_pooled", POOLED_DELTA, CHECKPOINT)))
    image = load_image(comfyui.input_dir / picture)
    flow = drags_to_flow(parse_drags(DRAGS), *SIZE, smoothness=0.0, pinned_border_points=8)
    expected = edit_at_working_size(sd15_checkpoint, image, flow, codec=PooledRGBCodec(8, 1.0), size=64, steps=STEPS,
                                    seed=SEED)
    assert np.abs(edit - expected[0].permute(1, 2, 0).numpy()).mean() < 2 / 255


def test_a_delta_file_without_its_checkpoint_says_what_to_connect(comfyui: ComfyUIServer, picture, sd15_checkpoint):
    message = comfyui.run_expecting_error(graph(picture, "delta_alone", DELTA))
    assert "model:" in message and "delta file" in message and "Load Checkpoint" in message


def test_cancel_stops_an_edit_between_steps(comfyui: ComfyUIServer, picture):
    """200 steps at 128 px take tens of seconds on this CPU; Cancel (POST /interrupt) ends the run
    within a few seconds, as an interruption (not an error or a finished edit)."""
    torch.manual_seed(0)
    save_flowdiffusion(comfyui.models_dir / "motionnft_drag" / "slow_flowdiffusion.safetensors",
                       FlowDiffusion.tiny(64).eval(), CodecSpec.pooled(2, 2.5), 128)
    nodes = graph(picture, "cancelled", "slow_flowdiffusion.safetensors")
    nodes["3"]["inputs"]["steps"] = 200
    prompt_id = comfyui.queue(nodes)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not comfyui.get("/queue")["queue_running"]:
        time.sleep(0.05)
    time.sleep(2.0)  # inside the denoising loop by now
    comfyui.post("/interrupt", {})
    interrupted = time.monotonic()
    entry = comfyui.wait(prompt_id, timeout=120)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, comfyui.log_tail()
    assert time.monotonic() - interrupted < 10
