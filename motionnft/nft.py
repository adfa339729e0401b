"""The DiffusionNFT objective as MotionNFT uses it.

- :func:`optimality_rewards`: raw rewards of K rollouts per prompt -> advantages from the
  prompt's mean and the *global* std, clipped, mapped to an optimality probability
  ``r ∈ [0, 1]``; plus the group filters (which prompts train, which are retired).
- :func:`loss_timesteps`: the sampler's own timesteps, shuffled per sample, a fraction kept.
- :func:`nft_loss`: the implicit positive/negative policies ``v± = (1 ∓ β)·v_old ± β·v_θ``
  scored by adaptively weighted x0 errors, and the KL-like anchor to the base model.
- :func:`old_policy_rate`, :func:`ema_decay`, :func:`lerp_`: the old-policy soft update
  and the EMA of the trained weights.

Shapes: latents are ``(B, ...)`` (the trainer uses packed tokens ``(B, N, C)``); flow
times ``t`` are ``(B,)`` with ``x_t = (1 − t)·x0 + t·ε`` and velocity ``v = ε − x0``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

import torch



@dataclass(frozen=True)
class NFTConfig:
    """DiffusionNFT constants, with the values of MotionNFT's released training configuration.

    Every field but ``std_eps`` and ``adaptive_floor`` is also a trainer setting of the same
    name (:class:`~motionnft.training.settings.TrainConfig`), whose default is this one;
    :meth:`from_settings` reads a run's values."""

    beta: float = 1.0
    """β: how far the implicit policies step from the old policy."""
    loss_scale: float = 5.0
    """Multiplier of the policy loss (the reference's ``adv_clip_max``)."""
    kl_weight: float = 0.0001
    """Weight of ``mean‖v_θ − v_ref‖²`` (``v_ref``: the base model, adapters off)."""
    advantage_clip: float = 5.0
    """Advantages are clipped to ``±advantage_clip`` and mapped to ``r = A / (2·clip) + ½``
    (the reference's ``adv_clip_max``)."""
    std_eps: float = 1e-4
    group_std_min: float = 0.05
    """A prompt trains only if its rollouts' reward std exceeds this ..."""
    group_mean_max: float = 0.9
    """... and their mean is below this. A prompt whose std is below ``group_std_min`` and
    whose mean is above ``group_mean_max`` is solved and is dropped from later sampling."""
    timestep_fraction: float = 0.99
    """Of the sampler's N timesteps, ``int(N · fraction)`` (at least 1) train each sample."""
    adaptive_floor: float = 1e-5
    old_rate: float = 0.001
    old_max: float = 0.5
    ema_max_decay: float = 0.9

    @classmethod
    def from_settings(cls, settings) -> "NFTConfig":
        """The constants of a run: every field that is a setting, read from ``settings`` (a
        :class:`~motionnft.training.settings.TrainConfig` or any settings dataclass)."""
        names = {f.name for f in fields(settings)}
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if f.name in names})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"nft beta must be positive, got {self.beta}")
        if self.advantage_clip <= 0:
            raise ValueError(f"nft advantage_clip must be positive, got {self.advantage_clip}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")


@dataclass
class OptimalityRewards:
    """The result of :func:`optimality_rewards` for ``P`` prompts × ``K`` rollouts."""

    reward: torch.Tensor
    """``(P, K)`` optimality probability ``r = clip(A / (2·clip) + 0.5, 0, 1)`` (``A/10 + ½`` at clip 5)."""
    advantage: torch.Tensor
    """``(P, K)`` ``A = clip((raw − mean_prompt) / (std_global + eps), ±clip)``."""
    prompt_mean: torch.Tensor
    """``(P,)``."""
    prompt_std: torch.Tensor
    """``(P,)`` population std of each prompt's rollouts."""
    global_std: float
    """Population std over all ``P·K`` raw rewards."""
    train: torch.Tensor
    """``(P,)`` bool: the prompt's samples enter the loss."""
    retire: torch.Tensor
    """``(P,)`` bool: the prompt is solved; sample it no more."""


