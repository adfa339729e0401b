"""Guided sampling loops: DDIM (η = 0) over any ``x = α x0 + σ ε`` schedule.

One loop serves both parameterisations, because the deterministic DDIM step
``x' = α' x̂0 + σ' ε̂`` *is* the flow-matching Euler step ``x' = x + (t' − t) v̂`` when
``α = 1 − t, σ = t`` (:mod:`motionnft.guidance.parameterization`):

- :func:`guided_sample_flow`: a velocity model over flow times (``EditModel.sigmas``);
- :func:`guided_sample_ddim`: an ε model over DDPM timesteps and ``ᾱ``;
- :func:`guided_sample`: the loop itself, for any :class:`Levels` and prediction.

Per step ``i`` (``x`` at level ``i``):

1. outside the edit mask, ``x`` is replaced by the source latent brought to level ``i``
   (``α_i x0_src + σ_i n_src``, the "inverted latent"; every pass, as the paper does);
2. on a guided step (:func:`~motionnft.guidance.config.guided_steps`, less any step whose
   ``α < min_alpha``, such as ``t = 1`` of a flow-matching schedule) the prediction is
   :func:`~motionnft.guidance.step.guide_step`'s, else the plain denoiser's;
3. ``x' = α_{i+1} x̂0 + σ_{i+1} ε̂``;
4. recursive denoising: on a guided step, passes ``1 … recursions − 1`` re-noise ``x'`` back
   to level ``i`` (:func:`~motionnft.guidance.parameterization.renoise`) and repeat 1–3; the
   last pass's ``x'`` is kept. A step therefore costs ``recursions`` denoiser calls.

After the last step the outside of the mask is the source latent itself. Nothing is
written to disk; ``callback(step, steps)`` reports progress and may raise to cancel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import GuidanceConfig, guided_steps
from .energy import Energy
from .parameterization import Levels, ddim_levels, flow_matching_levels, noised, renoise, split_prediction, step_to
from .step import DecodeFn, DenoiseFn, guide_step


@dataclass
class GuidedSample:
    """The result of a guided sampling run.

    Attributes:
        x: ``(B, ...)`` the final latents (at the schedule's last level).
        denoiser_calls: denoiser evaluations in all.
        guided_calls: of those, evaluations with a guidance gradient.
        losses: the energy ``(B,)`` at each guided pass, in order.
        terms: each energy term's values ``(B,)`` at each guided pass.
    """

    x: torch.Tensor
    denoiser_calls: int = 0
    guided_calls: int = 0
    losses: list[torch.Tensor] = field(default_factory=list)
    terms: dict[str, list[torch.Tensor]] = field(default_factory=dict)


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal like ``x``, drawn on the CPU from ``generator`` (reproducible on any device)."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def _check_mask(edit_mask: torch.Tensor | None, source_latent: torch.Tensor | None, x: torch.Tensor) -> None:
    if edit_mask is None:
        return
    if source_latent is None:
        raise ValueError("edit_mask needs source_latent (the clean latent kept outside the mask)")
    try:
        torch.broadcast_shapes(edit_mask.shape, x.shape)
        torch.broadcast_shapes(source_latent.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"edit_mask {tuple(edit_mask.shape)} and source_latent {tuple(source_latent.shape)} must "
                         f"broadcast to the latents {tuple(x.shape)}") from None


def guided_sample(denoise_fn: DenoiseFn, noise: torch.Tensor, levels: Levels, prediction: str,
                  decode_fn: DecodeFn | None = None, energy: Energy | None = None,
                  config: GuidanceConfig = GuidanceConfig(), *, edit_mask: torch.Tensor | None = None,
                  source_latent: torch.Tensor | None = None, source_noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None,
                  callback: Callable[[int, int], None] | None = None) -> GuidedSample:
    """Sample from ``noise`` over ``levels`` with Motion Guidance (or none when ``energy`` is None).

    Args:
        denoise_fn: ``denoise_fn(x, time (B,))`` -> prediction ``(B, ...)``.
        noise: ``(B, ...)`` the latents at ``levels``' first level.
        levels: the schedule (:func:`flow_matching_levels`, :func:`ddim_levels`).
        prediction: ``"velocity"``, ``"epsilon"`` or ``"x0"``.
        decode_fn: clean latents -> images ``(B, 3, H, W)`` in [0, 1], differentiable
            (needed with an energy).
        energy: ``energy(images) -> (loss (B,), info)``; None samples unguided (one pass per step).
        config: the guidance settings (scale, clip, recursions, step range).
        edit_mask: float or bool, broadcastable to ``noise``, in the latent layout: 1 inside
            the edit (free), 0 outside (kept from the source). None: no mask. (The paper's
            ``edit_mask`` marks the *kept* region; this one marks the edit.)
        source_latent: clean source latents, broadcastable to ``noise`` (with ``edit_mask``).
        source_noise: the noise of the inverted latent; default ``noise`` (the same start,
            so the outside follows the straight path from the source to ``noise``).
        generator: CPU generator of the recursion noise (None: torch's global one).
        callback: ``callback(step, steps)`` after each step.
    Returns:
        :class:`GuidedSample`.
    """
    if energy is not None and decode_fn is None:
        raise ValueError("guided_sample: an energy needs decode_fn (latents -> images)")
    _check_mask(edit_mask, source_latent, noise)
    steps = levels.steps
    schedule = guided_steps(steps, config) if energy is not None else [False] * steps
    # no guidance (and no recursion) where the clean estimate carries no signal, e.g. t = 1
    schedule = [chosen and float(levels.alpha[i]) >= config.min_alpha for i, chosen in enumerate(schedule)]
    mask = None if edit_mask is None else edit_mask.to(device=noise.device, dtype=torch.float32)
    kept_noise = noise if source_noise is None else source_noise
    result = GuidedSample(noise.float())
    x = noise.float()
    for index in range(steps):
        alpha, sigma = float(levels.alpha[index]), float(levels.sigma[index])
        alpha_next, sigma_next = float(levels.alpha[index + 1]), float(levels.sigma[index + 1])
        time = float(levels.times[index])
        passes = config.recursions if schedule[index] else 1
        for repeat in range(passes):
            if mask is not None:
                inverted = noised(source_latent.to(x), kept_noise.to(x), alpha, sigma)
                x = mask * x + (1 - mask) * inverted
            if schedule[index]:
                guided = guide_step(x, time, alpha, sigma, denoise_fn, decode_fn, energy, config, prediction)
                x0, eps = guided.x0, guided.eps
                result.guided_calls += 1
                result.losses.append(guided.loss)
                for key, value in guided.terms.items():
                    result.terms.setdefault(key, []).append(value)
            else:
                with torch.no_grad():
                    times = torch.full((x.shape[0],), time, dtype=torch.float32, device=x.device)
                    x0, eps = split_prediction(denoise_fn(x, times).float(), x, alpha, sigma, prediction)
            result.denoiser_calls += 1
            x_next = step_to(x0, eps, alpha_next, sigma_next)
            if repeat < passes - 1:
                x = renoise(x_next, _noise_like(x_next, generator), alpha, sigma, alpha_next, sigma_next)
        x = x_next.detach()
        if callback is not None:
            callback(index + 1, steps)
    if mask is not None:
        final = noised(source_latent.to(x), kept_noise.to(x), float(levels.alpha[-1]), float(levels.sigma[-1]))
        x = mask * x + (1 - mask) * final
    result.x = x
    return result


def guided_sample_flow(velocity_fn: DenoiseFn, noise: torch.Tensor, sigmas: torch.Tensor,
                       decode_fn: DecodeFn | None = None, energy: Energy | None = None,
                       config: GuidanceConfig = GuidanceConfig(), **options) -> GuidedSample:
    """Guided Euler sampling of a flow-matching velocity model over flow times ``sigmas``
    (``(N + 1,)`` from 1 to 0, e.g. ``EditModel.sigmas``); ``velocity_fn(x, t (B,))``.

    Without an energy this is :func:`motionnft.sampling.sample` with ``sampler="euler"``.
    ``options``: the keywords of :func:`guided_sample`.
    """
    return guided_sample(velocity_fn, noise, flow_matching_levels(sigmas), "velocity", decode_fn, energy, config,
                         **options)


def guided_sample_ddim(eps_fn: DenoiseFn, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps,
                       decode_fn: DecodeFn | None = None, energy: Energy | None = None,
                       config: GuidanceConfig = GuidanceConfig(), **options) -> GuidedSample:
    """Guided DDIM (η = 0) sampling of an ε model (Stable Diffusion style): ``eps_fn(x, timestep (B,))``
    over the decreasing DDPM ``timesteps`` of ``alphas_cumprod`` ``(T,)``, ending clean.

    ``options``: the keywords of :func:`guided_sample`.
    """
    return guided_sample(eps_fn, noise, ddim_levels(alphas_cumprod, timesteps), "epsilon", decode_fn, energy,
                         config, **options)
