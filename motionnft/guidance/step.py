"""One guided prediction: the energy's gradient turned into a corrected model output.

:func:`guide_step` is what a sampler (or a ComfyUI ``CFGGuider.predict_noise``) calls at
one level. It evaluates the denoiser with autograd on, decodes the clean estimate to
pixels, evaluates the energy, differentiates it with respect to ``x_t``, scales and
clips the result, and corrects the noise estimate (see
:mod:`motionnft.guidance.parameterization`)::

    g = −∇_{x_t} L · scale · weight            (the paper's guidance direction)
    δ = clip(σ_t · g)                          (per sample: L2 norm <= clip, or elementwise)
    ε̂ ← ε̂ − δ,   x̂0 ← (x_t − σ_t ε̂) / α_t     (returned in the model's own prediction)

ComfyUI runs nodes under ``torch.inference_mode()``; :func:`autograd_enabled` leaves it
and ``x_t`` is cloned, so ``guide_step`` works there as it does in plain torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import GuidanceConfig
from .energy import Energy
from .parameterization import _column, join_prediction, split_prediction

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise_fn(x_t, time)``: latents ``(B, ...)`` and the denoiser's time ``(B,)`` -> its
prediction ``(B, ...)`` (ε, velocity or x0; see ``prediction``)."""

DecodeFn = Callable[[torch.Tensor], torch.Tensor]
"""``decode_fn(x0)``: clean latents ``(B, ...)`` -> images ``(B, 3, H, W)`` in [0, 1], differentiable."""


