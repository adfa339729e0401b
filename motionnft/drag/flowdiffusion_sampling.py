"""Editing with FlowDiffusion: the paper's two-scale guidance over a diffusers scheduler.

Each step runs the UNet on three copies of the latent in one batch:

    ε_u    : image and flow conditions zeroed (unconditional)
    ε_img  : the source image latent, flow zeroed
    ε_flow : the source image latent and the flow

and combines them as ``ε = ε_u + s_img (ε_img − ε_u) + s_flow (ε_flow − ε_img)`` (InstantDrag,
§3.2; InstructPix2Pix's two-scale guidance with the flow in place of text).

The scheduler only does the timestep maths (:func:`make_scheduler`). The default is DDIM
with η = 0: SD 1.5's ε-prediction sampler, deterministic given the starting noise (so an
edit is reproducible from its seed) and good at 20 steps. Euler (``EulerDiscreteScheduler``)
works as well; any diffusers scheduler with ``set_timesteps``/``scale_model_input``/``step``
and ε-prediction does.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from .flowdiffusion import LATENT_CHANNELS, FlowDiffusion, FlowDiffusionConfig
from .flowdiffusion_conditioning import Codec, conditions

SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
"""SD 1.5's noise schedule (its ``scheduler_config.json``); training and sampling share it."""

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "ddpm": DDPMScheduler}

Progress = Callable[[int, int], None]
"""Called as ``progress(steps_done, steps_total)`` after every step; raise inside it to cancel."""


