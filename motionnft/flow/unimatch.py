"""UniMatch's flow model, GMFlow (Xu et al., CVPR 2022 / TPAMI 2023), in plain torch.

The module tree uses the parameter names of the official UniMatch checkpoints
(``gmflow-scale1-*.pth``, ``gmflow-scale2-*.pth``, ``gmflow-scale2-regrefine6-*.pth``), so
they load as they are; the architecture (1 or 2 scales, with or without local regression
refinement, upsampling factor) is read from the checkpoint itself.

GMFlow extracts features at 1/8 (and 1/4) resolution with a CNN, enhances them with a
transformer (self- and cross-attention in shifted windows), matches them globally (or in a
local window at the finer scale) with a softmax over correlations, propagates the flow
with self-attention, optionally refines it with a few recurrent regression steps, and
upsamples it by a learned convex combination.

``UniMatchFlow`` runs it with the official inference settings of each architecture; for
the 2-scale model with 6 refinements (the one MotionEdit's reward uses,
``gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth``) these are MotionEdit's:
images on a 0–255 scale, zero-padded at the bottom/right to a multiple of 32, attention
splits [2, 8], correlation radius [-1, 4], propagation radius [-1, 1], 6 refinements,
no bidirectional pass.

The network is in ``unimatch_net`` (and ``unimatch_attention``); this module reads the
checkpoints into it and runs it as the ``unimatch`` backend.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import PRECISIONS, FlowBackend, register_backend
from .learned import TorchFlowEstimator, check_state_dict_keys, state_dict_from
from .unimatch_attention import (  # noqa: F401  (the network's names stay importable from here)
    FeatureTransformer,
    FlowPropagation,
    TransformerBlock,
    TransformerLayer,
    shifted_window_mask,
    sine_position_embedding,
)
from .unimatch_net import (  # noqa: F401  (the network's names stay importable from here)
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFINE_RADIUS,
    Backbone,
    GMFlow,
    GMFlowConfig,
    GMFlowSettings,
    MotionEncoder,
    RegressionRefiner,
    ResidualBlock,
    SeparableGRU,
    correlation_around_flow,
    global_matching,
    local_matching,
)


def gmflow_config_of(state_dict: Mapping[str, torch.Tensor]) -> GMFlowConfig:
    """The architecture stored in an official UniMatch flow checkpoint."""
    if "backbone.conv1.weight" not in state_dict or "transformer.layers.0.self_attn.q_proj.weight" not in state_dict:
        raise ValueError("not a UniMatch/GMFlow checkpoint (no backbone.conv1.weight / transformer.layers.0...)")
    num_scales = 2 if "backbone.trident_conv.weight" in state_dict else 1
    reg_refine = any(k.startswith("refine.") for k in state_dict)
    mask_key = "refine.mask.2.weight" if reg_refine else "upsampler.2.weight"
    if mask_key not in state_dict:
        raise ValueError(f"UniMatch checkpoint without {mask_key}: cannot tell its upsampling factor")
    factor = math.isqrt(state_dict[mask_key].shape[0] // 9)
    layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.layers.")})
    channels = int(state_dict["backbone.conv2.weight"].shape[0])
    return GMFlowConfig(num_scales=num_scales, upsample_factor=factor, reg_refine=reg_refine,
                        feature_channels=channels, num_transformer_layers=layers)


def refinements_in_name(path: str | os.PathLike) -> int | None:
    """The N of ``regrefineN`` in a checkpoint's file name, if any."""
    match = re.search(r"regrefine(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def pad_to_multiple(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom and right up to multiples of ``factor`` (MotionEdit's padding)."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % factor, (-width) % factor
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


class UniMatchFlow(TorchFlowEstimator):
    """GMFlow (UniMatch's flow model) as a ``FlowEstimator``.

    Images in [0, 1] are scaled to 0–255, zero-padded at the bottom/right to a multiple of
    the settings' padding factor, and the flow is cropped back (MotionEdit's procedure).

    Args:
        weights: an official checkpoint (path or state dict); the architecture is read from it.
        settings: inference settings; default ``GMFlowSettings.official`` for the
            architecture, with the refinement count from the file name (``regrefine6``)
            or ``num_reg_refine``.
        precision, device, max_batch: see ``TorchFlowEstimator``.
    """

    name = "unimatch"

    def __init__(
        self,
        weights: str | os.PathLike | Mapping[str, torch.Tensor],
        settings: GMFlowSettings | None = None,
        num_reg_refine: int | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        max_batch: int = 8,
        preset: str = "default",
    ):
        if preset not in UNIMATCH_PRESETS:
            raise ValueError(f"UniMatch preset {preset!r}: expected one of {', '.join(UNIMATCH_PRESETS)}")
        origin = "the given state dict" if isinstance(weights, Mapping) else str(weights)
        state_dict = state_dict_from(weights)
        config = gmflow_config_of(state_dict)
        model = GMFlow(config)
        check_state_dict_keys(model, state_dict, origin)
        super().__init__(model, precision=precision, device=device, max_batch=max_batch)
        if num_reg_refine is None and not isinstance(weights, Mapping):
            num_reg_refine = refinements_in_name(weights)
        self.settings = settings if settings is not None else GMFlowSettings.official(config, num_reg_refine)
        self.config = config
        self.preset = preset
        self.weights = None if isinstance(weights, Mapping) else Path(weights)

    def run_network(self, image1, image2):
        height, width = image1.shape[-2:]
        pair = pad_to_multiple(torch.cat((image1, image2)) * 255.0, self.settings.padding_factor)
        first, second = pair.chunk(2)
        flow = self.model(first, second, self.settings)
        return flow[:, :, :height, :width].float()

    def __repr__(self) -> str:
        source = self.weights.name if self.weights is not None else "state dict"
        c, s = self.config, self.settings
        return (
            f"UniMatchFlow({source}, scales={c.num_scales}, refinements={s.num_reg_refine}, "
            f"splits={list(s.attn_splits)}, corr_radius={list(s.corr_radius)}, "
            f"prop_radius={list(s.prop_radius)}, padding={s.padding_factor}, precision={self.precision!r})"
        )


UNIMATCH_PRESETS = ("default",)

UNIMATCH_FILES = (
    "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth",
    "gmflow-scale2-regrefine6-things-776ed612.pth",
    "gmflow-scale2-regrefine6-sintelft-6e39e2b9.pth",
    "gmflow-scale2-regrefine6-kitti15-25b554d7.pth",
    "gmflow-scale2-mixdata-train320x576-9ff1c094.pth",
    "gmflow-scale2-things-36579974.pth",
    "gmflow-scale2-sintel-3ed1cf48.pth",
    "gmflow-scale1-mixdata-train320x576-4c3a6e9a.pth",
    "gmflow-scale1-things-e9887eda.pth",
)
"""File names the unimatch backend accepts unasked, preferred first: MotionEdit's checkpoint first."""


def _build(preset: str, weights, precision: str = "fp32", device=None) -> UniMatchFlow:
    return UniMatchFlow(weights, preset=preset, precision=precision, device=device)


register_backend(
    FlowBackend(
        name="unimatch",
        factory=_build,
        presets=UNIMATCH_PRESETS,
        default_preset="default",
        needs_weights=True,
        description="UniMatch GMFlow (4.7-7.4 M parameters), the flow of MotionEdit's reward",
        weight_files=UNIMATCH_FILES,
        precisions=PRECISIONS,
    )
)
