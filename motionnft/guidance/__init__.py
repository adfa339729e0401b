"""Motion Guidance (Geng & Owens, ICLR 2024): flow-guided sampling through a differentiable flow.

A diffusion sampler is steered so that the flow from the source image to the clean
estimate ``x̂0`` matches a target flow, while the moved content keeps the source's
colours::

    L = 3 · mean|F_target − Flow(src, x̂0)| + 100 · mean|M_occ · (src − warp(x̂0, F_target))|
    g = −∇_{x_t} L · 300 · w_i,   ε̂ ← ε̂ − clip(σ_t · g)

for ε-prediction (DDIM) and flow-matching velocity models alike. Pieces, one job each:

- :mod:`~motionnft.guidance.config`: :class:`GuidanceConfig` (paper and project presets),
  which steps are guided;
- :mod:`~motionnft.guidance.energy`: the energy (:class:`MotionEnergy`), its terms and ``M_occ``;
- :mod:`~motionnft.guidance.parameterization`: ``x̂0`` / ``ε̂`` of each prediction, levels,
  re-noising;
- :mod:`~motionnft.guidance.step`: :func:`guide_step` (one corrected prediction, what a
  ComfyUI guider calls per step) and :func:`guided_denoiser` (any denoiser made guided);
- :mod:`~motionnft.guidance.sampler`: :func:`guided_sample` with recursive denoising and
  an edit mask (flow-matching Euler and DDIM);
- :mod:`~motionnft.guidance.flows`: differentiable flow functions (weight-free correlation,
  RAFT / UniMatch adapters);
- :mod:`~motionnft.guidance.models`: the project's ``EditModel`` adapters (:func:`guided_edit`);
- :mod:`~motionnft.guidance.targets`: target flows, edit regions, end-point errors.

Example (the shipped tiny base, CPU)::

    from motionnft.guidance import DEFAULT_STEPS, GuidanceConfig, correlation_flow_fn, guided_edit
    edit = guided_edit(model, condition, noise, (64, 64), DEFAULT_STEPS, source, target_flow,
                       correlation_flow_fn(), GuidanceConfig())
"""

from .config import (CLIP_MODES, COLOUR_WARPS, DEFAULT_STEPS, OFFICIAL, GuidanceConfig, guided_pass_count,
                     guided_steps)
from .energy import MotionEnergy, colour_term, flow_term, normal_tensor, occlusion_mask
from .flows import correlation_flow_fn, estimator_flow_fn
from .models import GuidedEdit, guided_edit, source_tokens, token_decoder, token_mask, velocity_fn
from .parameterization import (PREDICTIONS, Levels, ddim_levels, flow_matching_levels, join_prediction, noised,
                               renoise, split_prediction, step_to)
from .sampler import GuidedSample, guided_sample, guided_sample_ddim, guided_sample_flow
from .step import (GuidedPrediction, autograd_enabled, clip_correction, flow_matching_level, guide_step,
                   guided_denoiser, vp_level)
from .targets import FlowErrors, default_edit_mask, dilate, edit_region, flow_errors, translation_flow

__all__ = [
    "CLIP_MODES", "COLOUR_WARPS", "DEFAULT_STEPS", "FlowErrors", "GuidanceConfig", "GuidedEdit", "GuidedPrediction",
    "GuidedSample",
    "Levels", "MotionEnergy", "OFFICIAL", "PREDICTIONS", "autograd_enabled", "clip_correction", "colour_term",
    "correlation_flow_fn", "ddim_levels", "default_edit_mask", "dilate", "edit_region", "estimator_flow_fn", "flow_errors",
    "flow_matching_level", "flow_matching_levels", "flow_term", "guide_step", "guided_denoiser", "guided_edit",
    "guided_pass_count", "guided_sample", "guided_sample_ddim", "guided_sample_flow", "guided_steps",
    "join_prediction", "noised", "normal_tensor", "occlusion_mask", "renoise", "source_tokens", "split_prediction",
    "step_to", "token_decoder", "token_mask", "translation_flow", "velocity_fn", "vp_level",
]
