"""Drag editing: point drags -> a dense flow.

Two ways from drags to flow: the thin-plate spline (:mod:`.spline`, no training, knows
nothing of the image) and InstantDrag's FlowGen (:mod:`.flowgen`, a U-Net GAN that reads the
image, trained by :mod:`.train_flowgen` on pairs with dense flow and the pseudo-drags of
:mod:`.pseudo_drags`). The training entry point is imported from its module, not here, so
that drawing a spline does not load the trainer.
"""

from .flowgen import FlowGen, FlowGenConfig, PatchDiscriminator, pack_inputs
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
    "moving_mask", "sample_pseudo_drags",
]