def optimality_rewards(raw: torch.Tensor, config: NFTConfig = NFTConfig()) -> OptimalityRewards:
    """Optimality rewards and group filters from raw rewards ``(P, K)`` (one row per prompt).

    ``A = clip((raw − mean_prompt) / (std_global + eps), ±c)`` and
    ``r = clip((A / c) / 2 + ½, 0, 1)`` with ``c = advantage_clip``, as the reference maps
    its clipped advantages: the clip range spans ``r ∈ [0, 1]``.
    """
    if raw.ndim != 2 or raw.shape[1] < 1:
        raise ValueError(f"raw rewards: expected shape (prompts, rollouts), got {tuple(raw.shape)}")
    raw = raw.double()
    mean = raw.mean(dim=1)
    std = raw.std(dim=1, unbiased=False)
    global_std = float(raw.std(unbiased=False))
    advantage = ((raw - mean[:, None]) / (global_std + config.std_eps)).clamp(-config.advantage_clip,
                                                                               config.advantage_clip)
    reward = (advantage / config.advantage_clip / 2 + 0.5).clamp(0, 1)
    train = (std > config.group_std_min) & (mean < config.group_mean_max)
    retire = (std < config.group_std_min) & (mean > config.group_mean_max)
    return OptimalityRewards(reward.float(), advantage.float(), mean.float(), std.float(), global_std, train, retire)


def loss_timesteps(sigmas: torch.Tensor, count: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """For ``count`` samples, the flow times each trains on: ``(count, M)``.

    The sampler's timesteps are ``sigmas[:-1]`` (N values, ``t = 1`` included); each
    sample gets its own shuffle and keeps the first ``M = max(1, int(N · fraction))``.
    """
    times = sigmas[:-1].float()
    keep = max(1, int(len(times) * fraction))
    order = torch.stack([torch.randperm(len(times), generator=generator) for _ in range(count)])
    return times[order[:, :keep]]


@dataclass
class NFTLoss:
    """Per-sample terms (``(B,)``) and the mean total to back-propagate."""

    total: torch.Tensor
    per_sample: torch.Tensor
    policy: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    kl: torch.Tensor


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
             reward: torch.Tensor, v_ref: torch.Tensor | None = None, config: NFTConfig = NFTConfig()) -> NFTLoss:
    """The DiffusionNFT loss of a batch.

    ``v+ = (1 − β)·v_old + β·v_θ``, ``v− = (1 + β)·v_old − β·v_θ``, ``x̂± = x_t − t·v±``;
    ``L± = mean((x̂± − x0)²) / sg(max(mean|x̂± − x0|, floor))`` per sample;
    ``L = scale · (r·L+ + (1 − r)·L−) / β + kl_weight · mean((v_θ − v_ref)²)``.

    Args:
        v_theta: ``(B, ...)`` the trained policy's velocity (with grad).
        v_old: ``(B, ...)`` the old (sampling) policy's velocity (no grad).
        x_t, x0: ``(B, ...)`` the noised sample and the rollout it came from.
        t: ``(B,)`` flow times.
        reward: ``(B,)`` optimality probabilities ``r`` in [0, 1].
        v_ref: ``(B, ...)`` the base model's velocity (adapters disabled) or None (no KL term).
    """
    beta = config.beta
    shape = (-1,) + (1,) * (x0.ndim - 1)
    dims = tuple(range(1, x0.ndim))
    t = t.to(x0.dtype).view(shape)
    v_old = v_old.detach()
    x0 = x0.detach()
    v_positive = (1 - beta) * v_old + beta * v_theta
    v_negative = (1 + beta) * v_old - beta * v_theta

    def weighted_error(v: torch.Tensor) -> torch.Tensor:
        error = x_t - t * v - x0
        weight = error.detach().abs().mean(dim=dims).clamp_min(config.adaptive_floor)
        return error.pow(2).mean(dim=dims) / weight

    positive = weighted_error(v_positive)
    negative = weighted_error(v_negative)
    reward = reward.to(positive.dtype)
    policy = config.loss_scale * (reward * positive + (1 - reward) * negative) / beta
    if v_ref is not None:
        kl = (v_theta - v_ref.detach()).pow(2).mean(dim=dims)
    else:
        kl = torch.zeros_like(policy)
    per_sample = policy + config.kl_weight * kl
    return NFTLoss(per_sample.mean(), per_sample, policy, positive, negative, kl)


def old_policy_rate(step: int, config: NFTConfig = NFTConfig()) -> float:
    """η of the old-policy update after optimiser step ``step``: ``min(rate · step, max)``."""
    return min(config.old_rate * step, config.old_max)


def ema_decay(step: int, config: NFTConfig = NFTConfig()) -> float:
    """EMA decay at optimiser step ``step``: ``min((1 + s) / (10 + s), max)``."""
    return min((1 + step) / (10 + step), config.ema_max_decay)


@torch.no_grad()
def lerp_(targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], keep: float) -> None:
    """In place, ``target ← keep · target + (1 − keep) · source`` for each pair.

    The old-policy update is ``lerp_(old, θ, η)``; the EMA update ``lerp_(ema, θ, decay)``.
    """
    for target, source in zip(targets, sources, strict=True):
        target.mul_(keep).add_(source.detach().to(target.dtype), alpha=1.0 - keep)
