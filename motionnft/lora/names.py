"""Module names a LoRA may target, per base, and the map from every naming to the canonical one.

Canonical names are diffusers module names inside the transformer, without prefix
(``transformer_blocks.3.attn.to_q``). Flux LoRAs may also use Black Forest Labs names
(``double_blocks.3.img_attn.qkv``): their fused projections map to several canonical
modules, each patched by a row block of ``B``.
"""

from __future__ import annotations

import re

BASES = {
    "flux": "FLUX.1 Kontext [dev] / FLUX.1 [dev] (19 double + 38 single blocks, width 3072)",
    "qwen_image": "Qwen-Image / Qwen-Image-Edit / -Edit-2509 (60 blocks, width 3072)",
}
BASE_NAMES = {"flux": "FLUX.1 Kontext", "qwen_image": "Qwen-Image-Edit"}

# Block-level module names (diffusers) that a LoRA may target, per base.
ATTENTION_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""The attention projections of a FLUX / Qwen-Image double-stream block (image and text
streams), under its ``attn.``: what a MotionNFT LoRA targets by default."""
_ATTENTION = tuple(f"attn.{name}" for name in ATTENTION_MODULES)
FLUX_DOUBLE = _ATTENTION + ("norm1.linear", "norm1_context.linear", "ff.net.0.proj", "ff.net.2",
                            "ff_context.net.0.proj", "ff_context.net.2")
FLUX_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear")
FLUX_TOP = ("x_embedder", "context_embedder",
            "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
            "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
            "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2",
            "norm_out.linear", "proj_out")
QWEN_BLOCK = _ATTENTION + ("img_mod.1", "txt_mod.1", "img_mlp.net.0.proj", "img_mlp.net.2",
                           "txt_mlp.net.0.proj", "txt_mlp.net.2")
QWEN_TOP = ("img_in", "txt_in", "proj_out", "norm_out.linear",
            "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2")

# Black Forest Labs (original Flux, ComfyUI) names -> diffusers. A tuple of
# (diffusers name, first row unit, row units) cuts B's rows in units of the width;
# the second item is the total number of units.
_QKV = "attn.to_q", "attn.to_k", "attn.to_v"
BFL_DOUBLE: dict[str, tuple[tuple[tuple[str, int, int], ...], int] | str] = {
    "img_attn.qkv": (tuple((name, i, 1) for i, name in enumerate(_QKV)), 3),
    "txt_attn.qkv": (tuple((name, i, 1) for i, name in enumerate(
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"))), 3),
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
}
BFL_SINGLE: dict[str, tuple[tuple[tuple[str, int, int], ...], int] | str] = {
    "linear1": (tuple((name, i, 1) for i, name in enumerate(_QKV)) + (("proj_mlp", 3, 4),), 7),
    "linear2": "proj_out",
    "modulation.lin": "norm.linear",
}
BFL_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    # BFL orders this modulation (shift, scale), diffusers (scale, shift): B's halves swap.
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
_SWAPPED_HALVES = {"final_layer.adaLN_modulation.1"}

BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks|double_blocks|single_blocks)\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks|double_blocks|single_blocks)_(\d+)_(.+)$")

RowBlock = tuple[int, int, int]
"""``(first row unit, row units, total units)``: the rows of a fused ``B`` one module owns."""


def check_base(base: str) -> str:
    if base not in BASES:
        raise ValueError(f"base: expected one of {', '.join(BASES)}, got {base!r}")
    return base


def _block_tables(base: str) -> dict[str, tuple[str, ...] | dict]:
    if base == "flux":
        return {"transformer_blocks": FLUX_DOUBLE, "single_transformer_blocks": FLUX_SINGLE,
                "double_blocks": BFL_DOUBLE, "single_blocks": BFL_SINGLE}
    return {"transformer_blocks": QWEN_BLOCK}


def _top_names(base: str) -> dict[str, str]:
    """Top-level module names accepted for ``base`` -> canonical name."""
    if base == "flux":
        return {**{name: name for name in FLUX_TOP}, **BFL_TOP}
    return {name: name for name in QWEN_TOP}


def canonical_module_names(base: str, double_blocks: int | None = None, single_blocks: int | None = None) -> list[str]:
    """Every module name a LoRA of ``base`` may target (full-size model unless given)."""
    check_base(base)
    if base == "flux":
        double = 19 if double_blocks is None else double_blocks
        single = 38 if single_blocks is None else single_blocks
        names = [f"transformer_blocks.{i}.{s}" for i in range(double) for s in FLUX_DOUBLE]
        names += [f"single_transformer_blocks.{i}.{s}" for i in range(single) for s in FLUX_SINGLE]
        return names + list(FLUX_TOP)
    blocks = 60 if double_blocks is None else double_blocks
    return [f"transformer_blocks.{i}.{s}" for i in range(blocks) for s in QWEN_BLOCK] + list(QWEN_TOP)


def is_canonical_module(base: str, name: str) -> bool:
    match = BLOCK.match(name)
    if match:
        family, _, suffix = match.groups()
        table = {"flux": {"transformer_blocks": FLUX_DOUBLE, "single_transformer_blocks": FLUX_SINGLE},
                 "qwen_image": {"transformer_blocks": QWEN_BLOCK}}[base].get(family, ())
        return suffix in table
    return name in (FLUX_TOP if base == "flux" else QWEN_TOP)


def block_suffix(name: str) -> str:
    """``transformer_blocks.3.attn.to_q`` -> ``attn.to_q`` (a top-level name is returned as is)."""
    return BLOCK.sub(r"\3", name)


def unflatten(name: str, base: str) -> str | None:
    """``double_blocks_0_img_attn_qkv`` -> ``double_blocks.0.img_attn.qkv`` (None if unknown)."""
    match = _FLAT_BLOCK.match(name)
    if match:
        family, index, flat = match.groups()
        table = _block_tables(base).get(family)
        if table is None:
            return None
        for suffix in table:
            if suffix.replace(".", "_") == flat:
                return f"{family}.{index}.{suffix}"
        return None
    for top in _top_names(base):
        if top.replace(".", "_") == name:
            return top
    return None


def canonical_targets(name: str, base: str) -> list[tuple[str, RowBlock | None, bool]] | None:
    """Map one dotted module name to ``[(canonical, row block or None, swap halves)]``, None if unknown."""
    match = BLOCK.match(name)
    if match:
        family, index, suffix = match.groups()
        table = _block_tables(base).get(family)
        if table is None or suffix not in table:
            return None
        if family in ("transformer_blocks", "single_transformer_blocks"):
            return [(name, None, False)]
        target = table[suffix]
        out_family = "transformer_blocks" if family == "double_blocks" else "single_transformer_blocks"
        if isinstance(target, str):
            return [(f"{out_family}.{index}.{target}", None, False)]
        parts, units = target
        return [(f"{out_family}.{index}.{part}", (start, count, units), False) for part, start, count in parts]
    tops = _top_names(base)
    if name in tops:
        return [(tops[name], None, name in _SWAPPED_HALVES)]
    return None
