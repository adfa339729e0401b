"""FlowDiffusion Edit: an image and a flow -> InstantDrag's flow-conditioned edit.

Weights from models/motionnft_drag (``flowdiffusion.safetensors`` from ``motionnft train-drag
--part flowdiffusion``; format in motionnft/drag/flowdiffusion_files.py). A ``delta`` or ``lora``
file is applied to the SD 1.5 UNet of the ``model`` input (converted from ComfyUI's layout by
motionnft.drag.sd_unet); an ``sd-vae`` file encodes and decodes with the ``vae`` input.
"""

from __future__ import annotations

import json
import logging
import os

import folder_paths
import torch
from comfy_api.latest import io

import comfy.model_management

from .common import (CATEGORY, DRAG_FOLDER, NO_FILE, Flow, bchw_to_image, check_flow, chosen_model_file,
                     image_to_bchw, keep_one_loaded, progress_callback)

DIFFUSERS_HINT = ("FlowDiffusion needs diffusers in ComfyUI's Python (the pack's requirements.txt lists it: install "
                  "the pack's requirements into that Python)")


class FlowDiffusionEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_FlowDiffusionEdit",
            display_name="FlowDiffusion Edit (MotionNFT)",
            category=CATEGORY,
            description=(
                "InstantDrag's FlowDiffusion: edits the image so that its content moves along the flow (e.g. "
                "Drag to Flow's). Runs at the working size the weights were trained at (a square) and resizes the "
                "edit back to the image's size. Weights from models/motionnft_drag ('motionnft train-drag --part "
                "flowdiffusion'); a delta or LoRA file also needs the SD 1.5 checkpoint it was fine-tuned from "
                "(model and vae from Load Checkpoint)."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The source image(s)."),
                Flow.Input("flow", tooltip="Where each pixel should go, in pixels of image (batch 1 or the image's)."),
                io.Combo.Input(
                    "flowdiffusion", options=[NO_FILE, *folder_paths.get_filename_list(DRAG_FOLDER)],
                    default=NO_FILE,
                    tooltip="FlowDiffusion weights (flowdiffusion.safetensors) in models/motionnft_drag.",
                ),
                io.Float.Input("image_guidance", default=1.5, min=0.0, max=20.0, step=0.1,
                               tooltip="How strongly the edit keeps to the source image (the paper: 1.5)."),
                io.Float.Input("flow_guidance", default=1.5, min=0.0, max=20.0, step=0.1,
                               tooltip="How strongly the edit follows the flow (the paper: 1.5)."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Denoising steps (DDIM; the paper: 20)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The starting noise (drawn on the CPU: the same seed is the same edit anywhere)."),
                io.Model.Input("model", optional=True,
                               tooltip="SD 1.5 MODEL (Load Checkpoint) for a delta or LoRA file: the UNet it was "
                               "fine-tuned from. LoRAs applied to this MODEL in ComfyUI are not used."),
                io.Vae.Input("vae", optional=True, tooltip="SD 1.5 VAE (Load Checkpoint) for files trained on SD 1.5 latents."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image, flow, flowdiffusion, image_guidance, flow_guidance, steps, seed, model=None,
                vae=None) -> io.NodeOutput:
        try:
            from ..motionnft.drag.flowdiffusion_conditioning import ChannelsLastVAECodec
            from ..motionnft.drag.flowdiffusion_files import read_header
            from ..motionnft.drag.flowdiffusion_sampling import edit_at_working_size
        except ImportError as error:
            raise RuntimeError(f"flowdiffusion: {DIFFUSERS_HINT} ({error})") from None
        picture = image_to_bchw("image", image)
        flow = check_flow("flow", flow).float()
        if tuple(flow.shape[-2:]) != tuple(picture.shape[-2:]) or flow.shape[0] not in (1, picture.shape[0]):
            raise ValueError(f"flow: {tuple(flow.shape)} does not fit image {tuple(picture.shape)}: a flow is in pixels "
                             "of its image (same H, W) with a batch of 1 or the image's")
        path = weights_path(flowdiffusion)
        header = read_header(path)
        kind, codec_kind = header["kind"], json.loads(header.get("codec") or "{}").get("kind")
        if kind in ("delta", "lora") and model is None:
            raise ValueError(f"model: {flowdiffusion} is a FlowDiffusion {kind} file: connect the SD 1.5 checkpoint it "
                             "was fine-tuned from (Load Checkpoint's MODEL and VAE)")
        if codec_kind == "sd-vae" and vae is None:
            raise ValueError(f"vae: {flowdiffusion} works on SD 1.5 latents: connect an SD 1.5 VAE (Load Checkpoint's VAE)")
        try:
            loaded = flowdiffusion_model(path, model if kind in ("delta", "lora") else None)
        except ImportError as error:  # only LoRA files need peft, which requirements.txt leaves out (it names torch)
            raise RuntimeError(f"flowdiffusion: {flowdiffusion} is a LoRA file and needs the peft package in "
                               f"ComfyUI's Python ({error})") from None
        if loaded.codec.kind == "sd-vae":
            codec = ChannelsLastVAECodec(vae.encode, vae.decode, loaded.codec.scale)
        else:
            codec = loaded.codec.build()
        device = comfy.model_management.get_torch_device()
        result = edit_at_working_size(loaded.model, picture.to(device), flow.to(device), codec=codec, size=loaded.size,
                                      steps=steps, s_img=image_guidance, s_flow=flow_guidance, seed=seed,
                                      progress=progress_callback(steps))
        return io.NodeOutput(bchw_to_image(result))


def weights_path(name: str) -> str:
    """The file the ``flowdiffusion`` widget names; FileNotFoundError naming every motionnft_drag folder."""
    return chosen_model_file("flowdiffusion", name, DRAG_FOLDER, "FlowDiffusion Edit needs weights",
                             "a FlowDiffusion file (flowdiffusion.safetensors from 'motionnft train-drag --part "
                             "flowdiffusion')")


_LOADED: dict = {}


def flowdiffusion_model(path: str, model=None):
    """``(FlowDiffusion, codec spec, working size)`` of ``path`` on ComfyUI's device, kept while the
    file (and the base MODEL, for delta / LoRA files) is unchanged."""
    from ..motionnft.drag.flowdiffusion_files import load_flowdiffusion_file

    device = comfy.model_management.get_torch_device()
    unet_module = model.model.diffusion_model if model is not None else None

    def load():
        base = sd15_unet(model, device) if unet_module is not None else None
        loaded = load_flowdiffusion_file(path, base_unet=base)
        dtype = base.dtype if base is not None else loaded.model.unet.dtype
        return loaded._replace(model=loaded.model.to(device, dtype))

    # The base UNet itself (not its id) is in the key: the cache keeps it alive, so another
    # checkpoint's UNet can never reuse its id and be given this base's model.
    return keep_one_loaded(_LOADED, (path, os.stat(path).st_mtime_ns, unet_module, str(device)), load)


def sd15_unet(model, device):
    """A ComfyUI SD 1.5 MODEL's UNet as a diffusers ``UNet2DConditionModel`` (its own weights, without
    the patches, e.g. LoRAs, recorded on the ModelPatcher): in the weights' fp16 / bf16 on an
    accelerator, else float32."""
    from ..motionnft.drag.sd_unet import unet_from_sd_state

    if getattr(model, "patches", None):
        logging.warning("MotionNFT FlowDiffusion Edit: the MODEL input carries %d patched weights (e.g. a LoRA); "
                        "they are not applied to FlowDiffusion's base", len(model.patches))
    state = model.model.diffusion_model.state_dict()
    weights_dtype = next(iter(state.values())).dtype
    half = weights_dtype in (torch.float16, torch.bfloat16)
    dtype = weights_dtype if half and torch.device(device).type != "cpu" else torch.float32
    try:
        return unet_from_sd_state(state, dtype=dtype, device=device)
    except ValueError as error:
        raise ValueError(f"model: not an SD 1.5 UNet FlowDiffusion can start from ({error})") from None
