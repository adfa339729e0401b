"""Deterministic, CFG-free rollout samplers for flow-matching models.

Flow convention: ``x_t = (1 − t)·x0 + t·ε``, the model predicts the velocity
``v = ε − x0``, so ``x0̂ = x_t − t·v``. A sampler walks a schedule ``t_0 = 1 > … > t_N = 0``
from pure noise:

- ``"euler"``: ``x ← x + (t_next − t)·v`` (first order).
- ``"dpm2"``: DPM-Solver++(2M) on the x0-prediction with ``α_t = 1 − t``, ``σ_t = t``,
  ``λ = log(α/σ)``. First step and last step are first order (the first has no history;
  the last lands on ``t = 0``, where the update is the x0-prediction itself).
  Multistep update: ``x ← (σ'/σ)·x − α'·(e^{−h} − 1)·D`` with ``h = λ' − λ`` and
  ``D = (1 + 1/(2r))·x0̂ − 1/(2r)·x0̂_prev``, ``r = h_prev / h``.

Both are deterministic given the initial noise: the rollouts of DiffusionNFT draw one
noise per rollout and nothing else.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

SAMPLERS = ("dpm2", "euler")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x, t)`` with ``x`` ``(B, ...)`` and ``t`` ``(B,)`` -> ``(B, ...)``."""


def _log_snr(t: float) -> float:
    """``λ = log((1 − t)/t)``, ``−inf`` at ``t = 1`` and ``+inf`` at ``t = 0``."""
    if t >= 1.0:
        return -math.inf
    if t <= 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


def sample(velocity: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, sampler: str = "dpm2",
           callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Integrate from ``noise`` (``x`` at ``sigmas[0]``) to ``sigmas[-1]`` (normally 0).

    Args:
        velocity: the model, ``velocity(x, t)``; called once per step.
        noise: ``(B, ...)`` float32, the start point.
        sigmas: ``(N + 1,)`` decreasing flow times, ``sigmas[-1] = 0`` for a full sample.
        sampler: ``"dpm2"`` or ``"euler"``.
        callback: ``callback(step, N)`` after each step (progress; may raise to cancel).
    Returns:
        ``x`` at ``sigmas[-1]``, float32, same shape as ``noise``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    times = [float(s) for s in sigmas]
    if len(times) < 2 or any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"sigmas must be a decreasing sequence of at least 2 flow times, got {times}")
    steps = len(times) - 1
    x = noise.float()
    batch = x.shape[0]
    previous_x0 = None
    previous_h = None
    for index in range(steps):
        t, t_next = times[index], times[index + 1]
        v = velocity(x, torch.full((batch,), t, dtype=torch.float32, device=x.device)).float()
        if sampler == "euler":
            x = x + (t_next - t) * v
        else:
            x0 = x - t * v
            if t_next <= 0.0:  # last step: the update is the x0-prediction
                x = x0
            else:
                h = _log_snr(t_next) - _log_snr(t)
                first_order = previous_x0 is None or index == steps - 1 or not math.isfinite(previous_h)
                if first_order:
                    estimate = x0
                else:
                    r = previous_h / h
                    estimate = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous_x0
                alpha_next = 1.0 - t_next
                # e^{-h} = (σ'·α)/(σ·α'), finite at t = 1 where α = 0.
                decay = (t_next * (1.0 - t)) / (t * alpha_next)
                x = (t_next / t) * x - alpha_next * (decay - 1.0) * estimate
                previous_h = h
            previous_x0 = x0
        if callback is not None:
            callback(index + 1, steps)
    return x
