"""Optical Flow, Flow to Image, Warp Image by Flow."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..motionnft.flow import (
    draw_flow_arrows,
    flow_legend,
    flow_to_color,
    resize_flow,
    splat_forward,
    warp_backward,
)
from ..motionnft.image import resize_image
from .common import (
    CATEGORY,
    Flow,
    bchw_to_image,
    broadcast_batches,
    check_flow,
    flow_estimator,
    flow_inputs,
    flow_model_inputs,
    image_to_bchw,
    progress_callback,
)


class OpticalFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_OpticalFlow",
            display_name="Optical Flow (MotionNFT)",
            category=CATEGORY,
            description=(
                "Dense optical flow from image A to image B, in pixels. A single image A is "
                "paired with every image of a B batch. B is resized to A's size if they differ. "
                "Learned backends (raft_large, raft_small, unimatch) load their weights from "
                "models/optical_flow and run on ComfyUI's device."
            ),
            inputs=[
                io.Image.Input("image_a", tooltip="Frame A: where the pixels start (e.g. the input image)."),
                io.Image.Input("image_b", tooltip="Frame B: where they end up (e.g. the edited image)."),
                *flow_inputs(),
                *flow_model_inputs(),
            ],
            outputs=[Flow.Output(display_name="flow")],
        )

    @classmethod
    def execute(cls, image_a, image_b, backend, preset, weights="auto", precision="fp32") -> io.NodeOutput:
        a = image_to_bchw("image_a", image_a)
        b = image_to_bchw("image_b", image_b)
        if a.shape[-2:] != b.shape[-2:]:
            logging.info(
                "MotionNFT Optical Flow: image_b %sx%s resized to image_a's %sx%s",
                b.shape[-1], b.shape[-2], a.shape[-1], a.shape[-2],
            )
            b = resize_image(b, tuple(a.shape[-2:]))
        pair = broadcast_batches({"image_a": a, "image_b": b})
        estimator = flow_estimator(backend, preset, weights, precision)
        batch = pair["image_a"].shape[0]
        flow = estimator(pair["image_a"], pair["image_b"], progress_callback(batch))
        return io.NodeOutput(flow.cpu())


class FlowToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_FlowToImage",
            display_name="Flow to Image (MotionNFT)",
            category=CATEGORY,
            description=(
                "Middlebury colour coding of a flow: hue = direction, saturation = speed. "
                "Optionally draws arrows and insets the colour-wheel legend; the legend is "
                "also its own output."
            ),
            inputs=[
                Flow.Input("flow"),
                io.Float.Input(
                    "max_magnitude", default=0.0, min=0.0, max=4096.0, step=0.5,
                    tooltip="Pixels of motion shown at full colour; 0 = each image's own maximum.",
                ),
                io.Boolean.Input("arrows", default=False, tooltip="Draw motion arrows on a grid."),
                io.Int.Input("arrow_spacing", default=24, min=4, max=512, tooltip="Grid step of the arrows in pixels."),
                io.Boolean.Input("legend", default=True, tooltip="Inset the colour-wheel legend in the top-right corner."),
                io.Image.Input(
                    "arrows_over", optional=True,
                    tooltip="Draw the arrows over this image instead of the colour coding.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="legend")],
        )

    @classmethod
    def execute(cls, flow, max_magnitude, arrows, arrow_spacing, legend, arrows_over=None) -> io.NodeOutput:
        flow = check_flow("flow", flow).float().cpu()
        height, width = flow.shape[-2:]
        if max_magnitude > 0:
            limit = torch.full((flow.shape[0],), float(max_magnitude))
        else:
            limit = flow.norm(dim=1).flatten(1).amax(dim=1).clamp_min(1e-6)
        picture = flow_to_color(flow, limit)
        if arrows:
            base = picture
            if arrows_over is not None:
                base = resize_image(image_to_bchw("arrows_over", arrows_over).cpu(), (height, width))
            pair = broadcast_batches({"arrows_over": base, "flow": flow})
            picture = draw_flow_arrows(pair["arrows_over"], pair["flow"], spacing=arrow_spacing)
        legend_size = max(32, min(160, min(height, width) // 3))
        legend_image = flow_legend(legend_size, float(limit.max()))
        if legend:
            inset = legend_image[:, :height, :width]
            picture = picture.clone()
            picture[:, :, : inset.shape[-2], width - inset.shape[-1] :] = inset
        return io.NodeOutput(
            bchw_to_image(picture),
            bchw_to_image(legend_image.unsqueeze(0)),
            ui={"motionnft_flow_max": [float(limit.max())]},
        )


class WarpImageByFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_WarpImageByFlow",
            display_name="Warp Image by Flow (MotionNFT)",
            category=CATEGORY,
            description=(
                "backward: out(x) = image(x + flow(x)); with the flow A->B and image B this "
                "rebuilds A. forward: pushes every pixel of the image along the flow; with "
                "the flow A->B and image A this predicts B, leaving holes where nothing lands. "
                "The flow is rescaled to the image size if they differ."
            ),
            inputs=[
                io.Image.Input("image"),
                Flow.Input("flow"),
                io.Combo.Input("direction", options=["backward", "forward"], default="backward"),
            ],
            outputs=[
                io.Image.Output(display_name="image"),
                io.Mask.Output(display_name="valid", tooltip="1 where the result is defined (inside / not a hole)."),
            ],
        )

    @classmethod
    def execute(cls, image, flow, direction) -> io.NodeOutput:
        picture = image_to_bchw("image", image).cpu()
        flow = resize_flow(check_flow("flow", flow).float().cpu(), tuple(picture.shape[-2:]))
        pair = broadcast_batches({"image": picture, "flow": flow})
        picture, flow = pair["image"], pair["flow"]
        if direction == "backward":
            warped = warp_backward(picture, flow, padding_mode="border")
            inside = warp_backward(torch.ones_like(picture[:, :1]), flow, padding_mode="zeros")
            valid = (inside > 0.999).float()
        elif direction == "forward":
            warped, covered = splat_forward(picture, flow)
            valid = covered.float()
        else:
            raise ValueError(f"direction: expected 'backward' or 'forward', got {direction!r}")
        return io.NodeOutput(bchw_to_image(warped), valid[:, 0])


OpticalFlowAux = io.Custom("OPTICAL_FLOW")
"""comfyui_controlnet_aux's flow: float ``(N, H, W, 2)`` in pixels (its Unimatch node)."""


class FlowToOpticalFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_FlowToOpticalFlow",
            display_name="Flow to OPTICAL_FLOW (MotionNFT)",
            category=CATEGORY,
            description="Converts a MOTIONNFT_FLOW (B, 2, H, W) to comfyui_controlnet_aux's OPTICAL_FLOW layout (B, H, W, 2), pixels.",
            inputs=[Flow.Input("flow")],
            outputs=[OpticalFlowAux.Output(display_name="optical_flow")],
        )

    @classmethod
    def execute(cls, flow) -> io.NodeOutput:
        return io.NodeOutput(check_flow("flow", flow).float().permute(0, 2, 3, 1).contiguous())


class OpticalFlowToFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_OpticalFlowToFlow",
            display_name="OPTICAL_FLOW to Flow (MotionNFT)",
            category=CATEGORY,
            description="Converts comfyui_controlnet_aux's OPTICAL_FLOW (N, H, W, 2), pixels, to a MOTIONNFT_FLOW (N, 2, H, W).",
            inputs=[OpticalFlowAux.Input("optical_flow")],
            outputs=[Flow.Output(display_name="flow")],
        )

    @classmethod
    def execute(cls, optical_flow) -> io.NodeOutput:
        if not isinstance(optical_flow, torch.Tensor) or optical_flow.ndim != 4 or optical_flow.shape[-1] != 2:
            shape = tuple(optical_flow.shape) if isinstance(optical_flow, torch.Tensor) else type(optical_flow).__name__
            raise ValueError(f"optical_flow: expected a tensor (N, H, W, 2) in pixels, got {shape}")
        return io.NodeOutput(optical_flow.float().permute(0, 3, 1, 2).contiguous())
