"""RAFT optical flow (Teed & Deng, ECCV 2020), large and small, in plain torch.

The module tree uses torchvision's parameter names, so torchvision's published files
(``raft_large_C_T_SKHT_V2-ff5fadd5.pth``, ``raft_small_C_T_V2-01064c6d.pth``, ...) load as
they are; checkpoints of the original release (``raft-things.pth``, ``raft-small.pth``, ...,
saved from ``DataParallel`` with a ``module.`` prefix) load through
``convert_original_raft_state_dict``. No torchvision import is needed.

The network itself (configurations, layers, :class:`RAFT`) is in ``raft_net``; this module
reads checkpoints into it and runs it as the ``raft_large`` / ``raft_small`` backends.
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
from .raft_net import (  # noqa: F401  (the network's names stay importable from here)
    DOWNSAMPLE,
    MIN_FEATURE_SIZE,
    RAFT,
    RAFT_CONFIGS,
    RAFT_LARGE,
    RAFT_SMALL,
    BottleneckBlock,
    CorrelationPyramid,
    FeatureEncoder,
    MaskPredictor,
    MotionEncoder,
    RAFTConfig,
    RecurrentBlock,
    ResidualBlock,
    UpdateBlock,
)


def raft_variant_of(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """``"large"`` or ``"small"`` for a state dict in torchvision's layout, else ``None``."""
    weight = state_dict.get("feature_encoder.conv.weight")
    if weight is None:
        return None
    return {256: "large", 128: "small"}.get(int(weight.shape[0]))


_ORIGINAL_UPDATE_NAMES = {
    "encoder.convc1.": "motion_encoder.convcorr1.0.",
    "encoder.convc2.": "motion_encoder.convcorr2.0.",
    "encoder.convf1.": "motion_encoder.convflow1.0.",
    "encoder.convf2.": "motion_encoder.convflow2.0.",
    "encoder.conv.": "motion_encoder.conv.0.",
    "flow_head.": "flow_head.",
}


