"""The dense motion network: K TPS + 1 affine transforms combined into one deformation,
plus multi-resolution occlusion masks (eqs. 5-6 of the TPSMM paper)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import OCCLUSION_MASKS, POINTS_PER_TPS, DenseMotionConfig
from .layers import AntiAliasInterpolation2d, Hourglass, UpBlock2d, keypoint_heatmaps
from .tps import affine_grid, tps_grids


@dataclass
class DenseMotion:
    """What the dense motion network predicts, at its working size ``h x w`` (the frame
    times ``scale_factor``).

    Attributes:
        deformation: ``(B, h, w, 2)`` normalised source position of each driving pixel
            (``grid_sample`` grid, ``align_corners=True``; see :func:`.tps.deformation_to_flow`).
        contribution_maps: ``(B, K+1, h, w)`` softmax weights; channel 0 is the background.
        occlusion_maps: masks in [0, 1], coarse to fine: four at 1/8, 1/4, 1/2 and 1/1 of the
            frame with ``multi_mask``, else one ``(B, 1, h, w)``.
        deformed_source: ``(B, K+1, C, h, w)`` the downscaled source under each transform.
    """

    deformation: torch.Tensor
    contribution_maps: torch.Tensor
    occlusion_maps: list[torch.Tensor]
    deformed_source: torch.Tensor
    features: torch.Tensor | None = None
    """``(B, F, h, w)`` the hourglass's last feature map (the motion optimiser's context)."""


def masked_softmax(logits: torch.Tensor, drop_probability: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Softmax over dim 1 with whole TPS channels dropped (eqs. 7-8, training only).

    Each channel but the background (0) is kept with probability ``1 - p`` per sample. The
    official code also divides the logits by ``1 - p`` after exponentiating them, which has
    no effect; it is left out here.

    Args:
        logits: ``(B, K+1, h, w)``.
    Returns:
        ``(B, K+1, h, w)`` summing to ~1 over the kept channels.
    """
    # Drawn on the generator's device (a CPU generator of derived_generator), then moved: the
    # same draws on every device.
    draws = torch.rand(logits.shape[:2], generator=generator,
                       device=generator.device if generator is not None else logits.device)
    keep = draws.to(logits.device) < (1 - drop_probability)
    keep[:, 0] = True
    weights = (logits - logits.max(1, keepdim=True).values).exp() * keep[:, :, None, None].to(logits.dtype)
    return weights / (weights.sum(dim=1, keepdim=True) + 1e-6)


