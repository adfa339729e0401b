"""Animate Image: a source image moved by a driving video with the Thin-Plate Spline Motion Model
(TPSMM, MIT licence; weights from models/motionnft_animation). Outputs frames + fps for Create Video."""

from __future__ import annotations

import logging
import os

import folder_paths
import torch
from comfy_api.latest import InputImpl, io

import comfy.model_management

from ..motionnft.animation import LICENCE, MODES, animate, load_official_checkpoint
from ..motionnft.animation.frames import DrivingVideo, batch_frames, fit_source, working_size
from .common import (
    CATEGORY,
    bchw_to_image,
    NO_FILE,
    chosen_model_file,
    image_to_bchw,
    keep_one_loaded,
    progress_callback,
    register_model_folder,
)

ANIMATION_FOLDER = "motionnft_animation"
"""ComfyUI model folder of the TPSMM weights (``models/motionnft_animation``: the official
``vox.pth.tar`` / ``taichi.pth.tar`` / ``ted.pth.tar`` / ``mgif.pth.tar`` or their .safetensors)."""


register_model_folder(ANIMATION_FOLDER)
# Official checkpoints are named *.pth.tar: list them too (ComfyUI matches the last suffix only).
_paths, _extensions = folder_paths.folder_names_and_paths[ANIMATION_FOLDER]
if _extensions:
    folder_paths.folder_names_and_paths[ANIMATION_FOLDER] = (_paths, set(_extensions) | {".tar"})


class AnimateImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_AnimateImage",
            display_name="Animate Image (MotionNFT)",
            category=CATEGORY,
            description=(
                "Moves a source image as a driving video moves (Thin-Plate Spline Motion Model, Zhao & Zhang "
                "CVPR 2022, MIT licence), or with the feature-decoupling paper's model built on it. Weights: the "
                "official vox/taichi/ted/mgif .pth.tar (or their .safetensors), or a 'motionnft train-animation' "
                ".safetensors (the model kind is read from the file), in models/motionnft_animation. The driving video is decoded one frame at a time; "
                "outputs the animated frames and their fps for Create Video -> Save Video."
            ),
            inputs=[
                io.Image.Input("source", tooltip="The image to animate (the first of a batch); resized to the "
                               "working size, as the official demo does."),
                io.Combo.Input(
                    "model", options=[NO_FILE, *folder_paths.get_filename_list(ANIMATION_FOLDER)],
                    default=NO_FILE,
                    tooltip="Weights in models/motionnft_animation: an official TPSMM checkpoint (vox.pth.tar "
                    "for faces, taichi, ted, mgif), its converted .safetensors, or a train-animation .safetensors "
                    "(TPSMM or the paper's model; the kind is read from the file).",
                ),
                io.Combo.Input(
                    "mode", options=list(MODES), default="relative",
                    tooltip="relative: the source keeps its shape and moves as the driving video moves from its "
                    "first frame (usual). standard: the source takes each driving frame's absolute pose. avd: "
                    "the AVD network retargets the pose (checkpoints trained with it only).",
                ),
                io.Boolean.Input(
                    "adapt_movement_scale", default=True,
                    tooltip="relative mode: scale the motion by the size ratio of the source's and the first "
                    "driving frame's keypoints.",
                ),
                io.Boolean.Input(
                    "use_background", default=False,
                    tooltip="Also predict the camera/background motion (needs a model with a background "
                    "predictor; the official demo leaves it off).",
                ),
                io.Video.Input("driving_video", optional=True,
                               tooltip="The driving video, e.g. from Load Video; a file is decoded as a stream, "
                               "never whole. Its frame rate is the output fps."),
                io.Image.Input("driving_images", optional=True,
                               tooltip="Or: the driving frames as an IMAGE batch, at the fps below."),
                io.Float.Input("fps", default=24.0, min=0.01, max=1000.0, step=0.01, optional=True,
                               tooltip="Frame rate of driving_images (ignored for a driving video)."),
                io.Int.Input("size", default=0, min=0, max=4096, step=32, optional=True,
                             tooltip="Square working and output size in pixels; 0 = the size the model was "
                             "trained at (256; ted 384)."),
            ],
            outputs=[
                io.Image.Output(display_name="frames"),
                io.Float.Output(display_name="fps"),
            ],
        )

    @classmethod
    def execute(cls, source, model, mode, adapt_movement_scale, use_background, driving_video=None,
                driving_images=None, fps=24.0, size=0) -> io.NodeOutput:
        picture = image_to_bchw("source", source)[:1]
        frames, rate, total = driving_frames(driving_video, driving_images, fps)
        network = animation_model(model)
        device = comfy.model_management.get_torch_device()
        start = fit_source(picture, working_size(network, size)).to(device)
        if mode == "avd" and network.avd_network is None:
            raise ValueError(f"mode: avd needs a model with an AVD network; {model} has none (use relative)")
        if use_background and network.bg_predictor is None:
            raise ValueError(f"use_background: {model} has no background predictor (mgif has none); turn it off")
        out = [bchw_to_image(frame) for frame in animate(
            start, frames, network, mode=mode, adapt_movement_scale=adapt_movement_scale,
            use_background=use_background, progress=progress_callback(total), total=total)]
        if not out:
            raise ValueError("driving video: no frame could be decoded")
        return io.NodeOutput(torch.cat(out), float(rate))


def driving_frames(video, images, fps: float):
    """(frames iterator of (1, 3, H, W), fps, frame count) of whichever driving input is connected."""
    if video is not None and images is not None:
        raise ValueError("connect either driving_video or driving_images (with fps), not both")
    if video is not None:
        if isinstance(video, InputImpl.VideoFromFile):
            # Stream-decoded from the file: get_components() would decode every frame into RAM.
            driving = DrivingVideo.open(video.get_stream_source())
            return driving.frames(), driving.fps, driving.frame_count
        components = video.get_components()  # frames already in memory (e.g. from Create Video)
        batch = image_to_bchw("driving_video", components.images)
        return batch_frames(batch), float(components.frame_rate), batch.shape[0]
    if images is not None:
        batch = image_to_bchw("driving_images", images)
        return batch_frames(batch), float(fps), batch.shape[0]
    raise ValueError("nothing drives the animation: connect driving_video (e.g. from Load Video) or "
                     "driving_images (an IMAGE batch of frames, with fps)")


_LOADED: dict = {}


def animation_model(name: str):
    """The TPSMM of the ``model`` widget's file on ComfyUI's device (kept while the file is unchanged).
    FileNotFoundError naming every motionnft_animation folder when there is none."""
    path = chosen_model_file(
        "model", name, ANIMATION_FOLDER, "Animate Image needs TPSMM weights",
        "an official checkpoint (vox.pth.tar, taichi.pth.tar, ted.pth.tar, mgif.pth.tar from "
        "github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model) or a .safetensors from 'motionnft train-animation'")
    device = comfy.model_management.get_torch_device()

    def load():
        model = load_official_checkpoint(path, device=device)
        logging.info("MotionNFT: loaded TPSMM weights %s; licence: %s", path, LICENCE)
        return model

    return keep_one_loaded(_LOADED, (path, os.stat(path).st_mtime_ns, str(device)), load)