# Long on purpose: one branch per key family of the original release, read top to bottom as one table.
def convert_original_raft_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of the original RAFT release (princeton-vl) in torchvision's layout.

    Accepts keys with or without DataParallel's ``module.`` prefix, for the large and the
    small model. Other state dicts (torchvision's layout, or not RAFT) are returned unchanged.
    """
    keys = list(state_dict)
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    if not any(k.startswith(strip + "fnet.") for k in keys):
        return dict(state_dict)  # torchvision's layout already, or not RAFT at all
    bottleneck = any(re.search(r"fnet\.layer\d\.\d\.conv3\.", k) for k in keys)
    # In the original blocks, the norm of the 1x1 projection is norm3 (residual) or
    # norm4 (bottleneck); it also appears as downsample.1.
    projection_norm = 4 if bottleneck else 3
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key[len(strip):]
        new = None
        for source, target in (("fnet.", "feature_encoder."), ("cnet.", "context_encoder.")):
            if key.startswith(source):
                rest = key[len(source):]
                match = re.fullmatch(r"(layer\d\.\d)\.(conv|norm)(\d)\.(.+)", rest)
                if match:
                    block, kind, index, param = match.groups()
                    if kind == "norm" and int(index) == projection_norm:
                        new = None  # the same tensors arrive as downsample.1
                        break
                    new = f"{target}{block}.convnormrelu{index}.{0 if kind == 'conv' else 1}.{param}"
                elif rest.startswith("conv1."):
                    new = f"{target}convnormrelu.0.{rest[len('conv1.'):]}"
                elif rest.startswith("norm1."):
                    new = f"{target}convnormrelu.1.{rest[len('norm1.'):]}"
                elif rest.startswith("conv2."):
                    new = f"{target}conv.{rest[len('conv2.'):]}"
                else:  # layerN.M.downsample.I.*
                    new = target + rest
                break
        else:
            if key.startswith("update_block.mask.0."):
                new = "mask_predictor.convrelu.0." + key[len("update_block.mask.0."):]
            elif key.startswith("update_block.mask.2."):
                new = "mask_predictor.conv." + key[len("update_block.mask.2."):]
            elif key.startswith("update_block.gru."):
                match = re.fullmatch(r"update_block\.gru\.conv([zrq])(\d?)\.(.+)", key)
                if match is None:
                    raise ValueError(f"original RAFT checkpoint: unexpected key {key!r}")
                gate, number, param = match.groups()
                new = f"update_block.recurrent_block.convgru{number or 1}.conv{gate}.{param}"
            elif key.startswith("update_block."):
                rest = key[len("update_block."):]
                for source, target in _ORIGINAL_UPDATE_NAMES.items():
                    if rest.startswith(source):
                        new = "update_block." + target + rest[len(source):]
                        break
                else:
                    raise ValueError(f"original RAFT checkpoint: unexpected key {key!r}")
            else:
                raise ValueError(f"original RAFT checkpoint: unexpected key {key!r}")
        if new is not None:
            converted[new] = value
    return converted


class RAFTFlow(TorchFlowEstimator):
    """RAFT large or small as a ``FlowEstimator``.

    Images in [0, 1] are mapped to [-1, 1], padded (edge-replicated, centred) to a multiple
    of 8 and at least 128 px per side, run through ``iterations`` updates, and the flow is
    cropped back. Accepts torchvision's files and the original release's.

    Args:
        weights: a checkpoint path or a state dict (either layout).
        variant: ``"large"`` or ``"small"``; ``None`` reads it from the weights.
        preset: ``fast`` (6 updates), ``medium`` (12, torchvision's default) or
            ``accurate`` (32, the original Sintel evaluation); ``iterations`` overrides it.
        precision, device, max_batch: see ``TorchFlowEstimator``.
    """

    def __init__(
        self,
        weights: str | os.PathLike | Mapping[str, torch.Tensor],
        variant: str | None = None,
        preset: str = "medium",
        iterations: int | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        max_batch: int = 8,
    ):
        if preset not in RAFT_PRESETS:
            raise ValueError(f"RAFT preset {preset!r}: expected one of {', '.join(RAFT_PRESETS)}")
        origin = str(weights) if not isinstance(weights, Mapping) else "the given state dict"
        state_dict = convert_original_raft_state_dict(state_dict_from(weights))
        found = raft_variant_of(state_dict)
        if found is None:
            raise ValueError(
                f"{origin} is not a RAFT checkpoint (no feature_encoder.conv.weight / fnet.conv2.weight)"
            )
        if variant is not None and variant != found:
            raise ValueError(f"{origin} holds RAFT {found}, not RAFT {variant}: use the raft_{found} backend")
        model = RAFT(RAFT_CONFIGS[found])
        check_state_dict_keys(model, state_dict, origin)
        super().__init__(model, precision=precision, device=device, max_batch=max_batch)
        self.name = f"raft_{found}"
        self.variant = found
        self.preset = preset
        self.iterations = RAFT_PRESETS[preset] if iterations is None else int(iterations)
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        self.weights = None if isinstance(weights, Mapping) else Path(weights)

    def run_network(self, image1, image2):
        height, width = image1.shape[-2:]
        padded_h = max(math.ceil(height / DOWNSAMPLE) * DOWNSAMPLE, DOWNSAMPLE * MIN_FEATURE_SIZE)
        padded_w = max(math.ceil(width / DOWNSAMPLE) * DOWNSAMPLE, DOWNSAMPLE * MIN_FEATURE_SIZE)
        top, left = (padded_h - height) // 2, (padded_w - width) // 2
        pads = (left, padded_w - width - left, top, padded_h - height - top)
        pair = torch.cat((image1, image2)) * 2 - 1
        if any(pads):
            pair = F.pad(pair, pads, mode="replicate")
        first, second = pair.chunk(2)
        flow = self.model(first, second, self.iterations)[-1]
        return flow[:, :, top : top + height, left : left + width].float()

    def __repr__(self) -> str:
        source = self.weights.name if self.weights is not None else "state dict"
        return f"RAFTFlow({self.variant}, {source}, preset={self.preset!r}, iterations={self.iterations}, precision={self.precision!r})"


RAFT_PRESETS = {"fast": 6, "medium": 12, "accurate": 32}

RAFT_LARGE_FILES = (
    "raft_large_C_T_SKHT_V2-ff5fadd5.pth",
    "raft_large_C_T_V2-1bb1363a.pth",
    "raft_large_C_T_SKHT_V1-0b8c9e55.pth",
    "raft_large_C_T_V1-22a6c225.pth",
    "raft_large_C_T_SKHT_K_V2-b5c70766.pth",
    "raft_large_C_T_SKHT_K_V1-4a6a5039.pth",
    "raft-things.pth",
    "raft-sintel.pth",
    "raft-kitti.pth",
    "raft-chairs.pth",
)
"""File names the raft_large backend accepts unasked, preferred first: torchvision's (its
default, Sintel-finetuned V2, first), then the original release's."""

RAFT_SMALL_FILES = (
    "raft_small_C_T_V2-01064c6d.pth",
    "raft_small_C_T_V1-ad48884c.pth",
    "raft-small.pth",
)


def _factory(variant: str):
    def build(preset: str, weights, precision: str = "fp32", device=None) -> RAFTFlow:
        return RAFTFlow(weights, variant=variant, preset=preset, precision=precision, device=device)

    return build


register_backend(
    FlowBackend(
        name="raft_large",
        factory=_factory("large"),
        presets=tuple(RAFT_PRESETS),
        default_preset="medium",
        needs_weights=True,
        description="RAFT large (5.3 M parameters); torchvision or original weights",
        weight_files=RAFT_LARGE_FILES,
        precisions=PRECISIONS,
    )
)
register_backend(
    FlowBackend(
        name="raft_small",
        factory=_factory("small"),
        presets=tuple(RAFT_PRESETS),
        default_preset="medium",
        needs_weights=True,
        description="RAFT small (1.0 M parameters); torchvision or original weights",
        weight_files=RAFT_SMALL_FILES,
        precisions=PRECISIONS,
    )
)
