"""Which base model (Flux / Kontext or Qwen-Image) a LoRA was made for, from names, shapes, metadata."""

from __future__ import annotations

import re

from .names import BASE_NAMES, BASES, check_base

_FLUX_NAME_EVIDENCE = re.compile(
    r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d+|"
    r"(^|[._])(norm1_context|ff_context|proj_mlp|x_embedder|context_embedder|guidance_in|vector_in|"
    r"guidance_embedder|text_embedder|final_layer)([._]|$)|[._]ff[._]net[._]|[._]norm1[._]linear"
)
_QWEN_NAME_EVIDENCE = re.compile(r"(^|[._])(img_mod|txt_mod|img_mlp|txt_mlp)[._]")
_BLOCK_INDEX = re.compile(r"(?<![a-z_])transformer_blocks[._](\d+)[._]")
FLUX_DOUBLE_BLOCKS = 19
_QWEN_TEXT_WIDTH = 3584  # Qwen2.5-VL (txt_in); Flux's T5 is 4096 wide
_FLUX_TEXT_WIDTH = 4096


def detect_base(names, in_features: dict[str, int] | None = None) -> tuple[str | None, str]:
    """Which base the module ``names`` (any layout) were made for, from names and shapes.

    ``in_features`` maps names to their ``A`` width. Returns ``(base or None, reason)``;
    ``None`` when nothing tells (e.g. attention of the first 19 blocks only).
    """
    flux, qwen = [], []
    for name in names:
        if _FLUX_NAME_EVIDENCE.search(name):
            flux.append(name)
        elif _QWEN_NAME_EVIDENCE.search(name):
            qwen.append(name)
        else:
            match = _BLOCK_INDEX.search(name)
            if match and int(match.group(1)) >= FLUX_DOUBLE_BLOCKS and "single" not in name:
                qwen.append(name)
    for name, width in (in_features or {}).items():
        if width == _QWEN_TEXT_WIDTH:
            qwen.append(name)
        elif width == _FLUX_TEXT_WIDTH:
            flux.append(name)
    if flux and qwen:
        raise ValueError(
            f"the LoRA mixes Flux modules (e.g. {flux[0]}) and Qwen-Image modules (e.g. {qwen[0]}): "
            "it is not a LoRA of one base model"
        )
    if flux:
        return "flux", f"Flux module names such as {flux[0]}"
    if qwen:
        return "qwen_image", f"Qwen-Image module names such as {qwen[0]}"
    return None, "the module names are shared by Flux and Qwen-Image"


def base_from_metadata(metadata: dict[str, str]) -> str | None:
    """The base a file's header names (this project's key, trainers' model names), None if unclear."""
    if metadata.get("motionnft.base") in BASES:
        return metadata["motionnft.base"]
    text = " ".join(
        str(metadata.get(key, "")) for key in
        ("base_model", "base_model_name_or_path", "ss_base_model_version", "modelspec.architecture",
         "ss_sd_model_name", "adapter_config")
    ).lower()
    qwen = "qwen" in text
    flux = "flux" in text or "kontext" in text
    if qwen != flux:
        return "qwen_image" if qwen else "flux"
    return None


def resolve_base(base: str | None, names, in_features: dict[str, int], metadata: dict[str, str]) -> str:
    """The base to read a LoRA for: ``base`` if given (checked against the weights), else detected.

    Names and shapes outrank the metadata; a LoRA that says nothing either way needs ``base``.
    """
    detected, reason = detect_base(names, in_features)
    from_metadata = base_from_metadata(metadata)
    if base is None:
        base = detected or from_metadata
        if base is None:
            raise ValueError(
                f"cannot tell whether this LoRA is for Flux/Kontext or Qwen-Image ({reason}) and its metadata "
                "does not say: give the base (--base flux or --base qwen_image on the command line; "
                "base='flux' or base='qwen_image' in Python)"
            )
        return base
    check_base(base)
    if detected is not None and detected != base:
        raise ValueError(
            f"this LoRA was made for {BASE_NAMES[detected]} ({reason}), not for {BASE_NAMES[base]}: "
            f"load it onto a {BASE_NAMES[detected]} model"
        )
    if detected is None and from_metadata is not None and from_metadata != base:
        raise ValueError(
            f"this LoRA's metadata says it was made for {BASE_NAMES[from_metadata]}, not for {BASE_NAMES[base]}"
        )
    return base
