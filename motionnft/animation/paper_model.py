"""The feature-decoupling paper's model: TPSMM + the Swin motion-flow optimiser + identity/motion
decoupling with motion attention, each part switchable for the paper's ablation.

``AnimationModelConfig(motion_optimization=False, decoupling=False)`` has exactly TPSMM's
parameters (official checkpoints load into it); each switch adds one module under its own
name (``motion_optimizer``, ``decoupling``), so switching a part off removes its parameters.
Both added parts start as the identity (zero-initialised outputs): a fresh paper model with
TPSMM's weights computes TPSMM's frames.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from .config import PRESETS, AVDConfig, DenseMotionConfig, InpaintingConfig, TPSMMConfig
from .decoupling import DecouplingConfig, FeatureDecoupling
from .dense_motion import DenseMotion
from .inpainting import Inpainting
from .model import TPSMM
from .motion_optimization import MotionOptimizationConfig, MotionOptimizer

PAPER_NETWORKS = ("motion_optimizer", "decoupling")
"""The added networks' names (top-level keys of the model's state dict, beside :data:`.model.NETWORKS`)."""


@dataclass(frozen=True)
class AnimationModelConfig:
    """TPSMM's architecture plus the paper's switches and sizes.

    Attributes:
        tpsmm: the base (:class:`.config.TPSMMConfig`).
        motion_optimization: add the Swin motion-flow optimiser.
        decoupling: add the identity/motion bases and the motion attention.
        optimizer, decoupler: their sizes.
    """

    tpsmm: TPSMMConfig = field(default_factory=TPSMMConfig)
    motion_optimization: bool = True
    decoupling: bool = True
    optimizer: MotionOptimizationConfig = field(default_factory=MotionOptimizationConfig)
    decoupler: DecouplingConfig = field(default_factory=DecouplingConfig)

    @classmethod
    def preset(cls, name: str, motion_optimization: bool = True, decoupling: bool = True) -> "AnimationModelConfig":
        """A TPSMM preset of :data:`.config.PRESETS` with the paper's parts (tiny sizes for ``"tiny"``)."""
        if name not in PRESETS:
            raise ValueError(f"model: expected one of {', '.join(PRESETS)}, got {name!r}")
        small = name == "tiny"
        return cls(PRESETS[name](), motion_optimization, decoupling,
                   MotionOptimizationConfig.tiny() if small else MotionOptimizationConfig(),
                   DecouplingConfig.tiny() if small else DecouplingConfig())

    @property
    def kind(self) -> str:
        """``tpsmm``, ``paper``, ``paper-no-decoupling`` or ``paper-no-motion-optimization``."""
        if self.motion_optimization and self.decoupling:
            return "paper"
        if self.motion_optimization:
            return "paper-no-decoupling"
        return "paper-no-motion-optimization" if self.decoupling else "tpsmm"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AnimationModelConfig":
        """Inverse of :meth:`to_json` (lists back to tuples, nested configs rebuilt)."""
        raw = json.loads(text)
        tpsmm = dict(raw["tpsmm"])
        tpsmm["generator"] = InpaintingConfig(**tpsmm["generator"])
        tpsmm["dense_motion"] = DenseMotionConfig(**tpsmm["dense_motion"])
        tpsmm["avd"] = AVDConfig(**tpsmm["avd"])
        optimizer = dict(raw["optimizer"], window_sizes=tuple(raw["optimizer"]["window_sizes"]))
        return cls(TPSMMConfig(**tpsmm), bool(raw["motion_optimization"]), bool(raw["decoupling"]),
                   MotionOptimizationConfig(**optimizer), DecouplingConfig(**raw["decoupler"]))


def deepest_width(config: TPSMMConfig) -> int:
    """Channels of the generator's deepest encoder map (512 in the official presets)."""
    generator = config.generator
    return min(generator.max_features, generator.block_expansion * 2**generator.num_down_blocks)


class DecoupledTPSMM(TPSMM):
    """TPSMM with the paper's parts; a :class:`.model.TPSMM` everywhere one is taken (animate, losses).

    ``config`` stays the :class:`.config.TPSMMConfig` (what the TPSMM code reads);
    ``model_config`` is the whole :class:`AnimationModelConfig`.

    Example:
        >>> model = DecoupledTPSMM(AnimationModelConfig.preset("tiny")).eval()
        >>> source = torch.rand(1, 3, 64, 64)
        >>> kp = model.kp_detector(source)
        >>> model(source, kp, kp).prediction.shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, config: AnimationModelConfig = AnimationModelConfig(), with_avd: bool = False):
        super().__init__(config.tpsmm, with_avd)
        self.model_config = config
        context = self.dense_motion_network.hourglass.out_channels[-1]
        self.motion_optimizer = (MotionOptimizer(config.optimizer, context, config.tpsmm.num_channels)
                                 if config.motion_optimization else None)
        self.decoupling = FeatureDecoupling(config.decoupler, deepest_width(config.tpsmm)) if config.decoupling else None

    def refine_motion(self, source: torch.Tensor, motion: DenseMotion) -> DenseMotion:
        """The coarse deformation refined by the Swin optimiser (masks unchanged)."""
        if self.motion_optimizer is None:
            return motion
        refined = self.motion_optimizer(motion.deformation, motion.features, source)
        return dataclasses.replace(motion, deformation=refined)

    def generate(self, source: torch.Tensor, motion: DenseMotion, warped_features: bool = False) -> Inpainting:
        """The generator, with the decoupled codes fused into its deepest warped features."""
        return self.inpainting_network(source, motion, warped_features, fuse=self.decoupling)


def build_model(config: AnimationModelConfig, with_avd: bool = False) -> TPSMM:
    """A plain :class:`.model.TPSMM` when both parts are off, else a :class:`DecoupledTPSMM`."""
    if not (config.motion_optimization or config.decoupling):
        return TPSMM(config.tpsmm, with_avd)
    return DecoupledTPSMM(config, with_avd)