def make_scheduler(kind: str = "ddim", **overrides):
    """A diffusers scheduler on SD 1.5's schedule: ``"ddim"`` (sampling, η = 0, no clipping),
    ``"euler"`` (sampling) or ``"ddpm"`` (training's ``add_noise``)."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler: expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
    config = dict(SD15_SCHEDULER, **overrides)
    if kind == "ddim":
        config.setdefault("clip_sample", False)
        config.setdefault("set_alpha_to_one", False)
    if kind == "ddpm":
        config.setdefault("clip_sample", False)
    return SCHEDULERS[kind](**config)


def combine_guidance(eps_uncond: torch.Tensor, eps_image: torch.Tensor, eps_flow: torch.Tensor,
                     s_img: float = 1.5, s_flow: float = 1.5) -> torch.Tensor:
    """``ε_u + s_img (ε_img − ε_u) + s_flow (ε_flow − ε_img)``, all ``(B, 4, h, w)``.

    With ``s_img = s_flow = 1`` this is ``ε_flow`` (plain conditional sampling).

    >>> combine_guidance(torch.zeros(1), torch.ones(1), 3 * torch.ones(1), 1.5, 2.0)
    tensor([5.5000])
    """
    return eps_uncond + s_img * (eps_image - eps_uncond) + s_flow * (eps_flow - eps_image)


_ALPHAS_CUMPROD: torch.Tensor | None = None


def noise_prediction(prediction: torch.Tensor, latents: torch.Tensor, timestep: torch.Tensor,
                     prediction_type: str = "epsilon") -> torch.Tensor:
    """The noise ε that a model output means, on SD 1.5's schedule.

    ``"epsilon"``: the output itself. ``"v_prediction"``: ``ε = √(1−ᾱ_t) x_t + √ᾱ_t v`` for the
    variance-preserving latent ``x_t`` (what the UNet reads; Euler's ``scale_model_input`` gives it
    too). The map is affine in the output with the same ``x_t`` for the three guidance passes and
    the guidance weights sum to 1, so guiding ε is guiding v.
    """
    if prediction_type == "epsilon":
        return prediction
    if prediction_type != "v_prediction":
        raise ValueError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {prediction_type!r}")
    global _ALPHAS_CUMPROD
    if _ALPHAS_CUMPROD is None:
        _ALPHAS_CUMPROD = make_scheduler("ddpm").alphas_cumprod.float()
    index = torch.as_tensor(timestep).float().round().long().clamp(0, len(_ALPHAS_CUMPROD) - 1).cpu()
    alpha_bar = _ALPHAS_CUMPROD[index].to(prediction.device).reshape(-1, *([1] * (prediction.ndim - 1)))
    return (1 - alpha_bar).sqrt() * latents.to(prediction.dtype) + alpha_bar.sqrt() * prediction


def guided_noise(model: FlowDiffusion, latents: torch.Tensor, timestep: torch.Tensor, image_latents: torch.Tensor,
                 flow: torch.Tensor, s_img: float, s_flow: float) -> torch.Tensor:
    """One guided noise prediction ``(B, 4, h, w)``: the three passes in one batch of ``3B``
    (a v-prediction model's outputs converted to ε first: :func:`noise_prediction`)."""
    zeros_image, zeros_flow = torch.zeros_like(image_latents), torch.zeros_like(flow)
    batch = latents.repeat(3, 1, 1, 1)
    eps = model(batch, timestep, torch.cat((zeros_image, image_latents, image_latents)),
                torch.cat((zeros_flow, zeros_flow, flow)))
    eps = noise_prediction(eps.float(), batch.float(), timestep, getattr(model, "prediction_type", "epsilon"))
    eps_uncond, eps_image, eps_flow = eps.chunk(3)
    return combine_guidance(eps_uncond, eps_image, eps_flow, s_img, s_flow)


@torch.no_grad()
def flowdiffusion_edit(model: FlowDiffusion, scheduler, image: torch.Tensor, flow: torch.Tensor, *, codec: Codec,
                       steps: int = FlowDiffusionConfig.steps, s_img: float = FlowDiffusionConfig.s_img,
                       s_flow: float = FlowDiffusionConfig.s_flow, generator: torch.Generator | None = None,
                       progress: Progress | None = None) -> torch.Tensor:
    """Edit ``image`` so that its content moves along ``flow``.

    Args:
        model: the FlowDiffusion network.
        scheduler: a diffusers ε-prediction scheduler (:func:`make_scheduler`); its timesteps are set here.
        image: ``(B, 3, H, W)`` source images in [0, 1].
        flow: ``(1 or B, 2, H, W)`` in pixels of the source, source -> wanted result.
        codec: images <-> latents (:mod:`.flowdiffusion_conditioning`).
        steps, s_img, s_flow: denoising steps and the two guidance scales (paper: 20, 1.5, 1.5).
        generator: draws the starting noise (CPU generator: the same seed gives the same edit anywhere).
        progress: ``progress(done, steps)`` after each step; an exception in it cancels the edit.
    Returns:
        ``(B, 3, H', W')`` in [0, 1] (the codec's decoding; ``H' = H`` for a codec that tiles the image).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
    if flow.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"flow: expected a batch of 1 or {image.shape[0]}, got {tuple(flow.shape)}")
    parameter = next(model.parameters())
    image_latents, flow_cond = conditions(codec, image.to(parameter.device), flow.to(parameter.device))
    image_latents = image_latents.expand(image.shape[0], -1, -1, -1).to(parameter.dtype)
    flow_cond = flow_cond.expand(image.shape[0], -1, -1, -1).to(parameter.dtype)
    shape = (image.shape[0], LATENT_CHANNELS, *image_latents.shape[-2:])
    # Noise drawn on the CPU in float32, so a seed means the same edit on every device.
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(parameter.device)
    scheduler.set_timesteps(steps, device=parameter.device)
    latents = latents * scheduler.init_noise_sigma
    for index, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep).to(parameter.dtype)
        eps = guided_noise(model, model_input, timestep, image_latents, flow_cond, s_img, s_flow)
        latents = scheduler.step(eps, timestep, latents).prev_sample.float()
        if progress is not None:
            progress(index + 1, len(scheduler.timesteps))
    return codec.decode(latents.to(parameter.dtype)).float().clamp(0, 1)


def edit_at_working_size(model: FlowDiffusion, image: torch.Tensor, flow: torch.Tensor, *, codec: Codec, size: int,
                         steps: int = FlowDiffusionConfig.steps, s_img: float = FlowDiffusionConfig.s_img,
                         s_flow: float = FlowDiffusionConfig.s_flow, seed: int = 0, scheduler: str = "ddim",
                         progress: Progress | None = None) -> torch.Tensor:
    """FlowDiffusion's edit of an image of any size, as ``motionnft drag`` and the FlowDiffusion Edit
    node make it.

    ``image`` ``(B, 3, H, W)`` and ``flow`` ``(1 or B, 2, H, W)`` (pixels) are resized to the square
    working size ``size`` the model was trained at (the aspect is not kept: the trainer resizes its
    pairs to that square too; the flow's vectors are rescaled per axis), edited by
    :func:`flowdiffusion_edit` from the noise of ``seed`` (a CPU generator), and the result is
    resized back: ``(B, 3, H, W)`` in [0, 1].
    """
    from ..flow.warp import resize_flow
    from ..image import resize_image

    if size < 1:
        raise ValueError(f"size: expected a working size >= 1 pixel, got {size}")
    height, width = image.shape[-2:]
    result = flowdiffusion_edit(model, make_scheduler(scheduler), resize_image(image, (size, size)),
                                resize_flow(flow, (size, size)), codec=codec, steps=steps, s_img=s_img,
                                s_flow=s_flow, generator=torch.Generator().manual_seed(seed), progress=progress)
    return resize_image(result, (height, width)).clamp(0, 1)