@contextlib.contextmanager
def autograd_enabled():
    """Autograd on, even inside ``torch.inference_mode()`` (as ComfyUI runs nodes)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@dataclass
class GuidedPrediction:
    """What :func:`guide_step` returns (all detached).

    Attributes:
        output: ``(B, ...)`` the corrected prediction, in the model's parameterisation.
        x0: ``(B, ...)`` the corrected clean estimate (latents).
        eps: ``(B, ...)`` the corrected noise estimate.
        loss: ``(B,)`` the energy at the uncorrected clean estimate.
        terms: the energy's info, each ``(B,)``.
        correction: ``(B,)`` L2 norm of the applied ``δ`` per sample.
    """

    output: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    correction: torch.Tensor | None = None


def clip_correction(delta: torch.Tensor, clip: float, mode: str = "norm") -> torch.Tensor:
    """Bound a correction ``(B, ...)``: per-sample L2 norm <= ``clip`` (``"norm"``) or each
    element in ``[−clip, clip]`` (``"abs"``); ``clip = 0`` returns it unchanged.

    >>> clip_correction(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    if clip <= 0:
        return delta
    if mode == "abs":
        return delta.clamp(-clip, clip)
    if mode != "norm":
        raise ValueError(f"clip mode {mode!r}: expected 'norm' or 'abs'")
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (clip / norms).clamp(max=1.0)
    return delta * factor.reshape(-1, *([1] * (delta.ndim - 1)))


def _times(time, x: torch.Tensor) -> torch.Tensor:
    time = torch.as_tensor(time, dtype=torch.float32, device=x.device)
    return time.expand(x.shape[0]) if time.ndim == 0 else time


def guide_step(x_t: torch.Tensor, time, alpha, sigma, denoise_fn: DenoiseFn, decode_fn: DecodeFn,
               energy: Energy, config: GuidanceConfig = GuidanceConfig(), prediction: str = "velocity",
               weight: float = 1.0) -> GuidedPrediction:
    """The denoiser's prediction at ``x_t``, corrected by the energy's gradient.

    Args:
        x_t: ``(B, ...)`` latents at the level ``(alpha, sigma)`` (any layout the
            denoiser and decoder agree on, e.g. packed tokens ``(B, N, C)``).
        time: the denoiser's time argument, a float or ``(B,)``.
        alpha, sigma: the level, ``x_t = α x0 + σ ε`` (floats or ``(B,)``).
        denoise_fn: ``denoise_fn(x_t, time (B,))`` -> prediction ``(B, ...)``.
        decode_fn: clean latents -> images ``(B, 3, H, W)`` in [0, 1], differentiable.
        energy: ``energy(images) -> (loss (B,), info)`` (:class:`~motionnft.guidance.energy.MotionEnergy`).
        config: ``scale``, ``clip``, ``clip_mode``, ``grad_through_model``, ``min_alpha``.
        prediction: ``"velocity"``, ``"epsilon"`` or ``"x0"``.
        weight: this step's schedule weight ``w_i`` (0 skips the energy entirely).
    Returns:
        :class:`GuidedPrediction`; ``output`` has ``x_t``'s shape. With ``weight = 0``,
        ``scale = 0`` or ``α < min_alpha`` the prediction is returned uncorrected
        (the energy is not evaluated; ``loss`` is NaN).
    """
    alpha_min = float(torch.as_tensor(alpha).min())
    active = weight > 0 and config.scale > 0 and alpha_min >= config.min_alpha
    with autograd_enabled():
        # clones are normal tensors even when the inputs were made under inference mode
        x = x_t.detach().clone().float()
        times = _times(time, x).detach().clone()
        alpha = alpha.detach().clone() if isinstance(alpha, torch.Tensor) else alpha
        sigma = sigma.detach().clone() if isinstance(sigma, torch.Tensor) else sigma
        if active and config.grad_through_model:
            x.requires_grad_(True)
            output = denoise_fn(x, times).float()
        else:
            with torch.no_grad():
                output = denoise_fn(x, times).float()
        x0, eps = split_prediction(output, x, alpha, sigma, prediction)
        if not active:
            nan = x.new_full((x.shape[0],), float("nan"))
            return GuidedPrediction(output.detach(), x0.detach(), eps.detach(), nan, {}, x.new_zeros(x.shape[0]))
        if config.grad_through_model:
            loss, terms = energy(decode_fn(x0))
            gradient = torch.autograd.grad(loss.sum(), x)[0]
        else:
            leaf = x0.detach().requires_grad_(True)
            loss, terms = energy(decode_fn(leaf))
            gradient = torch.autograd.grad(loss.sum(), leaf)[0] / _column(alpha, leaf)
    s = _column(sigma, x)
    g = -gradient * (config.scale * weight)
    delta = clip_correction(s * g, config.clip, config.clip_mode)
    eps = (eps - delta).detach()
    x0 = ((x - s * eps) / _column(alpha, x)).detach()
    output = join_prediction(x0, eps, alpha, sigma, prediction).detach()
    return GuidedPrediction(output, x0, eps, loss.detach(), {k: v.detach() for k, v in terms.items()},
                            delta.flatten(1).norm(dim=1))


LevelFn = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
"""``level_fn(time (B,))`` -> ``(alpha (B,), sigma (B,))`` of the denoiser's time argument."""


def flow_matching_level(time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 − t, t)``: the level of flow time ``t`` (FLUX, Qwen-Image, ComfyUI's CONST models)."""
    return 1.0 - time, time


def vp_level(alphas_cumprod: torch.Tensor) -> LevelFn:
    """The level function of a DDPM model: integer timestep ``t`` -> ``(sqrt(ᾱ_t), sqrt(1 − ᾱ_t))``."""
    bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def level(time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = bar.to(time.device)[time.round().long().clamp(0, len(bar) - 1)].float()
        return value.sqrt(), (1.0 - value).clamp_min(0).sqrt()

    return level


def guided_denoiser(denoise_fn: DenoiseFn, decode_fn: DecodeFn, energy: Energy,
                    config: GuidanceConfig = GuidanceConfig(), prediction: str = "velocity",
                    level_fn: LevelFn = flow_matching_level,
                    weight_fn: Callable[[torch.Tensor], float] | None = None) -> DenoiseFn:
    """Turn a denoiser into a guided one with the same signature: ``guided(x_t, time) -> prediction``.

    Each call is one :func:`guide_step` (one denoiser pass with a gradient). Drop it into
    any sampler that calls a denoiser, e.g. ``motionnft.sampling.sample(guided, noise, sigmas)``
    for a velocity model, or ``level_fn=vp_level(alphas_cumprod), prediction="epsilon"`` for
    an ε model. Which steps are guided is ``weight_fn(time) -> w`` (0: plain pass; default 1
    everywhere); recursive denoising is a sampler's job (:func:`motionnft.guidance.sampler.guided_sample`).

    Args:
        denoise_fn: ``denoise_fn(x_t (B, ...), time (B,))`` -> prediction ``(B, ...)``.
        decode_fn, energy, config, prediction: as for :func:`guide_step`.
        level_fn: ``time (B,)`` -> ``(alpha (B,), sigma (B,))``.
        weight_fn: ``time (B,)`` -> schedule weight (float).
    """

    def guided(x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        times = _times(time, x_t)
        alpha, sigma = level_fn(times)
        weight = 1.0 if weight_fn is None else float(weight_fn(times))
        return guide_step(x_t, times, alpha, sigma, denoise_fn, decode_fn, energy, config, prediction,
                          weight).output.to(x_t.dtype)

    return guided
