"""Noise levels and model outputs: the clean estimate, the noise estimate, and back.

Every schedule here is ``x_t = α_t · x0 + σ_t · ε``:

- flow matching (FLUX, Qwen-Image, this project's ``EditModel``): ``α = 1 − t``, ``σ = t``;
- variance preserving (Stable Diffusion, DDIM): ``α = sqrt(ᾱ)``, ``σ = sqrt(1 − ᾱ)``;
- k-diffusion / ComfyUI ε models: ``α = 1``, ``σ = sigma`` (inputs scaled inside the model).

Predictions (what a denoiser returns):

- ``"epsilon"``: ``ε̂``;  ``x̂0 = (x_t − σ ε̂) / α``.
- ``"velocity"`` (flow matching only, ``α + σ = 1``): ``v̂ = ε̂ − x̂0``;
  ``x̂0 = x_t − σ v̂``, ``ε̂ = x_t + α v̂``.
- ``"x0"`` (ComfyUI's ``denoised``): ``x̂0``;  ``ε̂ = (x_t − α x̂0) / σ``.

Guidance is applied to the noise estimate (classifier guidance: the score
``−ε̂/σ`` gains ``g``, so ``ε̂ ← ε̂ − σ g``) and converted back to the model's
prediction, so one code path serves all three.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PREDICTIONS = ("epsilon", "velocity", "x0")


def _column(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``(B,)`` level as a tensor broadcasting over ``like`` ``(B, ...)``."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: expected one of {', '.join(PREDICTIONS)}")


def split_prediction(output: torch.Tensor, x_t: torch.Tensor, alpha, sigma,
                     prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂0, ε̂)`` from a denoiser's ``output`` at ``x_t`` (both ``(B, ...)``, the latent layout).

    ``alpha``, ``sigma``: floats or ``(B,)`` tensors of the level (see the module docstring).

    >>> x, v = torch.ones(1, 4), torch.full((1, 4), 0.5)
    >>> split_prediction(v, x, 0.6, 0.4, "velocity")[0]   # x0 = x − t·v
    tensor([[0.8000, 0.8000, 0.8000, 0.8000]])
    """
    _check_prediction(prediction)
    a, s = _column(alpha, x_t), _column(sigma, x_t)
    if prediction == "epsilon":
        return (x_t - s * output) / a, output
    if prediction == "velocity":
        return x_t - s * output, x_t + a * output
    return output, (x_t - a * output) / s


def join_prediction(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, prediction: str) -> torch.Tensor:
    """The model output of ``prediction`` for the pair ``(x̂0, ε̂)``: inverse of :func:`split_prediction`."""
    _check_prediction(prediction)
    if prediction == "epsilon":
        return eps
    if prediction == "velocity":
        return eps - x0
    return x0


def noised(x0: torch.Tensor, noise: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """``α · x0 + σ · noise``: a clean latent brought to a level (the forward process).

    With ``x0`` the source's latent this is the "inverted latent" an edit mask keeps
    outside the edit: for flow matching ``(1 − t) · x0 + t · noise``.
    """
    return _column(alpha, x0) * x0 + _column(sigma, x0) * noise


def renoise(x_next: torch.Tensor, noise: torch.Tensor, alpha, sigma, alpha_next, sigma_next) -> torch.Tensor:
    """Take a latent at the lower level ``(α', σ')`` back up to ``(α, σ)`` with fresh ``noise``.

    ``x = (α/α') · x' + sqrt(σ² − (α/α')² σ'²) · z``: the forward process between the two
    levels (for DDIM ``sqrt(ᾱ_t/ᾱ_{t−1}) x' + sqrt(1 − ᾱ_t/ᾱ_{t−1}) z``, the paper's
    recursive-denoising step; for flow matching ``((1 − t)/(1 − t')) x' + ...``).
    """
    ratio = _column(alpha, x_next) / _column(alpha_next, x_next)
    variance = _column(sigma, x_next) ** 2 - (ratio * _column(sigma_next, x_next)) ** 2
    return ratio * x_next + variance.clamp_min(0).sqrt() * noise


def step_to(x0: torch.Tensor, eps: torch.Tensor, alpha_next, sigma_next) -> torch.Tensor:
    """The deterministic DDIM step to ``(α', σ')``: ``α' x̂0 + σ' ε̂``.

    For flow matching this is exactly the Euler step ``x + (t' − t) v̂``.
    """
    return noised(x0, eps, alpha_next, sigma_next)


@dataclass(frozen=True)
class Levels:
    """A sampler's schedule: what the denoiser is told and the level it stands for.

    Attributes:
        times: ``(N + 1,)`` the denoiser's time argument at each level (flow time ``t``,
            a DDPM timestep, or a ComfyUI sigma), from the noisiest to the clean end.
        alpha, sigma: ``(N + 1,)`` float64, ``x = α x0 + σ ε`` at each level; the last level
            is normally clean (``α = 1, σ = 0``).
    """

    times: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor

    def __post_init__(self):
        if not (self.times.ndim == self.alpha.ndim == self.sigma.ndim == 1
                and len(self.times) == len(self.alpha) == len(self.sigma) >= 2):
            raise ValueError("Levels: times, alpha and sigma must be 1-D of one length >= 2, got "
                             f"{tuple(self.times.shape)}, {tuple(self.alpha.shape)}, {tuple(self.sigma.shape)}")
        if not bool((self.sigma[1:] < self.sigma[:-1]).all()):
            raise ValueError(f"Levels: sigma must decrease, got {self.sigma.tolist()}")

    @property
    def steps(self) -> int:
        return len(self.times) - 1


def flow_matching_levels(sigmas: torch.Tensor) -> Levels:
    """Levels of a flow-matching schedule ``t_0 = 1 > … > t_N = 0`` (``EditModel.sigmas``).

    >>> flow_matching_levels(torch.tensor([1.0, 0.5, 0.0])).alpha
    tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
    """
    times = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    return Levels(times, 1.0 - times, times.clone())


def ddim_levels(alphas_cumprod: torch.Tensor, timesteps) -> Levels:
    """Levels of a DDIM schedule over a DDPM model's ``ᾱ`` (``alphas_cumprod`` ``(T,)``).

    Args:
        alphas_cumprod: ``(T,)`` cumulative products of the DDPM alphas.
        timesteps: decreasing DDPM timesteps to visit (e.g. ``[999, 979, …, 19]``); a clean
            final level (``ᾱ = 1``, time ``-1``) is appended.
    """
    bar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
    steps = torch.as_tensor(timesteps, dtype=torch.long).flatten()
    bars = torch.cat((bar[steps], torch.ones(1, dtype=torch.float64)))
    times = torch.cat((steps.to(torch.float64), torch.full((1,), -1.0, dtype=torch.float64)))
    return Levels(times, bars.sqrt(), (1.0 - bars).clamp_min(0).sqrt())
