"""Image animation: a TPSMM-compatible model (Thin-Plate Spline Motion Model, Zhao & Zhang,
CVPR 2022) that loads the official MIT-licensed checkpoints, and frame-by-frame animation.

One file per network (:mod:`.keypoint_detector`, :mod:`.dense_motion`, :mod:`.inpainting`,
:mod:`.background`, :mod:`.avd`), their blocks (:mod:`.layers`, :mod:`.resnet`), the
transforms (:mod:`.tps`), the configurations (:mod:`.config`), the container
(:mod:`.model`), checkpoint reading (:mod:`.checkpoint`) and inference (:mod:`.animate`).

The feature-decoupling paper's model (:mod:`.paper_model`) adds the Swin motion-flow
optimiser (:mod:`.motion_optimization`) and identity/motion decoupling with motion
attention (:mod:`.decoupling`), each switchable; training adds :mod:`.adversarial`.
"""

from .animate import MODES, animate, convex_hull_area, relative_keypoints
from .avd import AVDNetwork
from .background import BackgroundPredictor
from .checkpoint import (LICENCE, infer_config, load_official_checkpoint, read_animation_config,
                         read_official_state_dicts, save_converted, save_model)
from .config import PRESETS, AVDConfig, DenseMotionConfig, InpaintingConfig, TPSMMConfig
from .dense_motion import DenseMotion, DenseMotionNetwork
from .inpainting import Inpainting, InpaintingNetwork
from .keypoint_detector import KeypointDetector
from .decoupling import DecouplingConfig, FeatureDecoupling, gram_schmidt
from .model import NETWORKS, TPSMM
from .motion_optimization import MotionOptimizationConfig, MotionOptimizer
from .paper_model import AnimationModelConfig, DecoupledTPSMM, build_model
from .tps import affine_grid, apply_tps, deformation_to_flow, fit_tps, tps_grids

__all__ = [
    "TPSMM", "TPSMMConfig", "DenseMotionConfig", "InpaintingConfig", "AVDConfig", "PRESETS", "NETWORKS",
    "KeypointDetector", "DenseMotionNetwork", "DenseMotion", "InpaintingNetwork", "Inpainting",
    "BackgroundPredictor", "AVDNetwork", "fit_tps", "apply_tps", "tps_grids", "affine_grid", "deformation_to_flow",
    "animate", "relative_keypoints", "convex_hull_area", "MODES", "load_official_checkpoint",
    "read_official_state_dicts", "infer_config", "save_converted", "LICENCE",
    "AnimationModelConfig", "DecoupledTPSMM", "build_model", "MotionOptimizationConfig", "MotionOptimizer",
    "DecouplingConfig", "FeatureDecoupling", "gram_schmidt", "save_model", "read_animation_config",
]
