"""Which model edits and how: the ``--model`` choices, :class:`ModelSpec`, :class:`GenerationSettings`,
their defaults (:func:`default_settings`) and the record of everything that decides the pixels."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..files import file_digest
from ..models import MODEL_KINDS
from ..sampling import SAMPLERS

MODEL_CHOICES = ("tiny",) + MODEL_KINDS
"""``--model`` values: ``tiny`` is the ``tiny`` training preset's model (with its ``base_weights``)."""
INFERENCE_STEPS = 28
KONTEXT_GUIDANCE = 2.5
QWEN_TRUE_CFG = 4.0
NEGATIVE_PROMPT = " "
REAL_RESOLUTION = 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_tiny(kind: str) -> bool:
    return kind == "tiny" or kind.startswith("tiny_")


def model_family(kind: str) -> str:
    """``"flux"`` (FLUX.1 Kontext, also ``tiny``) or ``"qwen_image"`` (Qwen-Image-Edit and -2509)."""
    return "qwen_image" if "qwen" in kind else "flux"


# Settings ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationSettings:
    """How edits are sampled. ``None`` fields take the model's default (:func:`default_settings`).

    Attributes:
        steps: sampler steps (28, the official inference).
        sampler: ``"euler"`` (the pipelines' scheduler) or ``"dpm2"`` (the trainer's rollouts).
        seed: the noise seed; each sample's noise is drawn from ``(seed, sample id)``.
        resolution: working size ``≈ resolution²`` pixels (see :func:`working_size`).
        true_cfg: true classifier-free guidance scale; ``<= 1`` is off (one transformer
            call per step), ``> 1`` adds a call on ``negative_prompt`` (:func:`true_cfg`).
        negative_prompt: the instruction of the unconditional branch.
        batch_size: samples per batch (does not change the images beyond float rounding).
    """

    steps: int = INFERENCE_STEPS
    sampler: str = "euler"
    seed: int = 0
    resolution: int | None = None
    true_cfg: float | None = None
    negative_prompt: str = NEGATIVE_PROMPT
    batch_size: int = 1

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if self.resolution is not None and self.resolution < 16:
            raise ValueError(f"resolution must be >= 16 pixels, got {self.resolution}")
        if self.true_cfg is not None and not (math.isfinite(self.true_cfg) and self.true_cfg >= 0):
            raise ValueError(f"true_cfg must be a finite number >= 0, got {self.true_cfg}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")


def tiny_preset():
    """The ``tiny`` training preset's configuration (:func:`motionnft.training.settings.load_config`)."""
    from ..training.settings import load_config

    return load_config("tiny")


def default_settings(kind: str, settings: GenerationSettings = GenerationSettings()) -> GenerationSettings:
    """``settings`` with its ``None`` fields set to the model's defaults.

    ``resolution``: the ``tiny`` preset's (64) for tiny models, 1024 for real ones (the
    pipelines' 1 MP). ``true_cfg``: 4.0 for Qwen-Image-Edit (its pipeline's default, with
    the negative prompt ``" "``), 1.0 (off) for FLUX.1 Kontext, which uses embedded guidance.
    """
    if kind not in MODEL_CHOICES:
        raise ValueError(f"model {kind!r}: expected one of {', '.join(MODEL_CHOICES)}")
    resolution = settings.resolution
    if resolution is None:
        resolution = tiny_preset().resolution if is_tiny(kind) else REAL_RESOLUTION
    true_cfg = settings.true_cfg
    if true_cfg is None:
        true_cfg = QWEN_TRUE_CFG if model_family(kind) == "qwen_image" else 1.0
    return replace(settings, resolution=resolution, true_cfg=true_cfg)


