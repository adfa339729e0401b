"""Optical flow behind one interface, plus colour coding, warping, occlusion and ``.flo`` I/O.

Every estimator maps two ``(B, 3, H, W)`` float batches in [0, 1] to a flow
``(B, 2, H, W)`` in pixels (x right, y down; from frame A to frame B)::

    from motionnft.flow import estimate_flow, flow_to_color
    flow = estimate_flow(frame_a, frame_b, backend="dis", preset="medium")
    picture = flow_to_color(flow)

Backends: ``dis`` (default) and ``farneback`` need no files; ``raft_large``, ``raft_small``
and ``unimatch`` are learned networks that load published weights found by
``motionnft.flow.weights`` (see ``available_backends()[name].weight_files``).
"""

from .base import (
    PRECISIONS,
    FlowBackend,
    FlowEstimator,
    ProgressCallback,
    available_backends,
    create_estimator,
    estimate_flow,
    get_backend,
    prepare_image_pair,
    register_backend,
)
from .flo import FLOW_FILE_SUFFIXES, read_flo, read_flow_file, valid_flow_mask, write_flo
from .opencv import DISFlow, FarnebackFlow
from .raft import RAFT, RAFTFlow, convert_original_raft_state_dict
from .unimatch import GMFlow, GMFlowConfig, GMFlowSettings, UniMatchFlow
from .viz import color_wheel, draw_flow_arrows, flow_legend, flow_to_color
from .warp import chain_flows, forward_backward_occlusion, pixel_grid, resize_flow, splat_forward, warp_backward
from .weights import WeightsNotFoundError, add_weight_folders, find_weights, weight_folders

__all__ = [
    "PRECISIONS",
    "RAFT",
    "DISFlow",
    "GMFlow",
    "GMFlowConfig",
    "GMFlowSettings",
    "RAFTFlow",
    "UniMatchFlow",
    "WeightsNotFoundError",
    "add_weight_folders",
    "convert_original_raft_state_dict",
    "find_weights",
    "weight_folders",
    "FarnebackFlow",
    "FlowBackend",
    "FlowEstimator",
    "ProgressCallback",
    "available_backends",
    "chain_flows",
    "color_wheel",
    "create_estimator",
    "draw_flow_arrows",
    "estimate_flow",
    "flow_legend",
    "flow_to_color",
    "forward_backward_occlusion",
    "get_backend",
    "pixel_grid",
    "prepare_image_pair",
    "FLOW_FILE_SUFFIXES",
    "read_flo",
    "read_flow_file",
    "register_backend",
    "resize_flow",
    "splat_forward",
    "valid_flow_mask",
    "warp_backward",
    "write_flo",
]
