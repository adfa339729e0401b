"""The MotionNFT motion-alignment reward and the MAS metric, term by term.

Given the flow of an edit ``Vp = F(input, edited)`` and of its ground truth
``Vg = F(input, target)`` (pixels), both are divided by the image diagonal and compared:

- ``D_mag``  magnitude term, ``mean((|Ṽp − Ṽg| + ε)^q)``
- ``D_dir``  direction term, mean of ``½(1 − cos)`` where the ground truth moves
- ``M_move`` movement regulariser, ``max(0, 0.01 + ½·mean‖Ṽg‖ − mean‖Ṽp‖)``
- ``D = 0.7·D_mag + 0.2·D_dir + 0.1·M_move``, normalised between ``D_min = ε^q`` and 1,
  ``r_cont = 1 − D̃`` and the training reward ``r = round(5·r_cont) / 5``.

Two variants: ``"code"`` (default) is what the released MotionNFT training code computes
and what produced the published numbers; ``"paper"`` is the form printed in the paper
(L1 vector norm inside the magnitude power, magnitude-weighted direction average).

MAS (the benchmark metric) is ``100·(1 − clip((α·D_mag + (1−α)·D_dir − d_min)/(d_max − d_min)))``
with a hard failure (MAS = 0) when the edit moves less than 1 % of the ground truth.
The benchmark's α, d_min, d_max are unpublished; the defaults here are α = 0.7,
d_min = ε^q, d_max = 1 and every report prints them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from .image import check_image_batch, resize_image

if TYPE_CHECKING:  # annotations only: this module computes, the caller builds the estimator
    from .flow.base import FlowEstimator, ProgressCallback

VARIANTS = ("code", "paper")


@dataclass(frozen=True)
class MotionRewardConfig:
    """Constants of the motion reward (defaults: the released MotionNFT code)."""

    variant: str = "code"
    q: float = 0.4
    eps: float = 1e-6
    direction_threshold: float = 0.002
    """τ_m: the ground truth counts as moving where ``‖Ṽg‖`` (diagonal units) exceeds it."""
    weight_magnitude: float = 0.7
    weight_direction: float = 0.2
    weight_movement: float = 0.1
    movement_margin: float = 0.01
    movement_fraction: float = 0.5
    distance_max: float = 1.0
    levels: int = 5
    """The quantised reward takes ``levels + 1`` values ``0, 1/levels, …, 1``."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"reward variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        if not 0 < self.q:
            raise ValueError(f"reward q must be positive, got {self.q}")
        if not 0 < self.eps < 1:
            raise ValueError(f"reward eps must be in (0, 1), got {self.eps}")
        if self.levels < 1:
            raise ValueError(f"reward levels must be >= 1, got {self.levels}")
        if self.distance_max <= self.distance_min:
            raise ValueError(f"distance_max {self.distance_max} must exceed D_min {self.distance_min:.6g}")

    @property
    def distance_min(self) -> float:
        """``D_min = ε^q``: the magnitude term of two identical flows (≈ 0.00398)."""
        return self.eps**self.q


DEFAULT_REWARD_CONFIG = MotionRewardConfig()


class _DMinOfReward(float):
    """The default :attr:`MASConfig.d_min`: a float (``ε^q`` of the default reward config,
    ≈ 0.00398) that also says "``D_min`` of the reward config MAS is computed with"
    (:meth:`MASConfig.for_reward`), so a changed ``eps`` or ``q`` moves it too."""

    __slots__ = ()


D_MIN_OF_REWARD = _DMinOfReward(DEFAULT_REWARD_CONFIG.distance_min)


@dataclass(frozen=True)
class MASConfig:
    """Constants of the Motion Alignment Score; MAS figures must be printed with them.

    ``d_min`` defaults to ``D_min = ε^q`` of the reward config the score is computed with
    (every function here resolves it with :meth:`for_reward`; results carry the resolved
    config); a number given explicitly is kept.
    """

    alpha: float = 0.7
    d_min: float = D_MIN_OF_REWARD
    d_max: float = 1.0
    hard_failure_ratio: float = 0.01
    """MAS is 0 when ``mean‖Vp‖ / mean‖Vg‖`` is below this (the edit barely moves)."""

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"MAS alpha must be in [0, 1], got {self.alpha}")
        if self.d_max <= self.d_min:
            raise ValueError(f"MAS d_max {self.d_max} must exceed d_min {self.d_min}")

    @property
    def d_min_from_reward(self) -> bool:
        """True while ``d_min`` is the default, i.e. follows the reward config's ``ε^q``."""
        return isinstance(self.d_min, _DMinOfReward)

    def for_reward(self, reward: MotionRewardConfig) -> "MASConfig":
        """This config with the default ``d_min`` replaced by ``reward.distance_min``
        (``ε^q`` of ``reward``); unchanged when ``d_min`` was given."""
        return replace(self, d_min=reward.distance_min) if self.d_min_from_reward else self

    def describe(self) -> str:
        return (
            f"MAS constants: alpha={self.alpha:g}, d_min={self.d_min:.6g}, d_max={self.d_max:g}, "
            f"hard failure below {self.hard_failure_ratio:g}x the ground-truth motion"
        )