@dataclass(frozen=True)
class ModelSpec:
    """Which model edits: a kind of :data:`MODEL_CHOICES`, where its files are, and a LoRA.

    Attributes:
        kind: ``tiny`` (the ``tiny`` preset's model and base weights), a ``tiny_*`` kind
            (built in code), or a real kind loaded from ``path``.
        path: the local diffusers folder of a real model.
        transformer_file: a single-file transformer replacing ``path/transformer``.
        base_weights: a safetensors state dict loaded into the transformer (default: the
            ``tiny`` preset's for ``tiny``, none otherwise); relative paths as
            :func:`motionnft.models.configured.resolve_base_weights` says.
        tiny_size, tiny_codec: of ``tiny_*`` kinds (default: the ``tiny`` preset's for ``tiny``,
            the trainer's defaults otherwise: what ``motionnft train --set model=KIND`` builds).
        guidance: embedded guidance of FLUX.1 Kontext (default 2.5); Qwen has none.
        lora: a LoRA file or PEFT folder; ``lora_scale`` multiplies its ``alpha / rank``;
            ``lora_alpha`` replaces its alpha (64 for the official MotionEdit converted file).
        dtype: ``float32``, ``bfloat16`` or ``float16``; default bfloat16 for real models on
            CUDA, float32 otherwise (the tiny preset trains in float32).
        device: default ``cuda`` when available, else ``cpu``.
    """

    kind: str = "tiny"
    path: str | None = None
    transformer_file: str | None = None
    base_weights: str | None = None
    tiny_size: str | None = None
    tiny_codec: str | None = None
    guidance: float | None = None
    lora: str | None = None
    lora_scale: float = 1.0
    lora_alpha: float | None = None
    dtype: str | None = None
    device: str | None = None

    def __post_init__(self):
        if self.kind not in MODEL_CHOICES:
            raise ValueError(f"model {self.kind!r}: expected one of {', '.join(MODEL_CHOICES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not math.isfinite(self.lora_scale):
            raise ValueError(f"LoRA scale must be finite, got {self.lora_scale}")
        if self.guidance is not None and model_family(self.kind) == "qwen_image":
            raise ValueError("guidance: Qwen-Image-Edit has no embedded guidance; use true CFG (true_cfg) instead")
        if is_tiny(self.kind) and (self.path is not None or self.transformer_file is not None):
            raise ValueError(f"model {self.kind!r} is built in code: a model path or transformer file applies "
                             "to the real models only")
        if not is_tiny(self.kind) and (self.tiny_size is not None or self.tiny_codec is not None):
            raise ValueError(f"model {self.kind!r}: tiny_size and tiny_codec apply to the tiny models only")
        if self.lora is None and (self.lora_alpha is not None or self.lora_scale != 1.0):
            raise ValueError("a LoRA scale or alpha was given without a LoRA")

    def resolved_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return DTYPES[self.dtype]
        real_on_gpu = not is_tiny(self.kind) and self.resolved_device().type == "cuda"
        return torch.bfloat16 if real_on_gpu else torch.float32

    def config(self):
        """The trainer configuration this spec describes (see :func:`motionnft.models.build_from_config`)."""
        from ..training.settings import load_config

        config = load_config("tiny") if self.kind == "tiny" else load_config(None, overrides={"model": self.kind})
        if self.path is not None:
            config.model_path = str(self.path)
        if self.transformer_file is not None:
            config.transformer_file = str(self.transformer_file)
        if self.base_weights is not None:
            config.base_weights = str(self.base_weights)
        if self.tiny_size is not None:  # otherwise the configuration's: the tiny preset's, or the default
            config.tiny_size = self.tiny_size
        if self.tiny_codec is not None:
            config.tiny_codec = self.tiny_codec
        if self.guidance is not None:
            config.guidance = float(self.guidance)
        return config


def generation_record(spec: ModelSpec, settings: GenerationSettings) -> dict:
    """Everything that decides the edits' pixels (not the batch size or the device), as JSON values.

    Kept beside the edits by :class:`~motionnft.evaluate.ProducedEdits`, so that a resumed
    run with other settings is refused instead of mixing two systems in one folder.

    Raises:
        FileNotFoundError: the LoRA or the base weights do not exist.
    """
    from ..lora import find_lora_file
    from ..models.configured import resolve_base_weights

    settings = default_settings(spec.kind, settings)
    config = spec.config()
    record = {"model": spec.kind}
    if is_tiny(spec.kind):
        record.update(tiny_size=config.tiny_size, tiny_codec=config.tiny_codec, model_seed=config.seed)
    else:
        record.update(model_path=str(Path(config.model_path).expanduser().resolve()) if config.model_path else None,
                      transformer_file=config.transformer_file or None)
    if config.base_weights:
        weights = resolve_base_weights(config.base_weights)
        record.update(base_weights=str(weights), base_weights_sha256=file_digest(weights))
    if spec.lora is not None:
        weights, _ = find_lora_file(spec.lora)
        record.update(lora=str(weights.resolve()), lora_sha256=file_digest(weights), lora_scale=spec.lora_scale,
                      lora_alpha=spec.lora_alpha)
    guidance = None
    if model_family(spec.kind) == "flux":
        guidance = config.guidance if config.guidance >= 0 else KONTEXT_GUIDANCE
    record.update(guidance=guidance, dtype=str(spec.resolved_dtype()).replace("torch.", ""))
    record.update(settings_record(settings))
    return record


def settings_record(settings: GenerationSettings) -> dict:
    """The settings that decide the pixels: all but the batch size (and the negative prompt without true CFG)."""
    record = {k: v for k, v in asdict(settings).items() if k != "batch_size"}
    if settings.true_cfg <= 1:
        record.pop("negative_prompt")
    return record
