"""Mine Training Pairs: a video (or frames) in, kept (input, target) pairs and a contact sheet out."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from comfy_api.latest import InputImpl, io, ui

import folder_paths
from comfy_execution.graph_utils import ExecutionBlocker

from ..motionnft.mining import PAIRINGS, MiningConfig, MiningSummary, frames_source, mine, video_source
from ..motionnft.report import render_contact_sheet
from .common import (
    CATEGORY,
    PRESET_AUTO,
    WEIGHTS_AUTO,
    bchw_to_image,
    flow_estimator,
    flow_inputs,
    flow_model_inputs,
    image_to_bchw,
    progress_callback,
    resolve_preset,
)

DEFAULTS = MiningConfig()


def mining_source(video, images, fps: float):
    """The library's source for whichever input is connected."""
    if video is not None and images is not None:
        raise ValueError("connect either video or images (with fps), not both")
    if video is not None:
        if isinstance(video, InputImpl.VideoFromFile):
            # Stream-decoded from the file: get_components() would decode every frame into RAM.
            stream = video.get_stream_source()
            name = os.path.basename(stream) if isinstance(stream, str) else "video"
            return video_source(stream, name=name)
        components = video.get_components()  # frames already in memory (e.g. from Create Video)
        return frames_source(image_to_bchw("video", components.images), float(components.frame_rate), name="video")
    if images is not None:
        return frames_source(image_to_bchw("images", images), float(fps), name="images")
    raise ValueError("nothing to mine: connect video (e.g. from Load Video) or images (an IMAGE batch of frames, with fps)")


def dataset_folder(name: str) -> Path | None:
    """``ComfyUI/output/<name>``, refusing names that leave the output folder."""
    name = (name or "").strip()
    if not name:
        return None
    root = Path(folder_paths.get_output_directory()).resolve()
    folder = (root / name).resolve()
    if Path(name).is_absolute() or folder == root or root not in folder.parents:
        raise ValueError(f"dataset_name {name!r}: expected a folder name inside ComfyUI's output folder ({root})")
    return folder


def judge_client(server_url: str, model: str):
    if not (server_url or "").strip():
        return None
    try:
        from ..motionnft.judge import JudgeClient
    except ImportError as error:
        raise ValueError(f"judge_server_url needs the judge client (motionnft.judge), which this install lacks: {error}")
    return JudgeClient(server_url.strip(), model or "")


def _batch(frames: list) -> torch.Tensor:
    return torch.stack([torch.from_numpy(frame) for frame in frames]).float().div_(255.0)