@dataclass
class MotionTerms:
    """The reward's terms for a batch; per-pixel maps are ``(B, H, W)``, the rest ``(B,)``."""

    magnitude: torch.Tensor
    """D_mag."""
    direction: torch.Tensor
    """D_dir."""
    movement: torch.Tensor
    """M_move."""
    magnitude_map: torch.Tensor
    """Per-pixel ``(|ΔṼ| + ε)^q`` (averaged over x and y in the code variant)."""
    direction_map: torch.Tensor
    """Per-pixel direction error ``½(1 − cos)`` in [0, 1] (defined everywhere)."""
    direction_weight: torch.Tensor
    """Per-pixel weight of ``direction_map`` in D_dir (the 0/1 mask in the code variant)."""
    motion_edit: torch.Tensor
    """mean ``‖Ṽp‖`` (diagonal units)."""
    motion_target: torch.Tensor
    """mean ``‖Ṽg‖`` (diagonal units)."""


def _check_flows(flow_edit: torch.Tensor, flow_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, flow in (("flow_edit", flow_edit), ("flow_target", flow_target)):
        if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
            shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
            raise ValueError(f"{name}: expected a flow of shape (B, 2, H, W) in pixels, got {shape}")
    if flow_edit.shape[-2:] != flow_target.shape[-2:]:
        raise ValueError(
            f"flow_edit is {tuple(flow_edit.shape[-2:])} but flow_target is {tuple(flow_target.shape[-2:])} (H, W)"
        )
    if flow_edit.shape[0] != flow_target.shape[0]:
        if flow_target.shape[0] == 1:
            flow_target = flow_target.expand_as(flow_edit)
        elif flow_edit.shape[0] == 1:
            flow_edit = flow_edit.expand_as(flow_target)
        else:
            raise ValueError(
                f"flow_edit has a batch of {flow_edit.shape[0]} and flow_target {flow_target.shape[0]}: "
                "expected equal sizes or 1 on one side"
            )
    dtype = torch.float64 if torch.float64 in (flow_edit.dtype, flow_target.dtype) else torch.float32
    return flow_edit.to(dtype), flow_target.to(dtype)


def motion_terms(
    flow_edit: torch.Tensor, flow_target: torch.Tensor, config: MotionRewardConfig = DEFAULT_REWARD_CONFIG
) -> MotionTerms:
    """D_mag, D_dir, M_move and their per-pixel maps, batched and differentiable.

    Args:
        flow_edit: ``(B, 2, H, W)`` flow input -> edited, pixels.
        flow_target: ``(B, 2, H, W)`` flow input -> ground truth, pixels (a batch of 1
            broadcasts).
    """
    flow_edit, flow_target = _check_flows(flow_edit, flow_target)
    height, width = flow_edit.shape[-2:]
    diagonal = math.sqrt(height * height + width * width)
    edit = flow_edit / diagonal
    target = flow_target / diagonal
    eps, q = config.eps, config.q

    difference = (edit - target).abs()
    if config.variant == "code":
        magnitude_map = (difference + eps).pow(q).mean(dim=1)
    else:
        magnitude_map = (difference.sum(dim=1) + eps).pow(q)
    magnitude = magnitude_map.mean(dim=(1, 2))

    norm_edit = torch.linalg.vector_norm(edit, dim=1)
    norm_target = torch.linalg.vector_norm(target, dim=1)
    unit_edit = edit / norm_edit.clamp_min(eps).unsqueeze(1)
    unit_target = target / norm_target.clamp_min(eps).unsqueeze(1)
    cosine = (unit_edit * unit_target).sum(dim=1).clamp(-1.0, 1.0)
    direction_map = 0.5 * (1.0 - cosine).clamp(0.0, 2.0)
    moving = (norm_target > config.direction_threshold).to(edit.dtype)
    if config.variant == "code":
        direction_weight = moving
        direction = (direction_map * moving).sum(dim=(1, 2)) / moving.sum(dim=(1, 2)).clamp_min(1.0)
    else:
        peak = norm_target.amax(dim=(1, 2), keepdim=True)
        direction_weight = norm_target / (peak + eps) * moving
        direction = (direction_map * direction_weight).sum(dim=(1, 2)) / (direction_weight.sum(dim=(1, 2)) + eps)

    motion_edit = norm_edit.mean(dim=(1, 2))
    motion_target = norm_target.mean(dim=(1, 2))
    movement = (config.movement_margin + config.movement_fraction * motion_target - motion_edit).clamp_min(0.0)
    return MotionTerms(
        magnitude=magnitude,
        direction=direction,
        movement=movement,
        magnitude_map=magnitude_map,
        direction_map=direction_map,
        direction_weight=direction_weight,
        motion_edit=motion_edit,
        motion_target=motion_target,
    )


@dataclass
class MASResult:
    """Motion Alignment Score for a batch (all ``(B,)``)."""

    score: torch.Tensor
    """MAS in [0, 100]."""
    distance: torch.Tensor
    """``D_ovl = α·D_mag + (1 − α)·D_dir``."""
    hard_failure: torch.Tensor
    """True where the edit moved less than ``hard_failure_ratio`` of the ground truth."""
    movement_ratio: torch.Tensor
    """``mean‖Vp‖ / mean‖Vg‖``; +inf where the ground truth does not move at all."""
    config: MASConfig = field(default_factory=MASConfig)
    """The constants used (``d_min`` resolved)."""


def mas_from_terms(terms: MotionTerms, config: MASConfig = MASConfig(),
                   reward_config: MotionRewardConfig = DEFAULT_REWARD_CONFIG) -> MASResult:
    """MAS from already computed terms (see :func:`motion_alignment_score`).

    ``reward_config`` is the config the terms were computed with; the default ``d_min`` is
    its ``ε^q``.
    """
    config = config.for_reward(reward_config)
    distance = config.alpha * terms.magnitude + (1.0 - config.alpha) * terms.direction
    normalised = ((distance - config.d_min) / (config.d_max - config.d_min)).clamp(0.0, 1.0)
    target_moves = terms.motion_target > 0
    ratio = torch.where(
        target_moves,
        terms.motion_edit / terms.motion_target.clamp_min(torch.finfo(terms.motion_target.dtype).tiny),
        torch.full_like(terms.motion_edit, math.inf),
    )
    # A ground truth without any motion asks for none, so it cannot be failed by not moving.
    hard_failure = target_moves & (ratio < config.hard_failure_ratio)
    score = torch.where(hard_failure, torch.zeros_like(normalised), 100.0 * (1.0 - normalised))
    return MASResult(score=score, distance=distance, hard_failure=hard_failure, movement_ratio=ratio, config=config)


def motion_alignment_score(
    flow_edit: torch.Tensor,
    flow_target: torch.Tensor,
    config: MASConfig = MASConfig(),
    terms_config: MotionRewardConfig = DEFAULT_REWARD_CONFIG,
) -> MASResult:
    """MAS of edits against ground truths from their flows ``(B, 2, H, W)`` (pixels)."""
    return mas_from_terms(motion_terms(flow_edit, flow_target, terms_config), config, terms_config)


@dataclass
class MotionReward:
    """Everything the motion reward computed for a batch."""

    terms: MotionTerms
    distance: torch.Tensor
    """``D = w_mag·D_mag + w_dir·D_dir + w_move·M_move``, ``(B,)``."""
    reward_continuous: torch.Tensor
    """``r_cont = 1 − clip((D − D_min)/(D_max − D_min), 0, 1)``, ``(B,)``."""
    reward: torch.Tensor
    """``round(levels · r_cont) / levels``, ``(B,)`` — the training reward."""
    mas: MASResult
    config: MotionRewardConfig
    flow_edit: torch.Tensor | None = None
    flow_target: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def records(self) -> list[dict]:
        """One plain ``dict`` of floats per sample (for JSON, CSV, logs)."""
        out = []
        for i in range(len(self)):
            out.append(
                {
                    "d_mag": float(self.terms.magnitude[i]),
                    "d_dir": float(self.terms.direction[i]),
                    "m_move": float(self.terms.movement[i]),
                    "combined": float(self.distance[i]),
                    "reward_continuous": float(self.reward_continuous[i]),
                    "reward": float(self.reward[i]),
                    "mas": float(self.mas.score[i]),
                    "mas_hard_failure": bool(self.mas.hard_failure[i]),
                    "motion_edit": float(self.terms.motion_edit[i]),
                    "motion_target": float(self.terms.motion_target[i]),
                }
            )
        return out

    def constants(self) -> dict:
        """The constants used, to print next to every figure."""
        return {"reward": asdict(self.config), "mas": asdict(self.mas.config)}


def motion_reward_from_flows(
    flow_edit: torch.Tensor,
    flow_target: torch.Tensor,
    config: MotionRewardConfig = DEFAULT_REWARD_CONFIG,
    mas_config: MASConfig = MASConfig(),
) -> MotionReward:
    """The motion reward (and MAS) from the two flows ``(B, 2, H, W)`` in pixels."""
    terms = motion_terms(flow_edit, flow_target, config)
    distance = (
        config.weight_magnitude * terms.magnitude
        + config.weight_direction * terms.direction
        + config.weight_movement * terms.movement
    )
    normalised = ((distance - config.distance_min) / (config.distance_max - config.distance_min)).clamp(0.0, 1.0)
    reward_continuous = 1.0 - normalised
    # torch.round rounds halves to even, as the reference implementation does.
    reward = torch.round(config.levels * reward_continuous).clamp(0, config.levels) / config.levels
    return MotionReward(
        terms=terms,
        distance=distance,
        reward_continuous=reward_continuous,
        reward=reward,
        mas=mas_from_terms(terms, mas_config, config),
        config=config,
        flow_edit=flow_edit,
        flow_target=flow_target,
    )


def motion_reward(
    input_image: torch.Tensor,
    edited_image: torch.Tensor,
    target_image: torch.Tensor,
    estimator: FlowEstimator,
    config: MotionRewardConfig = DEFAULT_REWARD_CONFIG,
    mas_config: MASConfig = MASConfig(),
    flow_target: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
) -> MotionReward:
    """Score edits against ground-truth targets with the motion reward.

    The input and target images are resized (bilinear) to the edited image's size, as the
    reference does, then ``Vp = F(input, edited)`` and ``Vg = F(input, target)`` with the
    given estimator; the rest is :func:`motion_reward_from_flows`.

    Args:
        input_image: ``(B, 3, H0, W0)`` or a batch of 1, in [0, 1].
        edited_image: ``(B, 3, H, W)`` edits to score.
        target_image: ``(B, 3, Hg, Wg)`` or a batch of 1: the ground-truth targets.
        estimator: the flow, called as ``estimator(source, target, progress)`` on
            ``(N, 3, H, W)`` batches in [0, 1] and returning ``(N, 2, H, W)`` in pixels: a
            :class:`~motionnft.flow.FlowEstimator`, e.g. ``create_estimator("dis", "medium")``
            or ``create_estimator("unimatch")`` (the paper's). Required: which flow scores
            the edits is the caller's choice, and building one may load weights.
        flow_target: precomputed ``Vg`` at the edited size (skips its estimation, e.g.
            for several rollouts of one prompt).
        progress: ``progress(done, total)`` over the flow pairs.

    Raises:
        TypeError: ``estimator`` is not callable (e.g. a backend name or None).
    """
    if not callable(estimator):
        raise TypeError(
            "estimator: expected a flow estimator, callable as estimator(source, target, progress) -> "
            "(B, 2, H, W) flow in pixels (e.g. motionnft.flow.create_estimator('dis', 'medium')), "
            f"got {estimator!r}"
        )
    edited_image = check_image_batch("edited_image", edited_image)
    input_image = check_image_batch("input_image", input_image)
    target_image = check_image_batch("target_image", target_image)
    batch = edited_image.shape[0]
    for name, image in (("input_image", input_image), ("target_image", target_image)):
        if image.shape[0] not in (1, batch):
            raise ValueError(
                f"{name} has a batch of {image.shape[0]} but edited_image has {batch}: "
                "expected the same size or a batch of 1"
            )
    size = tuple(edited_image.shape[-2:])
    device = edited_image.device
    input_image = resize_image(input_image.to(device).float(), size).expand(batch, -1, -1, -1)
    edited_image = edited_image.float()
    if flow_target is None:
        target_image = resize_image(target_image.to(device).float(), size).expand(batch, -1, -1, -1)
        flows = estimator(
            torch.cat((input_image, input_image)), torch.cat((edited_image, target_image)), progress
        )
        flow_edit, flow_target = flows[:batch], flows[batch:]
    else:
        flow_edit = estimator(input_image, edited_image, progress)
    return motion_reward_from_flows(flow_edit, flow_target, config, mas_config)
