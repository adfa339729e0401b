"""Build the example workflows in workflows/ with ComfyUI's own front end.

    COMFYUI_DIR=~/ComfyUI python tools/build_workflows.py            # starts a ComfyUI
    python tools/build_workflows.py --url http://127.0.0.1:8188      # or uses a running one

Each workflow below is a list of nodes (type, widget values by name, title) and links
(origin node, output name -> target node, input name). The script creates them in a
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) inside the real
front end and saves ``app.graph.serialize()``, so the files are exactly what ComfyUI
itself writes (UI format, version 0.4). It also writes the example input images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "host"))

from motionnft.files import atomic_write  # noqa: E402
from motionnft.image import save_image  # noqa: E402
from motionnft.synthetic import MotionClip, demo_sample  # noqa: E402
from motionnft.video import write_video  # noqa: E402

WORKFLOWS_DIR = ROOT / "workflows"
EXAMPLE_IMAGES = {
    "motionnft_example_input.png": "input",
    "motionnft_example_target.png": "target",
    "motionnft_example_edit.png": "half_way",
}
EXAMPLE_CLIP = "motionnft_example_clip.mp4"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None


@dataclass
class Workflow:
    file: str
    note: str
    nodes: list[Node]
    links: list[tuple[int, str | int, int, str]]


def note(text: str, pos=(-420, 0), size=(400, 360)) -> Node:
    return Node(999, "Note", pos, {"text": text}, title="About this workflow", size=size)


WORKFLOWS = [
    Workflow(
        file="score_an_edit.json",
        note=(
            "Score an edit against a reference frame with the MotionNFT motion reward.\n\n"
            "Load the original image, the edit and the ground-truth frame (how the edit "
            "should look). Motion Reward computes the optical flow input->edit and "
            "input->ground truth and compares them: the reward (0-1, steps of 0.2, what "
            "MotionNFT trains with), MAS (0-100, the benchmark metric), every term as bars "
            "and the error maps on the node, and the breakdown figure.\n\n"
            "The flows of both are shown with their colour legend (hue = direction, "
            "paler = slower).\n\n"
            "Model files: none (OpenCV DIS flow). Example images: copy "
            "workflows/images/*.png from the MotionNFT pack into ComfyUI/input."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}, "input (original)"),
            Node(2, "LoadImage", (0, 360), {"image": "motionnft_example_edit.png"}, "edited"),
            Node(3, "LoadImage", (0, 720), {"image": "motionnft_example_target.png"}, "ground truth"),
            Node(4, "MotionNFT_MotionReward", (360, 0), {"backend": "dis", "preset": "medium", "variant": "code"}, size=(420, 700)),
            Node(5, "PreviewImage", (820, 0), {}, "reward breakdown", size=(520, 620)),
            Node(6, "MotionNFT_OpticalFlow", (360, 760), {"backend": "dis", "preset": "medium"}, "flow of the edit"),
            Node(7, "MotionNFT_OpticalFlow", (360, 980), {"backend": "dis", "preset": "medium"}, "flow of the ground truth"),
            Node(8, "MotionNFT_FlowToImage", (820, 700), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 24, "legend": True}),
            Node(9, "MotionNFT_FlowToImage", (820, 1000), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 24, "legend": True}),
            Node(10, "PreviewImage", (1180, 700), {}, "flow of the edit"),
            Node(11, "PreviewImage", (1180, 1000), {}, "flow of the ground truth"),
        ],
        links=[
            (1, "IMAGE", 4, "input_image"), (2, "IMAGE", 4, "edited_image"), (3, "IMAGE", 4, "target_image"),
            (4, "breakdown", 5, "images"),
            (1, "IMAGE", 6, "image_a"), (2, "IMAGE", 6, "image_b"),
            (1, "IMAGE", 7, "image_a"), (3, "IMAGE", 7, "image_b"),
            (6, "flow", 8, "flow"), (7, "flow", 9, "flow"),
            (8, "image", 10, "images"), (9, "image", 11, "images"),
        ],
    ),
    Workflow(
        file="drag_to_flow_preview.json",
        note=(
            "Drag editing, first step: turn point drags into motion and preview it.\n\n"
            "On the Drag to Flow node, click a point of the image and drag it to where it "
            "should go (several pairs; Undo / Clear; Ctrl+Z). The drags become a dense "
            "flow by thin-plate-spline interpolation; Warp Image by Flow (forward) pushes "
            "the pixels along it as a preview, with holes where nothing lands.\n\n"
            "Model files: none. Example image: copy workflows/images/*.png from the "
            "MotionNFT pack into ComfyUI/input."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}),
            Node(2, "MotionNFT_DragToFlow", (360, 0), {
                "drags": json.dumps({"size": [256, 256], "drags": [[150.0, 150.0, 190.0, 95.0], [110.0, 70.0, 122.0, 70.0]]}),
                "smoothness": 0.0,
            }, size=(360, 520)),
            Node(3, "MotionNFT_WarpImageByFlow", (760, 0), {"direction": "forward"}),
            Node(4, "PreviewImage", (1100, 0), {}, "drag preview"),
            Node(5, "MotionNFT_FlowToImage", (760, 260), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 16, "legend": True}),
            Node(6, "PreviewImage", (1100, 360), {}, "drag flow"),
        ],
        links=[
            (1, "IMAGE", 2, "image"), (1, "IMAGE", 3, "image"), (2, "flow", 3, "flow"),
            (3, "image", 4, "images"), (2, "flow", 5, "flow"), (5, "image", 6, "images"),
        ],
    ),
]


KONTEXT_FILES = (
    "Model files (FLUX.1 Kontext [dev], as in ComfyUI's Kontext template):\n"
    "- models/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors\n"
    "- models/text_encoders/clip_l.safetensors and t5xxl_fp8_e4m3fn_scaled.safetensors\n"
    "- models/vae/ae.safetensors\n"
    "- models/loras/motionnft_kontext.safetensors: a MotionNFT LoRA for Kontext. From the official "
    "MotionEdit release: motionnft lora convert adapter_model_converted.safetensors "
    "motionnft_kontext.safetensors --alpha 64 (it was trained at alpha 64, rank 32; the "
    "converted file lost the alpha and would load at half strength), or leave the file as it "
    "is and set alpha = 64 on the loader. Files from motionnft train load as they are."
)
QWEN_FILES = (
    "Model files (Qwen-Image-Edit-2509, as in ComfyUI's template):\n"
    "- models/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors\n"
    "- models/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors\n"
    "- models/vae/qwen_image_vae.safetensors\n"
    "- models/loras/motionnft_qwen_image_edit.safetensors: a MotionNFT LoRA for Qwen-Image-Edit "
    "(official release: motionnft lora convert adapter_model_converted.safetensors "
    "motionnft_qwen_image_edit.safetensors --alpha 64, or alpha = 64 on the loader)."
)
EDIT_PROMPT = "Make the figure raise its arm and take a step to the right."


def kontext_nodes(first_id: int = 1, x: int = 0, y: int = 0) -> list[Node]:
    """The core Kontext edit: loaders, scaled input, reference latent, guidance, sampler."""
    i = first_id
    return [
        Node(i, "UNETLoader", (x, y), {"unet_name": "flux1-dev-kontext_fp8_scaled.safetensors", "weight_dtype": "default"}),
        Node(i + 1, "DualCLIPLoader", (x, y + 140), {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp8_e4m3fn_scaled.safetensors", "type": "flux"}),
        Node(i + 2, "VAELoader", (x, y + 320), {"vae_name": "ae.safetensors"}),
        Node(i + 3, "LoadImage", (x, y + 440), {"image": "motionnft_example_input.png"}, "input image"),
        Node(i + 4, "FluxKontextImageScale", (x + 360, y + 440), {}),
        Node(i + 5, "VAEEncode", (x + 360, y + 540), {}),
        Node(i + 6, "CLIPTextEncode", (x + 360, y + 140), {"text": EDIT_PROMPT}, "motion instruction", size=(400, 160)),
        Node(i + 7, "ReferenceLatent", (x + 800, y + 140), {}),
        Node(i + 8, "FluxGuidance", (x + 800, y + 240), {"guidance": 2.5}),
        Node(i + 9, "ConditioningZeroOut", (x + 800, y + 340), {}),
    ]


def kontext_links(first_id: int = 1) -> list[tuple]:
    i = first_id
    return [
        (i + 1, "CLIP", i + 6, "clip"), (i + 3, "IMAGE", i + 4, "image"), (i + 4, "IMAGE", i + 5, "pixels"),
        (i + 2, "VAE", i + 5, "vae"), (i + 6, "CONDITIONING", i + 7, "conditioning"), (i + 5, "LATENT", i + 7, "latent"),
        (i + 7, "CONDITIONING", i + 8, "conditioning"), (i + 6, "CONDITIONING", i + 9, "conditioning"),
    ]


def sampler(node_id: int, pos, title: str) -> Node:
    return Node(node_id, "KSampler", pos, {"seed": 20251212, "steps": 28, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}, title)


def flow_view(first_id: int, pos) -> list[Node]:
    x, y = pos
    return [
        Node(first_id, "MotionNFT_OpticalFlow", (x, y), {"backend": "dis", "preset": "medium"}, "flow of the edit"),
        Node(first_id + 1, "MotionNFT_FlowToImage", (x + 360, y), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 32, "legend": True}),
        Node(first_id + 2, "PreviewImage", (x + 720, y), {}, "flow of the edit"),
        Node(first_id + 3, "PreviewImage", (x + 720, y + 300), {}, "flow colour legend"),
    ]


def flow_view_links(first_id: int, source: tuple[int, str], edit: tuple[int, str]) -> list[tuple]:
    i = first_id
    return [
        (source[0], source[1], i, "image_a"), (edit[0], edit[1], i, "image_b"),
        (i, "flow", i + 1, "flow"), (i + 1, "image", i + 2, "images"), (i + 1, "legend", i + 3, "images"),
    ]


WORKFLOWS += [
    Workflow(
        file="kontext_motion_edit_with_lora.json",
        note=(
            "FLUX.1 Kontext [dev] motion edit with a MotionNFT LoRA, and the optical flow of the "
            "edit with its colour legend.\n\nWrite what the subject should DO in the instruction "
            "(pose, action, interaction). Load MotionNFT LoRA (FLUX.1 Kontext) applies the LoRA "
            "through ComfyUI's patcher and shows on the node how many modules matched, the scale "
            "alpha/rank and the file's training metadata. Optical Flow + Flow to Image show where "
            "every pixel moved (hue = direction, paler = slower).\n\n" + KONTEXT_FILES
        ),
        nodes=[
            *kontext_nodes(),
            Node(11, "MotionNFT_LoadLoraKontext", (360, -200), {"lora_name": "motionnft_kontext.safetensors", "strength": 1.0, "alpha": 0.0}, size=(380, 260)),
            sampler(12, (1200, 0), "sample"),
            Node(13, "VAEDecode", (1560, 0), {}),
            Node(14, "SaveImage", (1800, 0), {"filename_prefix": "motionnft/kontext_edit"}, size=(420, 460)),
            *flow_view(15, (1200, 520)),
        ],
        links=[
            *kontext_links(),
            (1, "MODEL", 11, "model"), (11, "model", 12, "model"), (8, "CONDITIONING", 12, "positive"),
            (9, "CONDITIONING", 12, "negative"), (6, "LATENT", 12, "latent_image"),
            (12, "LATENT", 13, "samples"), (3, "VAE", 13, "vae"), (13, "IMAGE", 14, "images"),
            *flow_view_links(15, (5, "IMAGE"), (13, "IMAGE")),
        ],
    ),
    Workflow(
        file="qwen_image_edit_motion_edit_with_lora.json",
        note=(
            "Qwen-Image-Edit-2509 motion edit with a MotionNFT LoRA, and the optical flow of the "
            "edit with its colour legend.\n\nThe instruction says what the subject should DO. "
            "Load MotionNFT LoRA (Qwen-Image-Edit) applies the LoRA through ComfyUI's patcher and "
            "shows the matched modules, the scale and the metadata. (For the first Qwen-Image-Edit, "
            "swap the UNET file; the LoRA must match the model it was trained on.)\n\n" + QWEN_FILES
        ),
        nodes=[
            Node(1, "UNETLoader", (0, 0), {"unet_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors", "weight_dtype": "default"}),
            Node(2, "CLIPLoader", (0, 140), {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"}),
            Node(3, "VAELoader", (0, 300), {"vae_name": "qwen_image_vae.safetensors"}),
            Node(4, "LoadImage", (0, 420), {"image": "motionnft_example_input.png"}, "input image"),
            Node(5, "FluxKontextImageScale", (360, 420), {}),
            Node(6, "VAEEncode", (360, 520), {}),
            Node(7, "MotionNFT_LoadLoraQwenImageEdit", (360, -220), {"lora_name": "motionnft_qwen_image_edit.safetensors", "strength": 1.0, "alpha": 0.0}, size=(380, 260)),
            Node(8, "ModelSamplingAuraFlow", (800, -220), {"shift": 3.0}),
            Node(9, "CFGNorm", (800, -100), {"strength": 1.0}),
            Node(10, "TextEncodeQwenImageEditPlus", (360, 100), {"prompt": EDIT_PROMPT}, "motion instruction", size=(400, 200)),
            Node(11, "TextEncodeQwenImageEditPlus", (360, 320), {"prompt": ""}, "negative"),
            Node(12, "KSampler", (1200, 0), {"seed": 20251212, "steps": 28, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}, "sample"),
            Node(13, "VAEDecode", (1560, 0), {}),
            Node(14, "SaveImage", (1800, 0), {"filename_prefix": "motionnft/qwen_edit"}, size=(420, 460)),
            *flow_view(15, (1200, 520)),
        ],
        links=[
            (4, "IMAGE", 5, "image"), (5, "IMAGE", 6, "pixels"), (3, "VAE", 6, "vae"),
            (1, "MODEL", 7, "model"), (7, "model", 8, "model"), (8, "MODEL", 9, "model"),
            (2, "CLIP", 10, "clip"), (3, "VAE", 10, "vae"), (5, "IMAGE", 10, "image1"),
            (2, "CLIP", 11, "clip"), (3, "VAE", 11, "vae"), (5, "IMAGE", 11, "image1"),
            (9, "MODEL", 12, "model"), (10, "CONDITIONING", 12, "positive"), (11, "CONDITIONING", 12, "negative"),
            (6, "LATENT", 12, "latent_image"), (12, "LATENT", 13, "samples"), (3, "VAE", 13, "vae"),
            (13, "IMAGE", 14, "images"),
            *flow_view_links(15, (5, "IMAGE"), (13, "IMAGE")),
        ],
    ),
    Workflow(
        file="kontext_base_vs_lora.json",
        note=(
            "Base model vs. MotionNFT LoRA, side by side, each scored against a reference frame.\n\n"
            "One FLUX.1 Kontext model samples the same instruction and seed twice: as it is, and "
            "with the MotionNFT LoRA. The reference frame is how the motion should look (e.g. a "
            "later frame of the video the input came from). Each edit gets a Motion Reward node "
            "(reward, MAS, term bars and error maps on the node); the two edits are stitched side "
            "by side (left: base, right: LoRA).\n\n" + KONTEXT_FILES
            + "\n- ComfyUI/input/motionnft_example_target.png: the reference frame (example images: "
            "copy workflows/images/*.png into ComfyUI/input)."
        ),
        nodes=[
            *kontext_nodes(),
            Node(11, "MotionNFT_LoadLoraKontext", (360, -200), {"lora_name": "motionnft_kontext.safetensors", "strength": 1.0, "alpha": 0.0}, size=(380, 260)),
            sampler(12, (1200, -300), "base model"),
            sampler(13, (1200, 300), "with MotionNFT LoRA"),
            Node(14, "VAEDecode", (1560, -300), {}, "base edit"),
            Node(15, "VAEDecode", (1560, 300), {}, "LoRA edit"),
            Node(16, "ImageStitch", (1800, 0), {"direction": "right", "match_image_size": True, "spacing_width": 8, "spacing_color": "white"}),
            Node(17, "SaveImage", (2140, 0), {"filename_prefix": "motionnft/base_vs_lora"}, size=(520, 320)),
            Node(18, "LoadImage", (0, 800), {"image": "motionnft_example_target.png"}, "reference frame (how it should look)"),
            Node(19, "MotionNFT_MotionReward", (1800, 400), {"backend": "dis", "preset": "medium", "variant": "code"}, "reward: base model", size=(420, 640)),
            Node(20, "MotionNFT_MotionReward", (2260, 400), {"backend": "dis", "preset": "medium", "variant": "code"}, "reward: with LoRA", size=(420, 640)),
        ],
        links=[
            *kontext_links(),
            (1, "MODEL", 11, "model"),
            (1, "MODEL", 12, "model"), (8, "CONDITIONING", 12, "positive"), (9, "CONDITIONING", 12, "negative"), (6, "LATENT", 12, "latent_image"),
            (11, "model", 13, "model"), (8, "CONDITIONING", 13, "positive"), (9, "CONDITIONING", 13, "negative"), (6, "LATENT", 13, "latent_image"),
            (12, "LATENT", 14, "samples"), (3, "VAE", 14, "vae"), (13, "LATENT", 15, "samples"), (3, "VAE", 15, "vae"),
            (14, "IMAGE", 16, "image1"), (15, "IMAGE", 16, "image2"), (16, "IMAGE", 17, "images"),
            (5, "IMAGE", 19, "input_image"), (14, "IMAGE", 19, "edited_image"), (18, "IMAGE", 19, "target_image"),
            (5, "IMAGE", 20, "input_image"), (15, "IMAGE", 20, "edited_image"), (18, "IMAGE", 20, "target_image"),
        ],
    ),
]


WORKFLOWS.append(
    Workflow(
        file="kontext_motion_guidance.json",
        note=(
            "Motion Guidance with FLUX.1 Kontext: drag points on the image to say where they should go, "
            "and the sampler is steered so that the flow from the input to the result follows the drags.\n\n"
            "Drag to Flow turns the drags into a dense target flow; Motion Guidance (a GUIDER for "
            "SamplerCustomAdvanced) decodes the clean estimate at each guided step, measures its flow "
            "from the input with a differentiable flow network and corrects the prediction (24 steps, "
            "guidance from a quarter of the schedule to the end: 18 guided passes, where the paper "
            "uses about 5,000). Flow Alignment then scores the result against the same target flow "
            "(end-point error in the moved and static regions, reward, MAS, error map).\n\n"
            + KONTEXT_FILES.split("- models/loras")[0]
            + "- models/optical_flow/raft_large_C_T_SKHT_V2-ff5fadd5.pth (torchvision's RAFT-large; "
            "or pick correlation on the guider for small images, no weights)."
        ),
        nodes=[
            *kontext_nodes(),
            Node(11, "MotionNFT_DragToFlow", (1200, 440), {
                "drags": json.dumps({"size": [256, 256], "drags": [[150.0, 150.0, 190.0, 95.0]]}),
                "smoothness": 0.0,
            }, size=(360, 520)),
            Node(12, "MotionNFT_MotionGuidance", (1600, 0), {"flow_network": "raft_large"}, size=(360, 520)),
            Node(13, "RandomNoise", (1600, 560), {"noise_seed": 20251212}),
            Node(14, "KSamplerSelect", (1600, 680), {"sampler_name": "euler"}),
            Node(15, "BasicScheduler", (1600, 780), {"scheduler": "simple", "steps": 24, "denoise": 1.0}),
            Node(16, "SamplerCustomAdvanced", (2000, 0), {}),
            Node(17, "VAEDecode", (2300, 0), {}),
            Node(18, "SaveImage", (2540, 0), {"filename_prefix": "motionnft/motion_guidance"}, size=(420, 460)),
            Node(19, "MotionNFT_FlowAlignment", (2300, 520), {"backend": "dis", "preset": "medium"}, size=(380, 420)),
            Node(20, "PreviewImage", (2720, 520), {}, "flow error map"),
        ],
        links=[
            *kontext_links(),
            (5, "IMAGE", 11, "image"), (1, "MODEL", 12, "model"), (3, "VAE", 12, "vae"),
            (8, "CONDITIONING", 12, "positive"), (9, "CONDITIONING", 12, "negative"),
            (5, "IMAGE", 12, "source_image"), (11, "flow", 12, "target_flow"), (1, "MODEL", 15, "model"),
            (13, "NOISE", 16, "noise"), (12, "GUIDER", 16, "guider"), (14, "SAMPLER", 16, "sampler"),
            (15, "SIGMAS", 16, "sigmas"), (6, "LATENT", 16, "latent_image"),
            (16, "output", 17, "samples"), (3, "VAE", 17, "vae"), (17, "IMAGE", 18, "images"),
            (5, "IMAGE", 19, "source_image"), (17, "IMAGE", 19, "result"), (11, "flow", 19, "target_flow"),
            (19, "error_map", 20, "images"),
        ],
    )
)


WORKFLOWS.append(
    Workflow(
        file="animate_image.json",
        note=(
            "Animate a still image with a driving video (Thin-Plate Spline Motion Model, Zhao & Zhang, CVPR 2022).\n\n"
            "Animate Image moves the source as the video moves: relative mode (default) keeps the source's own "
            "shape and applies the video's motion from its first frame. The video is decoded one frame at a time, "
            "so long clips fit in memory; Create Video + Save Video write the result at the clip's frame rate.\n\n"
            "Model files: models/motionnft_animation/vox.pth.tar (the official TPSMM VoxCeleb checkpoint, MIT "
            "licence; taichi / ted / mgif for bodies, TED talks, cartoons), or a model from motionnft "
            "train-animation (RUN/tpsmm.safetensors; set size to its training size). Example inputs: copy "
            "workflows/images/motionnft_example_input.png and workflows/videos/motionnft_talking_head.mp4 (the "
            "TPSMM release's driving clip, MIT) from the MotionNFT pack into ComfyUI/input; a face photo works best "
            "with vox."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}, "source image"),
            Node(2, "LoadVideo", (0, 380), {"file": "motionnft_talking_head.mp4"}, "driving video", size=(340, 420)),
            Node(3, "MotionNFT_AnimateImage", (380, 0), {"model": "vox.pth.tar", "mode": "relative"}, size=(360, 420)),
            Node(4, "CreateVideo", (780, 0), {"fps": 25.0}),
            Node(5, "SaveVideo", (1080, 0), {"filename_prefix": "motionnft/animated"}, size=(420, 460)),
        ],
        links=[
            (1, "IMAGE", 3, "source"), (2, "VIDEO", 3, "driving_video"), (3, "frames", 4, "images"),
            (4, "VIDEO", 5, "video"),
        ],
    )
)


WORKFLOWS.append(
    Workflow(
        file="mine_pairs_from_video.json",
        note=(
            "Mine motion-edit training pairs from a video into a dataset folder.\n\n"
            "Mine Training Pairs cuts the video into windows (3 s by default) and keeps the first/"
            "last frame pairs that show clear subject motion filmed by a still camera, as the "
            "MotionEdit data was built. Every pair is checked with optical flow: shot cut, camera "
            "motion, motion size and area, sharpness, exposure, lighting, occlusion, near "
            "duplicates; the contact sheet shows each pair's numbers and why rejected pairs were "
            "rejected. With a dataset name, kept pairs are appended to ComfyUI/output/<name>/ "
            "(metadata.jsonl + images; a rerun resumes), ready for motionnft train and motionnft "
            "eval. Prompts stay empty unless a judge server drafts them.\n\n"
            "Model files: none (OpenCV DIS flow). Example clip: copy workflows/videos/"
            + EXAMPLE_CLIP + " from the MotionNFT pack into ComfyUI/input, or load your own video."
        ),
        nodes=[
            Node(1, "LoadVideo", (0, 0), {"file": EXAMPLE_CLIP}, size=(340, 420)),
            Node(2, "MotionNFT_MinePairs", (380, 0), {"window_seconds": 3.0, "dataset_name": "motionnft_mined_example"}, size=(400, 900)),
            Node(3, "PreviewImage", (820, 0), {}, "contact sheet", size=(640, 620)),
            Node(4, "SaveImage", (820, 660), {"filename_prefix": "motionnft/mined_input"}, "kept inputs"),
            Node(5, "SaveImage", (1160, 660), {"filename_prefix": "motionnft/mined_target"}, "kept targets"),
        ],
        links=[
            (1, "VIDEO", 2, "video"), (2, "contact_sheet", 3, "images"),
            (2, "input_images", 4, "images"), (2, "target_images", 5, "images"),
        ],
    )
)


WORKFLOWS.append(
    Workflow(
        file="instant_drag.json",
        note=(
            "InstantDrag in one click: drag points on the image, FlowGen turns the drags into a dense flow, "
            "FlowDiffusion edits the image to follow it.\n"
            "\n"
            "On Drag to Flow, click a point of the image and drag it to where it should go (several pairs; "
            "Undo / Clear). method FlowGen reads the image to move the dragged part (thin-plate spline needs "
            "no weights). FlowDiffusion Edit makes the edit (image and flow guidance 1.5, 20 DDIM steps, as "
            "the paper); Flow to Image shows the FlowGen flow, and Flow Alignment measures how well the edit "
            "follows it (DIS flow from the source to the edit against the FlowGen flow: end-point errors, "
            "reward, MAS, an error map).\n"
            "\n"
            "Model files: models/motionnft_drag/flowgen.safetensors and "
            "models/motionnft_drag/flowdiffusion.safetensors, made on your own clip by two commands:\n"
            "  motionnft train-drag --data DATASET --part flowgen --out runs/flowgen\n"
            "  motionnft train-drag --data DATASET --part flowdiffusion --out runs/flowdiffusion\n"
            "(DATASET: pairs mined with 'motionnft mine --save-flow'), then copy runs/*/flow*.safetensors "
            "into ComfyUI/models/motionnft_drag. A FlowDiffusion delta or LoRA file on SD 1.5 also needs Load"
            " Checkpoint's MODEL and VAE connected to FlowDiffusion Edit. Example image: copy "
            "workflows/images/*.png from the MotionNFT pack into ComfyUI/input."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}),
            Node(2, "MotionNFT_DragToFlow", (340, 0), {
                "drags": json.dumps({"size": [256, 256], "drags": [[150.0, 150.0, 190.0, 95.0], [110.0, 70.0, 122.0, 70.0]]}),
                "smoothness": 0.0, "method": "FlowGen", "flowgen": "flowgen.safetensors",
            }, size=(360, 560)),
            Node(3, "MotionNFT_FlowDiffusionEdit", (740, 0), {
                "flowdiffusion": "flowdiffusion.safetensors", "image_guidance": 1.5, "flow_guidance": 1.5, "steps": 20,
                "seed": 0,
            }, size=(340, 300)),
            Node(4, "SaveImage", (1120, 0), {"filename_prefix": "motionnft/instant_drag"}, "edit"),
            Node(5, "MotionNFT_FlowToImage", (740, 340), {}),
            Node(6, "PreviewImage", (1120, 400), {}, "FlowGen flow"),
            Node(7, "MotionNFT_FlowAlignment", (740, 600), {"backend": "dis", "max_error": 0.0}, size=(340, 360)),
        ],
        links=[
            (1, "IMAGE", 2, "image"), (1, "IMAGE", 3, "image"), (2, "flow", 3, "flow"), (3, "image", 4, "images"),
            (2, "flow", 5, "flow"), (5, "image", 6, "images"),
            (1, "IMAGE", 7, "source_image"), (3, "image", 7, "result"), (2, "flow", 7, "target_flow"),
        ],
    )
)


BUILD_SCRIPT = """
(spec) => {
  const graph = window.app.graph;
  graph.clear();
  const byId = new Map();
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.id = n.id;
    graph.add(node);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets)) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(`${n.type} has no widget ${name}`);
      widget.value = value;
    }
    if (n.size) node.size = n.size;
    byId.set(n.id, node);
  }
  for (const [from, output, to, input] of spec.links) {
    const origin = byId.get(from), target = byId.get(to);
    const byName = origin.outputs.findIndex((o) => o.name === output);
    const out = typeof output === "number" ? output : byName >= 0 ? byName : origin.outputs.findIndex((o) => o.type === output);
    const inp = target.inputs.findIndex((i) => i.name === input);
    if (out < 0 || inp < 0) throw new Error(`cannot link ${from}.${output} -> ${to}.${input}`);
    origin.connect(out, target, inp);
  }
  graph.setDirtyCanvas(true, true);
  return JSON.stringify(graph.serialize());
}
"""


def write_example_images() -> None:
    sample = demo_sample(size=256)
    images = {"input": sample.input, "target": sample.target, **sample.edits}
    for name, key in EXAMPLE_IMAGES.items():
        save_image(images[key], WORKFLOWS_DIR / "images" / name)
    clip = MotionClip(kind="subject", size=(180, 320), fps=12.0, seconds=9.0, seed=2)
    write_video(WORKFLOWS_DIR / "videos" / EXAMPLE_CLIP, clip.frames(), clip.fps, crf=23)


def build(url: str, workflows: list[Workflow]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        for workflow in workflows:
            spec = {
                "nodes": [vars(n) for n in [note(workflow.note), *workflow.nodes]],
                "links": workflow.links,
            }
            data = json.loads(page.evaluate(BUILD_SCRIPT, spec))
            data.pop("id", None)  # a fresh id is given to each workflow a user opens
            with atomic_write(WORKFLOWS_DIR / workflow.file, "w") as handle:
                handle.write(json.dumps(data, indent=2) + "\n")
            print(f"wrote workflows/{workflow.file} ({len(data['nodes'])} nodes, {len(data['links'])} links)")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one from COMFYUI_DIR)")
    args = parser.parse_args()
    write_example_images()
    if args.url:
        build(args.url, WORKFLOWS)
        return 0
    if not os.environ.get("COMFYUI_DIR"):
        parser.error("set COMFYUI_DIR to a ComfyUI checkout, or pass --url")
    from comfyui_harness import ComfyUIServer, comfyui_dir

    server = ComfyUIServer(comfyui_dir(), Path(tempfile.mkdtemp(prefix="motionnft-workflows-")))
    server.start()
    try:
        build(server.url, WORKFLOWS)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