class MinePairs(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_MinePairs",
            display_name="Mine Training Pairs (MotionNFT)",
            category=CATEGORY,
            description=(
                "Cuts a video into windows and keeps the first/last frame pairs that show clear subject motion "
                "filmed by a still camera (MotionEdit's recipe, with automatic flow-based filters: shot cut, "
                "camera motion, motion size and area, sharpness, exposure, lighting, occlusion, near duplicates). "
                "Outputs the kept inputs and targets and a contact sheet with every pair's metrics and the "
                "reasons for each rejection; optionally appends them to a dataset folder in ComfyUI's output "
                "folder (resumable; prompts are left empty unless a judge server drafts them)."
            ),
            inputs=[
                io.Video.Input("video", optional=True,
                               tooltip="A video, e.g. from Load Video; files are decoded as a stream, never whole."),
                io.Image.Input("images", optional=True,
                               tooltip="Or: the frames of a video as an IMAGE batch, at the fps below."),
                io.Float.Input("fps", default=24.0, min=0.01, max=1000.0, step=0.01,
                               tooltip="Frame rate of the images batch (ignored for a video)."),
                io.Float.Input("window_seconds", default=DEFAULTS.window_seconds, min=0.1, max=120.0, step=0.1,
                               tooltip="Window length; its first and last frames form a candidate pair."),
                io.Combo.Input("pairing", options=list(PAIRINGS), default=DEFAULTS.pairing,
                               tooltip="endpoints: consecutive windows (the paper); sliding: a window at every "
                               "analysed frame (near duplicates are dropped)."),
                io.Float.Input("stride_seconds", default=0.0, min=0.0, max=120.0, step=0.05,
                               tooltip="Seconds between window starts; 0 = the window length (endpoints) or one "
                               "analysed frame (sliding)."),
                io.Float.Input("sample_fps", default=DEFAULTS.sample_fps, min=0.1, max=120.0, step=0.1,
                               tooltip="Frames analysed per second of video."),
                io.Int.Input("analysis_size", default=DEFAULTS.analysis_size, min=64, max=4096, step=16,
                             tooltip="Long side (pixels) of the frames the filters analyse."),
                *flow_inputs(),
                io.Float.Input("max_camera_motion", default=DEFAULTS.max_camera_motion, min=0.0, max=1.0,
                               step=0.001, tooltip="Reject pairs whose camera moved more than this fraction of "
                               "the image diagonal."),
                io.Float.Input("min_motion", default=DEFAULTS.min_motion, min=0.0, max=1.0, step=0.001,
                               tooltip="Reject pairs whose subjects move less than this (mean over moving "
                               "pixels, fraction of the diagonal)."),
                io.Float.Input("max_occlusion", default=DEFAULTS.max_occlusion, min=0.0, max=1.0, step=0.01,
                               tooltip="Reject pairs where more of the input than this is occluded in the target."),
                io.String.Input("overrides", multiline=True, default="",
                                tooltip="Any other setting, one name=value per line, e.g. max_cut_score=0.3, "
                                "min_moving_fraction=0.02, camera_model=affine, output_max_side=1024 "
                                "(see the README for every name)."),
                io.String.Input("dataset_name", default="",
                                tooltip="Append the kept pairs to ComfyUI/output/<name>/ (metadata.jsonl + "
                                "images; a rerun resumes without duplicates). Empty = write nothing."),
                io.String.Input("judge_server_url", default="", optional=True,
                                tooltip="Optional OpenAI-compatible MLLM server that checks the paper's three "
                                "criteria and drafts each instruction; empty = no judge, prompts left empty."),
                io.String.Input("judge_model", default="", optional=True,
                                tooltip="Model name on the judge server (empty = its only model)."),
                io.Int.Input("max_pairs", default=32, min=1, max=4096,
                             tooltip="Kept pairs returned as IMAGE batches and drawn on the contact sheet (the "
                             "dataset folder receives all of them)."),
                io.Boolean.Input("show_rejected", default=True,
                                 tooltip="Also draw rejected pairs, with their reasons, on the contact sheet."),
                *flow_model_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="input_images"),
                io.Image.Output(display_name="target_images"),
                io.Image.Output(display_name="contact_sheet"),
                io.String.Output(display_name="summary"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fps, window_seconds, pairing, stride_seconds, sample_fps, analysis_size, backend, preset,
                max_camera_motion, min_motion, max_occlusion, overrides, dataset_name, max_pairs, show_rejected,
                video=None, images=None, judge_server_url="", judge_model="", weights=WEIGHTS_AUTO,
                precision="fp32") -> io.NodeOutput:
        widgets = dict(
            window_seconds=window_seconds, pairing=pairing, stride_seconds=stride_seconds or None,
            sample_fps=sample_fps, analysis_size=analysis_size, backend=backend, preset=resolve_preset(preset),
            max_camera_motion=max_camera_motion, min_motion=min_motion, max_occlusion=max_occlusion,
        )
        # The overrides box wins over the widgets; the config is checked once, as a whole.
        config = MiningConfig.with_overrides({**widgets, **MiningConfig.parse_overrides(overrides)})
        source = mining_source(video, images, fps)
        out = dataset_folder(dataset_name)
        judge = judge_client(judge_server_url, judge_model)
        summary = MiningSummary()
        kept, rejected = [], []
        # Flow settings in the overrides box win over the widgets too.
        estimator = flow_estimator(config.backend, config.preset or PRESET_AUTO, config.weights or weights,
                                   config.precision or precision)
        for result in mine([source], config, out=out, judge=judge, estimator=estimator, progress=progress_callback(1),
                           summary=summary, previews=True):
            if result.kept and len(kept) < max_pairs:
                kept.append(result)
            elif not result.kept and show_rejected and len(rejected) < max_pairs:
                rejected.append(result)
        rows = sorted(kept + rejected, key=lambda r: r.time_input)
        sheet = render_contact_sheet(rows, title=None if rows else (
            f"no candidate pairs: {source.name} lasts {source.duration:.2f} s, shorter than one "
            f"{config.window_seconds:g} s window" if summary.candidates == 0 else "no pair to show"))
        contact_sheet = bchw_to_image(sheet.unsqueeze(0))
        if kept:
            inputs = _batch([r.input_image for r in kept]).to(contact_sheet.device)
            targets = _batch([r.target_image for r in kept]).to(contact_sheet.device)
        else:
            # No pair to pass on: nodes fed by these outputs are skipped, silently (stock nodes
            # such as Save Image fail on an empty batch); the summary and sheet say why.
            inputs = targets = ExecutionBlocker(None)
        lines = [f"{source.name}: " + summary.format()]
        if summary.kept + summary.existing > len(kept):
            lines.append(f"returned the first {len(kept)} kept pairs (max_pairs)")
        if out is not None:
            lines.append(f"dataset: {out} (metadata.jsonl, images/, rejected.jsonl)")
        if not kept:
            lines.append("no pair kept: nodes fed by input_images and target_images are skipped")
        text = "\n".join(lines)
        preview = ui.PreviewImage(contact_sheet, cls=cls).as_dict()
        records = [r.record() for r in rows]
        return io.NodeOutput(
            inputs, targets, contact_sheet, text,
            ui={**preview, "text": [text], "motionnft_mining": [summary.as_dict()], "motionnft_pairs": records},
        )
