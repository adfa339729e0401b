"""Frozen configurations of the Thin-Plate-Spline Motion Model (TPSMM) networks.

The presets carry the ``model_params`` of the official ``config/*.yaml`` files of
yoyo-nb/Thin-Plate-Spline-Motion-Model (MIT licence): ``vox-256``, ``taichi-256``,
``ted-384`` and ``mgif-256``. They differ only in ``bg`` (mgif has no background
predictor) and the frame size the checkpoint was trained on. :meth:`TPSMMConfig.tiny`
shrinks the hourglass and the generator for tests and CPU training; the two ResNet-18
backbones keep their fixed torchvision width because the official detector has no width
option (their keys must stay loadable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

POINTS_PER_TPS = 5
"""Control points per thin-plate spline transform (``N`` in the paper); fixed by the official code."""

OCCLUSION_MASKS = 4
"""Multi-resolution occlusion masks: 1/8, 1/4, 1/2 and 1/1 of the frame (official constant)."""


@dataclass(frozen=True)
class DenseMotionConfig:
    """The dense motion network: an hourglass over heatmaps and K+1 warped sources.

    ``scale_factor`` is the size ratio of the frame the network works on (0.25: 256 -> 64);
    ``kp_variance`` the variance of the keypoint heatmaps in normalised units ([-1, 1]²).
    """

    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.scale_factor <= 1:
            raise ValueError(f"dense_motion.scale_factor must be in (0, 1], got {self.scale_factor}")
        ups = math.log2(1 / self.scale_factor)
        if abs(ups - round(ups)) > 1e-9:
            raise ValueError(f"dense_motion.scale_factor must be a power of 1/2, got {self.scale_factor}")
        if self.block_expansion < 1 or self.max_features < 1 or self.num_blocks < 1:
            raise ValueError(f"dense_motion: sizes must be positive, got {self}")

    @property
    def up_blocks(self) -> int:
        """Upsampling blocks after the hourglass that bring the masks to full resolution."""
        return round(math.log2(1 / self.scale_factor))


@dataclass(frozen=True)
class InpaintingConfig:
    """The inpainting generator: an encoder-decoder whose skips are warped and occluded."""

    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 3

    def __post_init__(self) -> None:
        if self.block_expansion < 1 or self.max_features < 1 or self.num_down_blocks < 1:
            raise ValueError(f"generator: sizes must be positive, got {self}")


@dataclass(frozen=True)
class AVDConfig:
    """Animation-via-disentanglement network: keypoint identity and pose bottlenecks."""

    id_bottle_size: int = 128
    pose_bottle_size: int = 128


@dataclass(frozen=True)
class TPSMMConfig:
    """The whole model; field names follow the official YAML ``common_params``.

    Args:
        num_tps: ``K``, the number of thin-plate spline transforms (each of 5 keypoints).
        num_channels: image channels.
        bg: whether a background affine predictor exists (and is in the checkpoint).
        multi_mask: multi-resolution occlusion masks (4) instead of one.
        generator, dense_motion, avd: the per-network settings.
        frame_size: the square frame size in pixels the preset's checkpoint was trained on.
    """

    num_tps: int = 10
    num_channels: int = 3
    bg: bool = True
    multi_mask: bool = True
    generator: InpaintingConfig = field(default_factory=InpaintingConfig)
    dense_motion: DenseMotionConfig = field(default_factory=DenseMotionConfig)
    avd: AVDConfig = field(default_factory=AVDConfig)
    frame_size: int = 256

    def __post_init__(self) -> None:
        if self.num_tps < 1:
            raise ValueError(f"num_tps must be >= 1, got {self.num_tps}")
        if self.multi_mask:
            # The generator applies mask i+1 after up block i, and mask 0 at 1/8 of the frame.
            if self.generator.num_down_blocks != OCCLUSION_MASKS - 1:
                raise ValueError(f"multi_mask needs generator.num_down_blocks == {OCCLUSION_MASKS - 1}, "
                                 f"got {self.generator.num_down_blocks}")
            if self.dense_motion.up_blocks > OCCLUSION_MASKS or \
                    self.dense_motion.num_blocks < OCCLUSION_MASKS - self.dense_motion.up_blocks:
                raise ValueError(f"multi_mask: dense_motion.num_blocks ({self.dense_motion.num_blocks}) and "
                                 f"scale_factor ({self.dense_motion.scale_factor}) cannot give {OCCLUSION_MASKS} masks")

    @property
    def num_keypoints(self) -> int:
        """``K · N`` keypoints the detector predicts."""
        return self.num_tps * POINTS_PER_TPS

    @classmethod
    def vox(cls) -> "TPSMMConfig":
        """``config/vox-256.yaml`` (VoxCeleb faces, 256 x 256)."""
        return cls()

    @classmethod
    def taichi(cls) -> "TPSMMConfig":
        """``config/taichi-256.yaml`` (TaiChiHD, 256 x 256)."""
        return cls()

    @classmethod
    def ted(cls) -> "TPSMMConfig":
        """``config/ted-384.yaml`` (TED talks, 384 x 384)."""
        return cls(frame_size=384)

    @classmethod
    def mgif(cls) -> "TPSMMConfig":
        """``config/mgif-256.yaml`` (MGif cartoons, 256 x 256, no background predictor)."""
        return cls(bg=False)

    @classmethod
    def tiny(cls) -> "TPSMMConfig":
        """Small hourglass and generator for tests and CPU training (64 x 64 frames, K = 3)."""
        return cls(
            num_tps=3,
            generator=InpaintingConfig(block_expansion=8, max_features=32, num_down_blocks=3),
            dense_motion=DenseMotionConfig(block_expansion=8, max_features=32, num_blocks=3, scale_factor=0.25),
            avd=AVDConfig(id_bottle_size=16, pose_bottle_size=16),
            frame_size=64,
        )


PRESETS = {"vox": TPSMMConfig.vox, "taichi": TPSMMConfig.taichi, "ted": TPSMMConfig.ted,
           "mgif": TPSMMConfig.mgif, "tiny": TPSMMConfig.tiny}
"""Preset name -> constructor; the names of the official checkpoints (``vox.pth.tar`` ...)."""
