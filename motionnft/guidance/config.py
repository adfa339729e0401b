"""Settings of Motion Guidance and which sampler steps it guides.

Two presets: :meth:`GuidanceConfig.official` is the paper's recipe (Geng & Owens, ICLR
2024: every one of 500 DDIM steps guided and repeated 10 times, flow weight 3, scale 300,
clip 200); the defaults of :class:`GuidanceConfig` with :data:`DEFAULT_STEPS` sampler steps
are this project's: one guided pass on each step of the last three quarters of a
24-step flow-matching schedule (18 guided passes), with a larger scale and clip so that
the few passes move as far as the paper's many. ``bench/guidance_benchmark.py`` measures
the two against each other (``docs/guidance.md``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

CLIP_MODES = ("norm", "abs")
COLOUR_WARPS = ("target", "estimated")

DEFAULT_STEPS = 24
"""Sampler steps of the project's default recipe (the CLI's and the nodes' default): with
:class:`GuidanceConfig`'s defaults, ``guided_pass_count(DEFAULT_STEPS, GuidanceConfig())`` is 18,
27x fewer guided passes than the benchmark's official-like recipe (50 steps x 10 recursions,
490) at a lower flow error to the target (``docs/guidance.md``)."""

OFFICIAL = dict(flow_weight=3.0, colour_weight=100.0, scale=300.0, clip=200.0, recursions=10, start=0.0, end=1.0)
"""The paper's numbers (:meth:`GuidanceConfig.official`)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """Every number of Motion Guidance. Frozen; checked on creation.

    The defaults are the project's recipe for :data:`DEFAULT_STEPS` (24) flow-matching steps,
    chosen on ``bench/guidance_benchmark.py`` (tiny base, correlation flow; the trials are
    in ``docs/guidance.md``): flow weight 1, colour weight 100, scale 700, clip 400 (norm),
    one pass per guided step, guided range 0.25–1 (steps 6–23 of 24: 18 guided passes).
    Guidance must reach the last steps; with few passes a larger scale and clip than the
    paper's are needed, but not much larger (scale >= 1500, clip >= 700 or no clip turn the
    flow term's gradient adversarial). Scale and clip are in the units of this project's
    energy (means over pixels, [0, 1] images) and latent (norm over all its elements):
    for a much larger latent or another flow network they may need retuning.

    Energy (on the clean estimate decoded to pixels, see :mod:`motionnft.guidance.energy`):

    Attributes:
        flow_weight: weight of the flow term ``mean |F_target − Flow(src, x̂0)|`` (pixels). Paper: 3;
            default 1 (with few large passes, 3 made the gradient adversarial: textures that
            fool the guiding flow).
        colour_weight: weight of the colour term ``mean |M_occ·(src − warp(x̂0))|`` ([0, 1]
            units; the paper's images are in [−1, 1], so its 100 weighs twice as much
            per unit there). Paper: 100.
        occlusion_masking: mask the colour term by ``M_occ`` (paper: on).
        colour_warp: warp ``x̂0`` by the ``"target"`` flow (the paper's "oracle" option, and
            what this project uses by default: the colour term then asks for the source's
            colours where the target flow sends them) or by the ``"estimated"`` flow (the
            paper's default code path).

    Gradient (see :mod:`motionnft.guidance.step`):

    Attributes:
        scale: ``g = −∇L · scale · w_i`` with ``w_i`` the step's schedule weight. Paper: 300;
            default 700.
        clip: bound on the correction ``δ = σ_t · g`` applied to the noise estimate
            (``ε ← ε − δ``); 0 disables. Paper: 200.
        clip_mode: ``"norm"``: ``δ`` is rescaled per sample to L2 norm ``<= clip`` (over all of
            the sample's latent elements; the paper tests ``‖σ·g‖`` over the whole batch and,
            when it exceeds 200, rescales ``g`` itself to norm 200, so its applied correction is
            ``σ · 200``; this project bounds what is applied); ``"abs"``: each element of ``δ``
            is clamped to ``[−clip, clip]``. Default 400 (norm).
        grad_through_model: differentiate through the denoiser (the paper's way, one
            backward pass through the network per guided pass). False: ``∇_x L`` is taken as
            ``∇_x̂0 L / α_t`` (the denoiser's Jacobian dropped: a backward pass through the
            decoder and the flow network only, far cheaper for a large transformer).

    Schedule (see :func:`guided_steps`):

    Attributes:
        recursions: denoiser passes per guided step ("recursive denoising": step, re-noise
            back to the same level, repeat; the last pass's step is kept). Paper: 10; default 1
            (at equal guided passes, more steps beat more recursions: 12 × 2 and 8 × 3 were
            far worse than 24 × 1).
        start, end: the guided steps are those whose index ``i`` of ``steps`` satisfies
            ``start <= i / steps < end`` (fractions of the schedule, from the noisy end).
            Paper: 0 and 1 (every step). Default 0.25 and 1 (the noisiest quarter is left
            unguided; guiding it too, or stopping at 0.9, raised the error).
        min_alpha: no guidance where the signal level ``α_t`` is below this (at ``t = 1`` of a
            flow-matching schedule the clean estimate carries no information and the
            correction is undefined).
    """

    flow_weight: float = 1.0
    colour_weight: float = 100.0
    occlusion_masking: bool = True
    colour_warp: str = "target"
    scale: float = 700.0
    clip: float = 400.0
    clip_mode: str = "norm"
    grad_through_model: bool = True
    recursions: int = 1
    start: float = 0.25
    end: float = 1.0
    min_alpha: float = 1e-3

    def __post_init__(self):
        for name in ("flow_weight", "colour_weight", "scale", "clip", "min_alpha"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"GuidanceConfig.{name} must be a finite number >= 0, got {value}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"GuidanceConfig.clip_mode {self.clip_mode!r}: expected one of {', '.join(CLIP_MODES)}")
        if self.colour_warp not in COLOUR_WARPS:
            raise ValueError(f"GuidanceConfig.colour_warp {self.colour_warp!r}: expected one of {', '.join(COLOUR_WARPS)}")
        if self.recursions < 1:
            raise ValueError(f"GuidanceConfig.recursions must be >= 1, got {self.recursions}")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise ValueError(f"GuidanceConfig: need 0 <= start < end <= 1, got start={self.start}, end={self.end}")

    @classmethod
    def official(cls, **changes) -> "GuidanceConfig":
        """The paper's settings (:data:`OFFICIAL`: flow weight 3, colour weight 100, scale 300,
        clip 200, every step guided, 10 recursions), with ``changes`` applied.

        The colour term keeps warping by the target flow (the released code's ``--oracle_flow``;
        its default warps by the estimated flow: pass ``colour_warp="estimated"``)."""
        base = cls(**OFFICIAL)
        return replace(base, **changes)

    def replace(self, **changes) -> "GuidanceConfig":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


def guided_steps(steps: int, config: GuidanceConfig) -> list[bool]:
    """Which of ``steps`` sampler steps are guided: ``start <= i / steps < end``.

    At least one step is guided whenever the range is not empty (the step nearest the
    range's middle when rounding leaves none).

    >>> guided_steps(8, GuidanceConfig(start=0.25, end=0.75))  # doctest: +NORMALIZE_WHITESPACE
    [False, False, True, True, True, True, False, False]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    chosen = [config.start <= index / steps < config.end for index in range(steps)]
    if not any(chosen):
        chosen[min(steps - 1, int((config.start + config.end) / 2 * steps))] = True
    return chosen


def guided_pass_count(steps: int, config: GuidanceConfig) -> int:
    """Denoiser passes that carry a guidance gradient: guided steps × recursions (an upper bound:
    samplers skip guided steps whose ``α < min_alpha``, e.g. ``t = 1`` of a flow-matching schedule)."""
    return sum(guided_steps(steps, config)) * config.recursions
