"""The sampling path: dataset samples -> edited images with one model (+ a merged LoRA), in batches."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..data import EditSample
from ..image import center_crop_resize
from ..sampling import sample
from .spec import GenerationSettings, ModelSpec, settings_record, default_settings, generation_record, model_family

ProgressFn = Callable[[int, int], None]
"""``progress(step, steps)`` after each sampler step of a batch."""


# Pure pieces ---------------------------------------------------------------------------------------
def working_size(height: int, width: int, resolution: int, multiple: int) -> tuple[int, int]:
    """The size ``(H, W)`` an image of ``height × width`` is edited at.

    About ``resolution²`` pixels with the image's aspect ratio, each side a multiple of
    ``multiple`` (at least one multiple).

    >>> working_size(64, 64, 64, 8), working_size(480, 640, 512, 16)
    ((64, 64), (448, 592))
    """
    scale = resolution / math.sqrt(height * width)
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


def true_cfg(v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """True classifier-free guidance with norm rescaling, as ``QwenImageEditPipeline`` does it.

    ``comb = v_neg + scale · (v_pos − v_neg)``, then each token is rescaled to the norm of
    the conditional prediction: ``comb · ‖v_pos‖ / ‖comb‖`` over the channel dimension.

    Args:
        v_pos: ``(B, N, C)`` velocity with the instruction.
        v_neg: ``(B, N, C)`` velocity with the negative prompt.
        scale: the guidance scale ``s``.
    Returns:
        ``(B, N, C)``.
    """
    if v_pos.shape != v_neg.shape:
        raise ValueError(f"true_cfg: v_pos {tuple(v_pos.shape)} and v_neg {tuple(v_neg.shape)} differ")
    combined = v_neg + scale * (v_pos - v_neg)
    return combined * (torch.norm(v_pos, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def edit_generator(seed: int, sample_id: str) -> torch.Generator:
    """The CPU generator of one sample's noise: seeded by ``(seed, sample id)`` only."""
    from ..training.seeding import derived_generator

    return derived_generator(seed, "edit", str(sample_id))


