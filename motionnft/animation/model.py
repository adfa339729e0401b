"""The TPSMM networks under one module, named as the official checkpoint's top-level keys.

``TPSMM(config).state_dict()`` keys are ``<network>.<official key>`` with ``<network>`` one
of ``kp_detector``, ``dense_motion_network``, ``inpainting_network``, ``bg_predictor`` and
``avd_network``, the names under which the official ``*.pth.tar`` stores each network's
state dict; the converted safetensors files use the same flat keys.
"""

from __future__ import annotations

import torch
from torch import nn

from .avd import AVDNetwork
from .background import BackgroundPredictor
from .config import TPSMMConfig
from .dense_motion import DenseMotion, DenseMotionNetwork
from .inpainting import Inpainting, InpaintingNetwork
from .keypoint_detector import KeypointDetector

NETWORKS = ("kp_detector", "dense_motion_network", "inpainting_network", "bg_predictor", "avd_network")
"""The official checkpoint's keys that hold network state dicts (the rest are optimiser states and the epoch)."""


class TPSMM(nn.Module):
    """Keypoint detector, dense motion, inpainting, and the optional background and AVD networks.

    Args:
        config: the architecture (:class:`.config.TPSMMConfig`; presets ``vox()``, ``tiny()``...).
        with_avd: build the AVD network (only checkpoints trained with ``train_avd`` have it).

    Example:
        >>> model = TPSMM(TPSMMConfig.tiny()).eval()
        >>> source = torch.rand(1, 3, 64, 64)
        >>> kp = model.kp_detector(source)
        >>> model(source, kp, kp).prediction.shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, config: TPSMMConfig = TPSMMConfig(), with_avd: bool = False):
        super().__init__()
        self.config = config
        self.kp_detector = KeypointDetector(config.num_tps, config.num_channels)
        self.dense_motion_network = DenseMotionNetwork(config.dense_motion, config.num_tps, config.num_channels,
                                                       config.multi_mask)
        self.inpainting_network = InpaintingNetwork(config.generator, config.num_channels, config.multi_mask)
        self.bg_predictor = BackgroundPredictor(config.num_channels) if config.bg else None
        self.avd_network = AVDNetwork(config.num_tps, config.avd.id_bottle_size,
                                      config.avd.pose_bottle_size) if with_avd else None

    def check_frame_size(self, height: int, width: int) -> None:
        """Raise unless the generator and the hourglass can halve an ``H x W`` frame enough times."""
        generator = 2**self.config.generator.num_down_blocks
        motion = self.config.dense_motion
        hourglass = round(2**motion.num_blocks / motion.scale_factor)
        multiple = max(generator, hourglass)
        if height % multiple or width % multiple:
            raise ValueError(f"frame size {width}x{height}: width and height must be multiples of {multiple} "
                             f"for this model (trained at {self.config.frame_size}x{self.config.frame_size})")

    def motion(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
               bg_param: torch.Tensor | None = None) -> DenseMotion:
        """Dense motion from ``(B, K·N, 2)`` keypoints; see :class:`.dense_motion.DenseMotionNetwork`."""
        return self.dense_motion_network(source, kp_driving, kp_source, bg_param)

    def refine_motion(self, source: torch.Tensor, motion: DenseMotion) -> DenseMotion:
        """The dense motion the generator uses; TPSMM uses the network's as it is (the paper
        model refines it, :class:`.paper_model.DecoupledTPSMM`)."""
        return motion

    def generate(self, source: torch.Tensor, motion: DenseMotion, warped_features: bool = False) -> Inpainting:
        """The inpainting generator on ``(B, C, H, W)`` source and its (refined) motion."""
        return self.inpainting_network(source, motion, warped_features)

    def forward(self, source: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor,
                bg_param: torch.Tensor | None = None) -> Inpainting:
        """``(B, C, H, W)`` source in [0, 1] + keypoints -> the frame with the driving pose."""
        return self.generate(source, self.refine_motion(source, self.motion(source, kp_source, kp_driving, bg_param)))
