"""Drag to Flow: the point-drag editor's list of drags -> a dense flow (thin-plate spline or
InstantDrag's FlowGen, weights from models/motionnft_drag)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

import comfy.model_management

from ..motionnft.drag.inference import flowgen_flow, load_flowgen
from ..motionnft.drag.spline import drags_to_flow, parse_drags
from .common import (CATEGORY, DRAG_FOLDER, NO_FILE, Flow, check_mask, chosen_model_file, image_to_bchw,
                     keep_one_loaded)

SPLINE, FLOWGEN = "thin-plate spline", "FlowGen"

DRAG_EDITOR_HELP = (
    "Drag list from the point-drag editor on this node: click a point on the image and drag "
    "it to where it should go; several pairs; Undo / Clear. Stored as JSON "
    '{"size": [W, H], "drags": [[x0, y0, x1, y1], ...]}; "x0,y0 -> x1,y1; ..." also works.'
)


class DragToFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MotionNFT_DragToFlow",
            display_name="Drag to Flow (MotionNFT)",
            category=CATEGORY,
            description=(
                "Turns point drags (source -> target) into a dense flow: by thin-plate-spline "
                "interpolation (optionally confined to a mask), or by InstantDrag's FlowGen, which reads "
                "the image (weights from models/motionnft_drag, made by 'motionnft train-drag'). Feed it to "
                "Warp Image by Flow (forward) for a preview of the drag."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image the drags are drawn on; sets the flow's size."),
                io.String.Input("drags", multiline=True, default="", tooltip=DRAG_EDITOR_HELP),
                io.Float.Input(
                    "smoothness", default=0.0, min=0.0, max=1e6, step=1.0,
                    tooltip="0 = every drag is followed exactly; larger = a smoother, looser field.",
                ),
                io.Boolean.Input(
                    "pin_borders", default=True,
                    tooltip="Hold the image border still so drags bend the image locally; off = one drag slides everything.",
                ),
                io.Mask.Input("mask", optional=True, tooltip="Where content may move (flow is 0 outside)."),
                io.Combo.Input(
                    "method", options=[SPLINE, FLOWGEN], default=SPLINE, optional=True,
                    tooltip="thin-plate spline: no weights, knows nothing of the image. FlowGen: a network that "
                    "reads the image and moves the dragged part (needs a flowgen file); smoothness and "
                    "pin_borders are the spline's only.",
                ),
                io.Combo.Input(
                    "flowgen", options=[NO_FILE, *folder_paths.get_filename_list(DRAG_FOLDER)],
                    default=NO_FILE, optional=True,
                    tooltip="FlowGen weights (flowgen.safetensors from 'motionnft train-drag') in "
                    "models/motionnft_drag; used when method is FlowGen.",
                ),
            ],
            outputs=[Flow.Output(display_name="flow")],
        )

    @classmethod
    def execute(cls, image, drags, smoothness, pin_borders, mask=None, method=SPLINE,
                flowgen=NO_FILE) -> io.NodeOutput:
        picture = image_to_bchw("image", image)
        batch, _, height, width = picture.shape
        drag_list = parse_drags(drags)
        if len(drag_list) == 0:
            raise ValueError("drags: no drag pairs yet; draw at least one on the node's editor")
        if mask is not None:
            mask = check_mask("mask", mask, (height, width))
        if method == FLOWGEN:
            flow = flowgen_flow(flowgen_generator(flowgen), picture, drag_list, mask=mask)
        else:
            flow = drags_to_flow(
                drag_list, height, width, mask=mask, smoothness=smoothness,
                pinned_border_points=8 if pin_borders else 0,
            )
        if flow.shape[0] == 1 and batch > 1:
            flow = flow.expand(batch, -1, -1, -1).contiguous()
        # The editor shows this image after a run when it cannot find the upstream one.
        preview = ui.PreviewImage(image[:1], cls=cls).as_dict()
        return io.NodeOutput(flow, ui={"motionnft_drag_image": preview["images"]})


_LOADED: dict = {}


def flowgen_generator(name: str):
    """The FlowGen of the ``flowgen`` widget's file, on ComfyUI's device (kept while the file is
    unchanged). FileNotFoundError naming every motionnft_drag folder when there is none."""
    path = chosen_model_file("flowgen", name, DRAG_FOLDER, "method FlowGen needs weights",
                             "a FlowGen file (flowgen.safetensors from 'motionnft train-drag')")
    device = comfy.model_management.get_torch_device()
    return keep_one_loaded(_LOADED, (path, os.stat(path).st_mtime_ns, str(device)),
                           lambda: load_flowgen(path).to(device))