# The generator ----------------------------------------------------------------------------------------
class EditGenerator:
    """Edits of dataset samples by one model (+ LoRA) with fixed :class:`GenerationSettings`.

    Calling it with samples returns one ``(1, 3, H, W)`` edit per sample, in batches of
    ``settings.batch_size`` (samples whose working sizes differ go in separate batches).
    ``batched = True`` tells :class:`~motionnft.evaluate.ProducedEdits` to hand it whole
    batches.
    """

    batched = True

    def __init__(self, model, settings: GenerationSettings = GenerationSettings(), kind: str | None = None,
                 record: dict | None = None):
        """``model``: a ready :class:`~motionnft.models.EditModel` (placed, LoRA merged);
        ``kind``: its :data:`MODEL_CHOICES` name for the defaults (default: from its base)."""
        self.model = model
        self.kind = kind or ("qwen_image_edit" if model.base == "qwen_image" else "flux_kontext")
        if settings.resolution is None and kind is None:
            raise ValueError("EditGenerator: give settings.resolution or the model kind (its default resolution)")
        self.settings = default_settings(self.kind, settings)
        self.record = dict(record) if record is not None else {
            "model": model.name, "guidance": model.guidance, "dtype": str(model.dtype).replace("torch.", ""),
            **settings_record(self.settings)}
        self.lora = None

    @classmethod
    def load(cls, model: str = "tiny", *, model_path=None, transformer_file=None, base_weights=None,
             tiny_size=None, tiny_codec=None, guidance=None, lora=None, lora_scale: float = 1.0,
             lora_alpha=None, dtype=None, device=None, **settings) -> "EditGenerator":
        """Build the model (see :class:`ModelSpec`) and a generator with ``settings``
        (keyword arguments of :class:`GenerationSettings`)."""
        spec = ModelSpec(model, None if model_path is None else str(model_path),
                         None if transformer_file is None else str(transformer_file),
                         None if base_weights is None else str(base_weights), tiny_size, tiny_codec, guidance,
                         None if lora is None else str(lora), lora_scale, lora_alpha, dtype, device)
        return cls.from_spec(spec, GenerationSettings(**settings))

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: GenerationSettings = GenerationSettings()) -> "EditGenerator":
        """Build the model ``spec`` describes, place it, merge the LoRA, and wrap it.

        Raises:
            FileNotFoundError: model folder, transformer file, base weights or LoRA
                missing (the message names the places looked at).
            ValueError: a LoRA of the other base model, or one that does not fit.
        """
        from ..lora import load_lora, merge_lora
        from ..models.configured import build_from_config

        record = generation_record(spec, settings)
        lora = None
        if spec.lora is not None:  # read (and check its base) before the model is loaded
            lora = load_lora(spec.lora, alpha=spec.lora_alpha, base=model_family(spec.kind))
        dtype = spec.resolved_dtype()
        model = build_from_config(spec.config(), dtype=dtype)
        model.to(spec.resolved_device(), dtype)
        model.transformer.eval()
        if lora is not None:
            try:
                merge_lora(model.transformer, lora, spec.lora_scale)
            except ValueError as error:
                raise ValueError(f"LoRA {spec.lora}: does not fit {model.name}: {error}") from None
        generator = cls(model, settings, kind=spec.kind, record=record)
        generator.lora = lora
        return generator

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def describe(self) -> dict:
        """What makes these edits (:func:`generation_record`), for reports and the edits' folder."""
        return dict(self.record)

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The working size of an input image of ``height × width`` (:func:`working_size`)."""
        multiple = self.model.codec.scale_factor * 2
        return working_size(height, width, self.settings.resolution, multiple)

    def reference(self, sample: EditSample) -> torch.Tensor:
        """``sample``'s input image centre-cropped and resized to its working size, ``(1, 3, H, W)``."""
        image = sample.input_image()
        return center_crop_resize(image, self.size_for(*image.shape[-2:]))

    def __call__(self, samples: Sequence[EditSample], progress: ProgressFn | None = None) -> list[torch.Tensor]:
        """One edit ``(1, 3, H, W)`` float in [0, 1] per sample, at its working size.

        Samples are taken ``batch_size`` at a time; within those, samples of one working
        size share a batch.
        """
        samples = list(samples)
        edits: list[torch.Tensor | None] = [None] * len(samples)
        step = self.settings.batch_size
        for start in range(0, len(samples), step):
            by_size: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
            for index in range(start, min(start + step, len(samples))):
                reference = self.reference(samples[index])
                by_size.setdefault(tuple(reference.shape[-2:]), []).append((index, reference))
            for size, members in by_size.items():
                batch = self.edit_batch([samples[i] for i, _ in members], [r for _, r in members], size, progress)
                for row, (index, _) in enumerate(members):
                    edits[index] = batch[row:row + 1]
        return edits

    @torch.no_grad()
    def edit_batch(self, samples: Sequence[EditSample], references: Sequence[torch.Tensor], size: tuple[int, int],
                   progress: ProgressFn | None = None) -> torch.Tensor:
        """Edits of ``samples`` whose ``references`` ``(1, 3, H, W)`` are already at ``size``.

        Returns:
            ``(B, 3, H, W)`` float32 in [0, 1] on the CPU.
        """
        from ..models import Condition

        model, settings = self.model, self.settings
        condition = Condition.cat([model.encode_condition(s.prompt, r, size) for s, r in zip(samples, references)])
        condition = condition.to(model.device)
        negative = None
        if settings.true_cfg > 1:
            negative = Condition.cat([model.encode_condition(settings.negative_prompt, r, size) for r in references])
            negative = negative.to(model.device)
        noise = torch.cat([model.noise(1, size, edit_generator(settings.seed, s.id)) for s in samples])

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v_pos = model.velocity(x, t, condition)
            if negative is None:
                return v_pos
            return true_cfg(v_pos, model.velocity(x, t, negative), settings.true_cfg)

        tokens = sample(velocity, noise.to(model.device), model.sigmas(settings.steps, size), settings.sampler,
                        callback=progress)
        return model.decode_tokens(tokens, size).float().cpu()

    def __repr__(self) -> str:
        return f"EditGenerator({self.model.name}, {self.settings})"
