"""Base-model adapters for instruction editing: FLUX.1 Kontext [dev] and Qwen-Image-Edit(-2509).

Each adapter (:class:`~motionnft.models.base.EditModel`) loads from a local diffusers
folder (optionally with a single-file transformer checkpoint), offline, or is built at toy
size from configs in code (``tiny-*`` kinds) for the tests and the ``tiny`` preset::

    from motionnft.models import build_model
    model = build_model("flux_kontext", path="/models/FLUX.1-Kontext-dev")
    model = build_model("tiny_flux_kontext")

Needs the ``train`` extra (diffusers, transformers, peft, ...).
"""

from __future__ import annotations

import torch

from .base import Condition, EditModel, LatentCodec, PatchCodec, pack_latents, unpack_latents

MODEL_KINDS = ("flux_kontext", "qwen_image_edit", "qwen_image_edit_plus",
               "tiny_flux_kontext", "tiny_qwen_image_edit", "tiny_qwen_image_edit_plus")


def build_model(kind: str, path=None, transformer_file=None, dtype: torch.dtype = torch.bfloat16,
                seed: int = 0, tiny_size: str = "demo", tiny_codec: str = "patch", guidance: float | None = None,
                max_sequence_length: int | None = None) -> EditModel:
    """Load (or, for ``tiny_*`` kinds, build) the model ``kind``; see :data:`MODEL_KINDS`.

    ``qwen_image_edit`` loads the Qwen-Image-Edit release the folder holds (its
    ``model_index.json``: Qwen-Image-Edit or 2509); ``qwen_image_edit_plus`` insists on
    2509 and refuses a folder of the first release.

    ``path`` is the local diffusers folder and ``transformer_file`` an optional
    single-file transformer; tiny kinds ignore both and use ``seed``, ``tiny_size`` and
    ``tiny_codec``.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r}: expected one of {', '.join(MODEL_KINDS)}")
    if kind == "flux_kontext":
        from .flux_kontext import load_flux_kontext

        return load_flux_kontext(path, transformer_file, dtype, guidance=2.5 if guidance is None else guidance,
                                 max_sequence_length=max_sequence_length or 512)
    if kind in ("qwen_image_edit", "qwen_image_edit_plus"):
        from .qwen_image_edit import load_qwen_image_edit

        # qwen_image_edit: the release the folder holds; qwen_image_edit_plus: 2509, or an error
        return load_qwen_image_edit(path, transformer_file, dtype, plus=True if kind.endswith("plus") else None)
    if kind == "tiny_flux_kontext":
        from .flux_kontext import tiny_flux_kontext

        model = tiny_flux_kontext(seed, tiny_size, tiny_codec, max_sequence_length=max_sequence_length or 64)
        if guidance is not None:
            model.guidance = guidance
        return model
    from .qwen_image_edit import tiny_qwen_image_edit

    return tiny_qwen_image_edit(seed, plus=kind.endswith("plus"), codec=tiny_codec, size=tiny_size)


from .configured import build_from_config  # noqa: E402  (uses build_model)

__all__ = ["MODEL_KINDS", "Condition", "EditModel", "LatentCodec", "PatchCodec", "build_from_config", "build_model",
           "pack_latents", "unpack_latents"]
