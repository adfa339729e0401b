"""Drag editing: point drags -> a dense flow.

Two ways from drags to flow: the thin-plate spline (:mod:`.spline`, no training, knows
nothing of the image) and InstantDrag's FlowGen (:mod:`.flowgen`, a U-Net GAN that reads the
image, trained by :mod:`.train_flowgen` on pairs with dense flow and the pseudo-drags of
:mod:`.pseudo_drags`; :mod:`.inference` runs it on any image size and reads and writes its
weight files). The training entry point is imported from its module, not here, so that
drawing a spline does not load the trainer.

InstantDrag's FlowDiffusion (:mod:`.flowdiffusion`: a flow-conditioned SD 1.5 UNet, sampled by
:mod:`.flowdiffusion_sampling`, trained by :mod:`.train_flowdiffusion`, saved by
:mod:`.flowdiffusion_files`; SD 1.5 UNets in ComfyUI's layout: :mod:`.sd_unet`; whole SD 1.5
checkpoints to fine-tune from: :mod:`.sd_checkpoint`) needs diffusers: its
names below are imported on first use, for the same reason.
"""

from .flowgen import FlowGen, FlowGenConfig, PatchDiscriminator, pack_inputs
from .inference import flowgen_flow, load_flowgen, save_flowgen
from .pseudo_drags import PseudoDrags, moving_mask, sample_pseudo_drags
from .spline import (
    DragList,
    apply_thin_plate_spline,
    border_points,
    drags_to_flow,
    fit_thin_plate_spline,
    parse_drags,
    thin_plate_spline,
)

__all__ = [
    "DragList", "parse_drags", "drags_to_flow", "border_points", "thin_plate_spline", "fit_thin_plate_spline",
    "apply_thin_plate_spline", "FlowGen", "FlowGenConfig", "PatchDiscriminator", "pack_inputs", "PseudoDrags",
    "moving_mask", "sample_pseudo_drags", "flowgen_flow", "save_flowgen", "load_flowgen",
]

_FLOWDIFFUSION = {
    "FlowDiffusion": "flowdiffusion", "FlowDiffusionConfig": "flowdiffusion", "from_sd_unet": "flowdiffusion",
    "tiny_config": "flowdiffusion", "PooledRGBCodec": "flowdiffusion_conditioning",
    "SDVAECodec": "flowdiffusion_conditioning", "flow_condition": "flowdiffusion_conditioning",
    "flowdiffusion_edit": "flowdiffusion_sampling", "combine_guidance": "flowdiffusion_sampling",
    "make_scheduler": "flowdiffusion_sampling", "edit_at_working_size": "flowdiffusion_sampling",
    "CodecSpec": "flowdiffusion_files", "save_flowdiffusion": "flowdiffusion_files",
    "load_flowdiffusion_file": "flowdiffusion_files", "unet_from_sd_state": "sd_unet",
    "load_sd15": "sd_checkpoint", "SD15Parts": "sd_checkpoint",
}
__all__ += list(_FLOWDIFFUSION)


def __getattr__(name: str):
    if name in _FLOWDIFFUSION:
        import importlib

        return getattr(importlib.import_module(f".{_FLOWDIFFUSION[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
