"""The inpainting generator: encode the source, warp and occlude every level's features by
the dense motion, decode the driving frame (section 3.3 of the TPSMM paper)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import InpaintingConfig
from .dense_motion import DenseMotion
from .layers import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


@dataclass
class Inpainting:
    """Attributes:
        prediction: ``(B, C, H, W)`` in [0, 1], the generated driving frame.
        deformed_source: ``(B, C, H, W)`` the source warped by the deformation alone.
        warped_features: the occluded, warped encoder features, coarse to fine, computed
            from *detached* features (for the warp loss; empty unless asked for).
    """

    prediction: torch.Tensor
    deformed_source: torch.Tensor
    warped_features: list[torch.Tensor]
    codes: object = None
    """:class:`.decoupling.DecoupledCodes` when the generator fused decoupled codes (the paper model)."""


def deform(features: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Sample ``(B, C, H, W)`` features through a ``(B, h, w, 2)`` grid resized to ``H x W``.

    The grid is resized bilinearly with ``align_corners=True`` (its values are normalised
    positions, so resizing does not rescale them).
    """
    height, width = features.shape[2:]
    if deformation.shape[1:3] != (height, width):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                    align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(features, deformation, align_corners=True)


def _fit_mask(mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    if mask.shape[2:] != features.shape[2:]:
        mask = F.interpolate(mask, size=features.shape[2:], mode="bilinear", align_corners=True)
    return mask


class InpaintingNetwork(nn.Module):
    """Source frame + :class:`.dense_motion.DenseMotion` -> :class:`Inpainting`.

    Parameter names follow the official ``inpainting_network`` state dict (``first``,
    ``down_blocks``, ``up_blocks``, ``resblock``, ``final``). ``H`` and ``W`` must be
    divisible by ``2**num_down_blocks``.
    """

    def __init__(self, config: InpaintingConfig = InpaintingConfig(), num_channels: int = 3, multi_mask: bool = True):
        super().__init__()
        self.config, self.multi_mask = config, multi_mask
        expansion, most, levels = config.block_expansion, config.max_features, config.num_down_blocks
        self.first = SameBlock2d(num_channels, expansion, kernel_size=7, padding=3)
        down, up, res = [], [], []
        for i in range(levels):
            width_in, width_out = min(most, expansion * 2**i), min(most, expansion * 2 ** (i + 1))
            down.append(DownBlock2d(width_in, width_out))
            # Every decoder level but the deepest sees its features concatenated with a skip.
            decoder_width = width_out if i == levels - 1 else 2 * width_out
            up.append(UpBlock2d(decoder_width, width_in))
            res += [ResBlock2d(decoder_width), ResBlock2d(decoder_width)]
        self.down_blocks = nn.ModuleList(down)
        self.up_blocks = nn.ModuleList(up[::-1])
        self.resblock = nn.ModuleList(res[::-1])
        self.final = nn.Conv2d(expansion, num_channels, kernel_size=7, padding=3)

    def encode(self, frame: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> the encoder's maps, finest (``H x W``) to deepest (``/ 2**num_down_blocks``)."""
        encoded = [self.first(frame)]
        for block in self.down_blocks:
            encoded.append(block(encoded[-1]))
        return encoded

    def forward(self, source: torch.Tensor, motion: DenseMotion, warped_features: bool = False,
                fuse: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, object]] | None = None) -> Inpainting:
        """
        Args:
            source: ``(B, C, H, W)`` in [0, 1].
            motion: the dense motion from the same source and keypoints.
            warped_features: also return the warp loss's detached warped features.
            fuse: ``fuse(warped, encoded) -> (features, codes)`` applied to the deepest warped
                features before decoding (the paper's motion attention); None: TPSMM.
        """
        encoded = self.encode(source)
        deformation, masks = motion.deformation, motion.occlusion_maps
        mask_index = (lambda level: level) if self.multi_mask else (lambda level: 0)

        def warp(level: int, features: torch.Tensor, detach: bool) -> torch.Tensor:
            mask = _fit_mask(masks[mask_index(level)], features)
            if detach:
                features, mask = features.detach(), mask.detach()
            return deform(features, deformation) * mask

        extras = [warp(0, encoded[-1], True)] if warped_features else []
        out = warp(0, encoded[-1], False)
        codes = None
        if fuse is not None:
            out, codes = fuse(out, encoded[-1])
        levels = self.config.num_down_blocks
        for i in range(levels):
            out = self.up_blocks[i](self.resblock[2 * i + 1](self.resblock[2 * i](out)))
            skip = warp(i + 1, encoded[-(i + 2)], False)
            if warped_features:
                extras.append(warp(i + 1, encoded[-(i + 2)], True))
            if i < levels - 1:
                out = torch.cat([out, skip], dim=1)

        deformed_source = deform(source, deformation)
        visible = _fit_mask(masks[-1], out)
        # The finest skip already holds the visible source features; the decoder fills the rest.
        out = torch.sigmoid(self.final(out * (1 - visible) + skip))
        prediction = out * (1 - visible) + deformed_source * visible
        return Inpainting(prediction, deformed_source, extras, codes)