class DenseMotionNetwork(nn.Module):
    """Source frame + keypoints of both frames -> :class:`DenseMotion`.

    Parameter names follow the official ``dense_motion_network`` state dict (``down``,
    ``hourglass``, ``maps``, ``up``, ``occlusion``).
    """

    def __init__(self, config: DenseMotionConfig = DenseMotionConfig(), num_tps: int = 10,
                 num_channels: int = 3, multi_mask: bool = True):
        super().__init__()
        self.config, self.num_tps, self.multi_mask = config, num_tps, multi_mask
        if config.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, config.scale_factor)
        # Input: one heatmap-difference channel per keypoint plus an empty background one,
        # and the source warped by each of the K+1 transforms.
        in_features = num_channels * (num_tps + 1) + num_tps * POINTS_PER_TPS + 1
        self.hourglass = Hourglass(config.block_expansion, in_features, config.num_blocks, config.max_features)
        widths = self.hourglass.out_channels
        self.maps = nn.Conv2d(widths[-1], num_tps + 1, kernel_size=7, padding=3)
        if multi_mask:
            ups = config.up_blocks
            self.up = nn.ModuleList(UpBlock2d(widths[-1] // 2**i, widths[-1] // 2 ** (i + 1)) for i in range(ups))
            mask_widths = [widths[-1 - i] for i in reversed(range(OCCLUSION_MASKS - ups))]
            mask_widths += [widths[-1] // 2 ** (i + 1) for i in range(ups)]
        else:
            mask_widths = [widths[-1]]
        self.occlusion = nn.ModuleList(nn.Conv2d(width, 1, kernel_size=7, padding=3) for width in mask_widths)

    def forward(self, source: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                bg_param: torch.Tensor | None = None, drop_probability: float = 0.0,
                generator: torch.Generator | None = None) -> DenseMotion:
        """
        Args:
            source: ``(B, C, H, W)`` in [0, 1].
            kp_driving, kp_source: ``(B, K·N, 2)`` normalised keypoints.
            bg_param: ``(B, 3, 3)`` background affine (:class:`.background.BackgroundPredictor`)
                or ``None`` for a still background (what the official demo uses).
            drop_probability: TPS dropout of :func:`masked_softmax` (training); 0 = plain softmax.
        """
        if self.config.scale_factor != 1:
            source = self.down(source)
        batch, _, height, width = source.shape
        transforms = self._transformations(kp_driving, kp_source, bg_param, height, width)
        deformed = self._deform(source, transforms)
        heatmaps = self._heatmaps(kp_driving, kp_source, height, width)
        features = self.hourglass(torch.cat([heatmaps, deformed.view(batch, -1, height, width)], dim=1))

        logits = self.maps(features[-1])
        if drop_probability > 0:
            contributions = masked_softmax(logits, drop_probability, generator)
        else:
            contributions = F.softmax(logits, dim=1)
        # Eq. 6: the deformation is the contribution-weighted sum of the K+1 grids.
        deformation = (transforms * contributions[..., None]).sum(dim=1)
        return DenseMotion(deformation, contributions, self._occlusions(features), deformed, features[-1])

    def _heatmaps(self, kp_driving: torch.Tensor, kp_source: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, K·N + 1, h, w)``: driving minus source Gaussians, after an empty background channel."""
        variance = self.config.kp_variance
        difference = (keypoint_heatmaps(kp_driving, height, width, variance)
                      - keypoint_heatmaps(kp_source, height, width, variance))
        return torch.cat([torch.zeros_like(difference[:, :1]), difference], dim=1)

    def _transformations(self, kp_driving: torch.Tensor, kp_source: torch.Tensor, bg_param: torch.Tensor | None,
                         height: int, width: int) -> torch.Tensor:
        """``(B, K+1, h, w, 2)``: the background affine grid, then the K TPS grids."""
        batch = kp_driving.shape[0]
        driving = kp_driving.view(batch, -1, POINTS_PER_TPS, 2)
        source = kp_source.view(batch, -1, POINTS_PER_TPS, 2)
        background = affine_grid(bg_param, batch, height, width, kp_driving.device, kp_driving.dtype)
        return torch.cat([background[:, None], tps_grids(driving, source, height, width)], dim=1)

    def _deform(self, source: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
        """``(B, K+1, C, h, w)``: the source sampled through each grid.

        ``F.grid_sample`` directly rather than kornia's ``remap``: the grids are already in
        the normalised frame, which is exactly what grid_sample takes.
        """
        batch, count, height, width = transforms.shape[:4]
        repeated = source[:, None].expand(-1, count, -1, -1, -1).reshape(batch * count, -1, height, width)
        warped = F.grid_sample(repeated, transforms.reshape(batch * count, height, width, 2), align_corners=True)
        return warped.view(batch, count, -1, height, width)

    def _occlusions(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Occlusion masks, coarse to fine: from the last decoder levels, then from up blocks."""
        if not self.multi_mask:
            return [torch.sigmoid(self.occlusion[0](features[-1]))]
        ups = self.config.up_blocks
        from_decoder = OCCLUSION_MASKS - ups
        masks = [torch.sigmoid(self.occlusion[i](features[i - from_decoder])) for i in range(from_decoder)]
        out = features[-1]
        for i, up in enumerate(self.up):
            out = up(out)
            masks.append(torch.sigmoid(self.occlusion[from_decoder + i](out)))
        return masks
