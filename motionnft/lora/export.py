""":class:`LoraWeights` -> the tensors and header of a file, in any layout of the table."""

from __future__ import annotations

import json

import torch

from .layouts import FORMAT_KEY, FORMAT_VERSION, LAYOUTS, layout_key, written_layout
from .names import check_base, is_canonical_module
from .weights import LoraWeights, check_alpha, listing, most_common_alpha

# diffusers treats this header key as a PEFT config and then refuses alpha tensors.
_DIFFUSERS_CONFIG_KEY = "lora_adapter_metadata"


def export_prefix(base: str) -> str:
    """Key prefix of written files: what both ComfyUI versions and diffusers map with alpha."""
    return LAYOUTS[written_layout(check_base(base))].prefix


def export_state_dict(lora: LoraWeights, layout: str = "motionnft") -> dict[str, torch.Tensor]:
    """The tensors :func:`save_lora` writes: ``<prefix><module>.lora_A/lora_B.weight`` + ``.alpha``.

    Every module is written with the LoRA's most common alpha: a module with another
    alpha has the ratio folded into its B, so its ``alpha / rank · B·A`` is unchanged. (diffusers
    turns per-module alphas into PEFT ``alpha_pattern`` entries that match by name suffix,
    so the top-level ``proj_out``'s alpha would also hit every ``single_transformer_blocks.N.proj_out``.)
    Tensors are moved to the CPU, made contiguous, and copied where two modules share
    storage (the split of a fused projection), which safetensors refuses.

    ``layout`` names another row of :data:`motionnft.lora.layouts.LAYOUTS` to write
    instead; one that keeps no alpha tensors (``peft``, ``bare``) gets each module's whole
    ``alpha / rank`` folded into its B, so it applies exactly at the alpha = rank every
    loader assumes then.
    """
    check_base(lora.base)
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not lora.modules:
        raise ValueError("lora: has no modules")
    keeps_alpha = layout_key(layout, "proj_out", "alpha", lora.base) is not None
    common_alpha = most_common_alpha(lora)
    own = _owner()
    out: dict[str, torch.Tensor] = {}
    for name, module in sorted(lora.modules.items()):
        _check_module(lora, name, module)
        alpha = check_alpha(module.alpha, f"alpha of {name}")
        if keeps_alpha:
            up = module.up if alpha == common_alpha else _scaled(module.up, alpha / common_alpha)
        else:
            up = _scaled(module.up, module.scale)
        out[layout_key(layout, name, "down", lora.base)] = own(module.down)
        out[layout_key(layout, name, "up", lora.base)] = own(up)
        if keeps_alpha:
            out[layout_key(layout, name, "alpha", lora.base)] = torch.tensor(common_alpha, dtype=torch.float32)
    return out


def _scaled(up: torch.Tensor, factor: float) -> torch.Tensor:
    return (up.float() * factor).to(up.dtype)


def _check_module(lora: LoraWeights, name: str, module) -> None:
    if not is_canonical_module(lora.base, name):
        raise ValueError(
            f"lora: module {name!r} is not a {lora.base} transformer module name (diffusers names without prefix, "
            "e.g. transformer_blocks.0.attn.to_q)"
        )
    if module.down.ndim != 2 or module.up.ndim != 2 or module.up.shape[1] != module.down.shape[0]:
        raise ValueError(
            f"lora: module {name}: down {tuple(module.down.shape)} / up {tuple(module.up.shape)} are not "
            "(rank, in) / (out, rank)"
        )


def _owner():
    """A function giving each tensor its own contiguous CPU storage (safetensors refuses shared storage)."""
    seen: set[tuple[int, int]] = set()

    def own(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.storage_offset()))
        return tensor
    return own


def training_metadata(lora: LoraWeights) -> dict[str, str]:
    """The header written by :func:`save_lora`: the LoRA's metadata plus what its weights say."""
    metadata = {str(k): str(v) for k, v in lora.metadata.items() if k != _DIFFUSERS_CONFIG_KEY}
    metadata.update({
        FORMAT_KEY: FORMAT_VERSION,
        "motionnft.base": lora.base,
        "motionnft.rank": listing(lora.ranks),
        "motionnft.alpha": listing(lora.alphas),
        "motionnft.target_modules": json.dumps(lora.target_modules()),
        "motionnft.modules": str(len(lora.modules)),
    })
    metadata.setdefault("format", "pt")
    return metadata
