"""LoRA files for FLUX.1 Kontext and Qwen-Image(-Edit): read every common layout, write one.

A LoRA adds ``scale · B·A`` to a linear weight ``W`` of shape ``(out, in)``, with ``A``
("down", ``(rank, in)``), ``B`` ("up", ``(out, rank)``) and ``scale = alpha / rank``.
Trainers store the same thing under many key layouts and disagree on where alpha lives:

===============  ==========================================================  ===================
layout           keys (module ``M``)                                         alpha
===============  ==========================================================  ===================
``motionnft``    this project's files (``save_lora``)                        ``M.alpha`` tensors
``peft``         ``base_model.model.M.lora_A[.default].weight``              ``adapter_config.json``
``diffusers``    ``transformer.M.lora_A.weight`` (also the official          ``M.alpha`` if any,
                 MotionEdit ``adapter_model_converted.safetensors``)         else none (scale 1)
``kohya``        ``lora_unet_<M with _>.lora_down.weight`` (kohya, musubi)   ``M.alpha``
``ai-toolkit``   ``diffusion_model.M.lora_A.weight``                         ``M.alpha`` if any
``bare``         ``M.lora_A.weight`` (PEFT state dicts of a bare model)      none / given
===============  ==========================================================  ===================

``M`` is either a diffusers module name (``transformer_blocks.3.attn.to_q``) or, for Flux,
a Black Forest Labs name (``double_blocks.3.img_attn.qkv``), whose fused q/k/v (and the
single blocks' q/k/v/mlp ``linear1``) are split here into the diffusers modules: the
fused ``A`` is shared and ``B`` is cut into row blocks, which is exact.

Everything is normalised to :class:`LoraWeights`: canonical keys are the diffusers module
names inside the transformer, without prefix. :func:`save_lora` writes the one layout that
both ComfyUI (0.3.64 and 0.8.0, stock ``LoraLoaderModelOnly``) and diffusers
(``load_lora_weights``) apply at ``alpha / rank``: Flux ``transformer.M`` + ``M.alpha``,
Qwen-Image ``diffusion_model.M`` + ``M.alpha`` (diffusers would double a ``transformer.``
prefix on a Qwen file that carries alpha tensors).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import atomic_write

BASES = {
    "flux": "FLUX.1 Kontext [dev] / FLUX.1 [dev] (19 double + 38 single blocks, width 3072)",
    "qwen_image": "Qwen-Image / Qwen-Image-Edit / -Edit-2509 (60 blocks, width 3072)",
}
BASE_NAMES = {"flux": "FLUX.1 Kontext", "qwen_image": "Qwen-Image-Edit"}

FORMAT_KEY = "motionnft.lora_format"
FORMAT_VERSION = "1"
# diffusers treats this header key as a PEFT config and then refuses alpha tensors.
_DIFFUSERS_CONFIG_KEY = "lora_adapter_metadata"

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

# (suffix of a key, part); longest first so ".lora_A.default.weight" wins over ".weight" forms.
_SUFFIXES = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# (prefix, layout, names are flattened with "_").
_PREFIXES = (
    ("base_model.model.", "peft", False),
    ("transformer.", "diffusers", False),
    ("diffusion_model.", "ai-toolkit", False),
    ("lora_unet_", "kohya", True),
    ("lora_transformer_", "onetrainer", True),
    ("lycoris_", "lycoris", True),
)
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "te_", "te1_", "te2_", "text_encoders.")

_BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks|double_blocks|single_blocks)\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^(single_transformer_blocks|transformer_blocks|double_blocks|single_blocks)_(\d+)_(.+)$")

PEFT_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG_FILE = "adapter_config.json"
OFFICIAL_RELEASE_ALPHA = 64.0
NO_ALPHA = "none in the file, so alpha = rank"
OFFICIAL_RELEASE_RANK = 32


@dataclass
class LoraModule:
    """One LoRA pair: ``delta W = (alpha / rank) · up @ down``.

    ``down`` ("A") is ``(rank, in_features)``, ``up`` ("B") is ``(out_features, rank)``.
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """The factor diffusers/PEFT and ComfyUI apply: ``alpha / rank``."""
        return float(self.alpha) / self.rank

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale · up @ down``, ``(out_features, in_features)``, computed in ``dtype``."""
        return self.scale * (self.up.to(dtype) @ self.down.to(dtype))


@dataclass
class LoraWeights:
    """A LoRA in canonical form.

    ``modules`` maps diffusers module names inside the transformer (no prefix) to their
    pair; ``base`` is ``"flux"`` (FLUX.1 dev / Kontext) or ``"qwen_image"`` (Qwen-Image,
    -Edit, -Edit-2509); ``metadata`` is the training metadata (safetensors header).
    ``layout`` names the layout it was read from, ``alpha_source`` where its alphas came
    from, and ``ignored_keys`` lists the keys of the file that are not transformer LoRA
    weights (text-encoder LoRAs, biases, ...), which loading skipped.
    """

    modules: dict[str, LoraModule]
    base: str
    metadata: dict[str, str] = field(default_factory=dict)
    layout: str = "motionnft"
    alpha_source: str = "file"
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules.values()})

    @property
    def alphas(self) -> list[float]:
        return sorted({float(m.alpha) for m in self.modules.values()})

    @property
    def scales(self) -> list[float]:
        return sorted({m.scale for m in self.modules.values()})

    @property
    def parameter_count(self) -> int:
        return sum(m.down.numel() + m.up.numel() for m in self.modules.values())

    def with_alpha(self, alpha: float) -> "LoraWeights":
        """The same LoRA with every module's alpha set to ``alpha`` (tensors shared)."""
        alpha = _check_alpha(alpha, "alpha")
        modules = {name: LoraModule(m.down, m.up, alpha) for name, m in self.modules.items()}
        return LoraWeights(modules, self.base, dict(self.metadata), self.layout, "given", list(self.ignored_keys))

    def target_modules(self) -> list[str]:
        """The distinct module names without block index (``attn.to_q``, ``img_mod.1``, ...)."""
        return sorted({_BLOCK.sub(r"\3", name) for name in self.modules})

    def describe(self) -> str:
        """A few lines for people: base, layout, size, ranks, alphas, scales, alpha source."""
        lines = [
            f"base: {self.base} ({BASES.get(self.base, 'unknown')})",
            f"layout: {self.layout}; {len(self.modules)} modules, {self.parameter_count / 1e6:.2f} M parameters",
            f"rank: {_listing(self.ranks)}; alpha: {_listing(self.alphas)}; "
            f"scale alpha/rank: {_listing(self.scales)} (alpha source: {self.alpha_source})",
            f"targets: {', '.join(self.target_modules())}",
        ]
        if self.alpha_source == NO_ALPHA:
            lines.append(
                "note: the file stores no alpha, so it is applied at scale 1. The official MotionEdit "
                f"release (adapter_model_converted.safetensors) was trained at alpha {OFFICIAL_RELEASE_ALPHA:g} / "
                f"rank {OFFICIAL_RELEASE_RANK} = scale 2: give alpha {OFFICIAL_RELEASE_ALPHA:g} to apply it as trained."
            )
        if self.ignored_keys:
            shown = ", ".join(self.ignored_keys[:8]) + (" ..." if len(self.ignored_keys) > 8 else "")
            lines.append(f"ignored {len(self.ignored_keys)} keys that are not transformer LoRA weights: {shown}")
        return "\n".join(lines)


def _listing(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "-"


def _check_alpha(alpha, name: str) -> float:
    value = float(alpha)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite alpha, got {alpha!r}")
    return value


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------

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
    _check_base(base)
    if base == "flux":
        double = 19 if double_blocks is None else double_blocks
        single = 38 if single_blocks is None else single_blocks
        names = [f"transformer_blocks.{i}.{s}" for i in range(double) for s in FLUX_DOUBLE]
        names += [f"single_transformer_blocks.{i}.{s}" for i in range(single) for s in FLUX_SINGLE]
        return names + list(FLUX_TOP)
    blocks = 60 if double_blocks is None else double_blocks
    return [f"transformer_blocks.{i}.{s}" for i in range(blocks) for s in QWEN_BLOCK] + list(QWEN_TOP)


def is_canonical_module(base: str, name: str) -> bool:
    match = _BLOCK.match(name)
    if match:
        family, _, suffix = match.groups()
        table = {"flux": {"transformer_blocks": FLUX_DOUBLE, "single_transformer_blocks": FLUX_SINGLE},
                 "qwen_image": {"transformer_blocks": QWEN_BLOCK}}[base].get(family, ())
        return suffix in table
    return name in (FLUX_TOP if base == "flux" else QWEN_TOP)


def _unflatten(name: str, base: str) -> str | None:
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


def _canonical_targets(name: str, base: str):
    """Map one dotted module name to ``[(canonical, row_unit_slice or None, swap)]`` or None."""
    match = _BLOCK.match(name)
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


# ----------------------------------------------------------------------------------------
# Base detection
# ----------------------------------------------------------------------------------------

_FLUX_NAME_EVIDENCE = re.compile(
    r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d+|"
    r"(^|[._])(norm1_context|ff_context|proj_mlp|x_embedder|context_embedder|guidance_in|vector_in|"
    r"guidance_embedder|text_embedder|final_layer)([._]|$)|[._]ff[._]net[._]|[._]norm1[._]linear"
)
_QWEN_NAME_EVIDENCE = re.compile(r"(^|[._])(img_mod|txt_mod|img_mlp|txt_mlp)[._]")
_BLOCK_INDEX = re.compile(r"(?<![a-z_])transformer_blocks[._](\d+)[._]")
FLUX_DOUBLE_BLOCKS = 19


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
        if width == 3584:  # Qwen2.5-VL text width (txt_in); Flux's T5 width is 4096
            qwen.append(name)
        elif width == 4096:
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


def _base_from_metadata(metadata: dict[str, str]) -> str | None:
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


def _check_base(base: str) -> str:
    if base not in BASES:
        raise ValueError(f"base: expected one of {', '.join(BASES)}, got {base!r}")
    return base


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------

@dataclass
class _RawModule:
    key_prefix: str  # the key without part suffix, as in the file
    name: str        # dotted module name (prefix removed, flattened names restored)
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    keys: list[str] = field(default_factory=list)


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _strip_prefix(stem: str) -> tuple[str, str, bool]:
    for prefix, layout, flat in _PREFIXES:
        if stem.startswith(prefix):
            rest = stem[len(prefix):]
            if layout == "peft":  # PEFT around a pipeline-less model may keep a further prefix
                for inner in ("transformer.", "diffusion_model."):
                    if rest.startswith(inner):
                        rest = rest[len(inner):]
            return rest, layout, flat
    return stem, "bare", False


def lora_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    base: str | None = None,
    alpha: float | None = None,
    default_alpha: float | None = None,
    alpha_pattern: dict[str, float] | None = None,
    metadata: dict[str, str] | None = None,
    default_alpha_source: str = "adapter_config.json",
) -> LoraWeights:
    """Normalise a LoRA state dict of any supported layout (see the module docstring).

    Alpha per module, first found: ``alpha`` (given: overrides all), the file's
    ``<module>.alpha`` tensor, ``alpha_pattern`` (PEFT: pattern -> alpha), ``default_alpha``
    (PEFT's ``lora_alpha``), else the rank (scale 1, what every loader assumes).
    ``base`` is checked against the names and shapes: a LoRA of the other base raises
    ``ValueError``; it decides only when the names fit both bases.
    """
    metadata = dict(metadata or {})
    if alpha is not None:
        alpha = _check_alpha(alpha, "alpha")
    dora = [key for key in state_dict if key.endswith((".dora_scale", ".lora_magnitude_vector", ".lora_magnitude_vector.weight"))]
    if dora:
        raise ValueError(f"DoRA weights ({dora[0]}) are not supported, only plain LoRA")
    raw: dict[str, _RawModule] = {}
    ignored: list[str] = []
    layouts: dict[str, int] = {}
    flat_stems: list[tuple[str, str, str, str]] = []
    for key, tensor in state_dict.items():
        split = _split_key(key)
        if split is None or not isinstance(tensor, torch.Tensor):
            ignored.append(key)
            continue
        stem, part = split
        if stem.startswith(_TEXT_ENCODER_PREFIXES):
            ignored.append(key)
            continue
        name, layout, flat = _strip_prefix(stem)
        layouts[layout] = layouts.get(layout, 0) + 1
        if flat:
            flat_stems.append((key, stem, name, part))
            continue
        module = raw.setdefault(stem, _RawModule(stem, name))
        _set_part(module, part, tensor, key)

    if not raw and not flat_stems:
        raise ValueError(_no_lora_message(ignored))
    names = [m.name for m in raw.values()] + [name for _, _, name, _ in flat_stems]
    widths = {m.name: int(m.down.shape[1]) for m in raw.values() if m.down is not None and m.down.ndim == 2}
    detected, reason = detect_base(names, widths)
    from_metadata = _base_from_metadata(metadata)
    if base is not None:
        _check_base(base)
        if detected is not None and detected != base:
            raise ValueError(
                f"this LoRA was made for {BASE_NAMES[detected]} ({reason}), not for {BASE_NAMES[base]}: "
                f"load it onto a {BASE_NAMES[detected]} model"
            )
        if detected is None and from_metadata is not None and from_metadata != base:
            raise ValueError(
                f"this LoRA's metadata says it was made for {BASE_NAMES[from_metadata]}, not for {BASE_NAMES[base]}"
            )
    else:
        base = detected or from_metadata
        if base is None:
            raise ValueError(
                f"cannot tell whether this LoRA is for Flux/Kontext or Qwen-Image ({reason}) and its metadata "
                "does not say: pass base='flux' or base='qwen_image'"
            )

    for key, stem, name, part in flat_stems:
        dotted = _unflatten(name, base)
        if dotted is None:
            ignored.append(key)
            continue
        module = raw.setdefault(stem, _RawModule(stem, dotted))
        _set_part(module, part, state_dict[key], key)

    modules: dict[str, LoraModule] = {}
    origin: dict[str, str] = {}
    sources = set()
    for module in raw.values():
        targets = _canonical_targets(module.name, base)
        if targets is None:
            ignored += module.keys
            continue
        if module.down is None or module.up is None:
            missing = "up (B)" if module.up is None else "down (A)"
            raise ValueError(f"LoRA module {module.key_prefix}: the {missing} weight is missing")
        down, up = module.down, module.up
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(
                f"LoRA module {module.key_prefix}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a "
                "(rank, in) / (out, rank) pair of a linear layer"
            )
        if alpha is not None:
            value, source = alpha, "given"
        elif module.alpha is not None:
            value, source = module.alpha, "the file's alpha tensors"
        else:
            value = _pattern_alpha(module.name, alpha_pattern) if alpha_pattern else None
            if value is not None:
                source = default_alpha_source
            elif default_alpha is not None:
                value, source = float(default_alpha), default_alpha_source
            else:
                value, source = float(down.shape[0]), NO_ALPHA
        sources.add(source)
        for canonical, rows, swap in targets:
            part_up = up
            if rows is not None:
                start, count, units = rows
                if up.shape[0] % units:
                    raise ValueError(
                        f"LoRA module {module.key_prefix}: up has {up.shape[0]} rows, expected a multiple of {units} "
                        "(fused projections)"
                    )
                width = up.shape[0] // units
                part_up = up[start * width:(start + count) * width]
            if swap:
                half = up.shape[0] // 2
                part_up = torch.cat([up[half:], up[:half]])
            if canonical in modules:
                raise ValueError(
                    f"LoRA modules {origin[canonical]} and {module.key_prefix} both target {canonical}"
                )
            modules[canonical] = LoraModule(down, part_up, _check_alpha(value, f"alpha of {module.key_prefix}"))
            origin[canonical] = module.key_prefix
    if not modules:
        raise ValueError(_no_lora_message(ignored))
    layout = max(layouts, key=layouts.get) if layouts else "bare"
    if FORMAT_KEY in metadata:
        layout = "motionnft"
    source = sources.pop() if len(sources) == 1 else " and ".join(sorted(sources))
    return LoraWeights(modules, base, metadata, layout, source, sorted(ignored))


def _no_lora_message(ignored: list[str]) -> str:
    return "no LoRA weights of a Flux/Kontext or Qwen-Image transformer found" + (
        f" (keys such as {', '.join(sorted(ignored)[:3])})" if ignored else " (no keys at all)"
    )


def _set_part(module: _RawModule, part: str, tensor: torch.Tensor, key: str) -> None:
    module.keys.append(key)
    if part == "alpha":
        if tensor.numel() != 1:
            raise ValueError(f"{key}: an alpha must be a single number, got shape {tuple(tensor.shape)}")
        module.alpha = float(tensor.reshape(()).item())
    elif getattr(module, part) is not None:
        raise ValueError(f"{key}: a second {part} weight for LoRA module {module.key_prefix}")
    else:
        setattr(module, part, tensor)


def _pattern_alpha(name: str, patterns: dict[str, float]) -> float | None:
    # PEFT matches a pattern against the end of the module name at a "." boundary.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(value)
    return None


def lora_from_peft_state_dict(
    state_dict: dict[str, torch.Tensor], alpha: float, base: str, metadata: dict[str, str] | None = None
) -> LoraWeights:
    """A PEFT state dict (``peft.get_peft_model_state_dict`` / a ``PeftModel``'s) as a LoRA.

    Keys ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` or
    ``<module>.lora_A.default.weight``; other keys (base weights) are ignored. ``alpha``
    is PEFT's ``lora_alpha`` (scale ``alpha / r``), ``base`` ``"flux"`` or ``"qwen_image"``.
    Tensors are detached, not copied.
    """
    _check_base(base)
    lora_only = {k: v.detach() for k, v in state_dict.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora_only:
        raise ValueError("state_dict: no PEFT LoRA keys (<module>.lora_A/lora_B[.default].weight) found")
    lora = lora_from_state_dict(lora_only, base=base, default_alpha=_check_alpha(alpha, "alpha"),
                                metadata=metadata, default_alpha_source="given")
    lora.layout = "peft"
    return lora


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors, metadata


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        return _read_safetensors(path)
    if path.suffix.lower() in (".bin", ".pt", ".pth", ".ckpt"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a weights file"
            raise ValueError(f"{path}: not a readable torch weights file ({error})") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
        return data, {}
    raise ValueError(f"{path}: expected a .safetensors file (or a PEFT .bin), got {path.suffix or 'no extension'}")


def read_adapter_config(path: str | Path) -> dict:
    """A PEFT ``adapter_config.json`` as a dict (``r``, ``lora_alpha``, ``alpha_pattern``, ...)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable adapter_config.json ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return config


def find_lora_file(path: str | Path) -> tuple[Path, Path | None]:
    """The weights file and the PEFT ``adapter_config.json`` (or None) for ``path``.

    ``path`` is a LoRA file or a PEFT adapter folder. A config next to a file is used
    (the official release ships its converted file beside the PEFT config).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        looked = [path / name for name in PEFT_WEIGHT_FILES]
        weights = next((p for p in looked if p.is_file()), None)
        if weights is None:
            others = sorted(p.name for p in path.glob("*.safetensors"))
            hint = f"; the folder has {', '.join(others)}: pass that file" if others else ""
            raise FileNotFoundError(
                f"{path}: no PEFT adapter weights found (looked for {', '.join(str(p) for p in looked)}){hint}"
            )
        config = path / PEFT_CONFIG_FILE
        return weights, config if config.is_file() else None
    if not path.is_file():
        raise FileNotFoundError(f"LoRA not found: {path} (no such file or folder)")
    config = path.parent / PEFT_CONFIG_FILE
    return path, config if config.is_file() else None


def load_lora(path: str | Path, *, alpha: float | None = None, base: str | None = None) -> LoraWeights:
    """Read a LoRA file (safetensors, any supported layout) or a PEFT adapter folder.

    ``alpha`` overrides every module's alpha (e.g. 64 for the official MotionEdit
    converted file, which lost it). ``base`` (``"flux"``/``"qwen_image"``) is checked
    against the weights and decides only when their names fit both bases. A PEFT
    ``adapter_config.json`` beside the weights gives ``lora_alpha`` (and
    ``alpha_pattern``, ``use_rslora``) to modules without an alpha tensor; its content is
    kept in ``metadata["adapter_config"]``.
    """
    weights_path, config_path = find_lora_file(path)
    tensors, metadata = _read_weights(weights_path)
    default_alpha = alpha_pattern = None
    source = "adapter_config.json"
    if config_path is not None:
        config = read_adapter_config(config_path)
        if config.get("use_dora"):
            raise ValueError(f"{config_path}: DoRA adapters (use_dora) are not supported, only plain LoRA")
        if config.get("lora_alpha") is not None:
            default_alpha = float(config["lora_alpha"])
            alpha_pattern = {k: float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
            if config.get("use_rslora"):
                # rsLoRA scales by alpha / sqrt(r): store the alpha that gives that scale at alpha / r.
                rank = int(config.get("r") or 1)
                default_alpha *= math.sqrt(rank)
                alpha_pattern = {k: v * math.sqrt(rank) for k, v in alpha_pattern.items()}
                source = "adapter_config.json (rsLoRA)"
        metadata.setdefault("adapter_config", json.dumps(config, sort_keys=True))
        if config.get("base_model_name_or_path"):
            metadata.setdefault("base_model_name_or_path", str(config["base_model_name_or_path"]))
    try:
        return lora_from_state_dict(
            tensors, base=base, alpha=alpha, default_alpha=default_alpha, alpha_pattern=alpha_pattern,
            metadata=metadata, default_alpha_source=source,
        )
    except ValueError as error:
        raise ValueError(f"{weights_path}: {error}") from None


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------

def export_prefix(base: str) -> str:
    """Key prefix of written files: what both ComfyUI versions and diffusers map with alpha."""
    return "transformer." if _check_base(base) == "flux" else "diffusion_model."


def export_state_dict(lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The tensors :func:`save_lora` writes: ``<prefix><module>.lora_A/lora_B.weight`` + ``.alpha``.

    Every module is written with the LoRA's most common alpha: a module with another
    alpha has the ratio folded into its B, so its ``alpha / rank · B·A`` is unchanged. (diffusers
    turns per-module alphas into PEFT ``alpha_pattern`` entries that match by name suffix,
    so the top-level ``proj_out``'s alpha would also hit every ``single_transformer_blocks.N.proj_out``.)
    Tensors are moved to the CPU, made contiguous, and copied where two modules share
    storage (the split of a fused projection), which safetensors refuses.
    """
    prefix = export_prefix(lora.base)
    if not lora.modules:
        raise ValueError("lora: has no modules")
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()

    def own(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.storage_offset()))
        return tensor

    common_alpha = most_common_alpha(lora)
    for name, module in sorted(lora.modules.items()):
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
        alpha = _check_alpha(module.alpha, f"alpha of {name}")
        up = module.up
        if alpha != common_alpha:
            up = (up.float() * (alpha / common_alpha)).to(up.dtype)
        out[f"{prefix}{name}.lora_A.weight"] = own(module.down)
        out[f"{prefix}{name}.lora_B.weight"] = own(up)
        out[f"{prefix}{name}.alpha"] = torch.tensor(common_alpha, dtype=torch.float32)
    return out


def most_common_alpha(lora: LoraWeights) -> float:
    """The alpha most modules have (the larger one on a tie)."""
    counts: dict[float, int] = {}
    for module in lora.modules.values():
        counts[float(module.alpha)] = counts.get(float(module.alpha), 0) + 1
    return max(counts, key=lambda a: (counts[a], a))


def training_metadata(lora: LoraWeights) -> dict[str, str]:
    """The header written by :func:`save_lora`: the LoRA's metadata plus what its weights say."""
    metadata = {str(k): str(v) for k, v in lora.metadata.items() if k != _DIFFUSERS_CONFIG_KEY}
    metadata.update({
        FORMAT_KEY: FORMAT_VERSION,
        "motionnft.base": lora.base,
        "motionnft.rank": _listing(lora.ranks),
        "motionnft.alpha": _listing(lora.alphas),
        "motionnft.target_modules": json.dumps(lora.target_modules()),
        "motionnft.modules": str(len(lora.modules)),
    })
    metadata.setdefault("format", "pt")
    return metadata


def save_lora(path: str | Path, lora: LoraWeights) -> Path:
    """Write ``lora`` atomically as a safetensors file; returns the path.

    ComfyUI's stock ``LoraLoaderModelOnly`` (0.3.64 and 0.8.0) and diffusers'
    ``load_lora_weights`` both apply it at ``alpha / rank`` per module. The header holds
    ``lora.metadata`` (strings) plus ``motionnft.*`` keys (base, rank, alpha, targets).
    """
    from safetensors.torch import save

    path = Path(path)
    _check_base(lora.base)
    for key, value in lora.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"lora.metadata: keys and values must be strings, got {key!r}: {type(value).__name__}")
    data = save(export_state_dict(lora), metadata=training_metadata(lora))
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


# ----------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------

def merge_lora(module: torch.nn.Module, lora: LoraWeights, strength: float = 1.0) -> list[str]:
    """Merge ``lora`` into the weights of ``module`` (a diffusers transformer), in place.

    For every LoRA module ``M`` with weight ``W`` ``(out, in)``:
    ``W ← W + strength · (alpha / rank) · up @ down``, computed in float32 on ``W``'s
    device and stored in ``W``'s dtype (what ComfyUI does when it loads a patched model).
    ``strength = 0`` leaves every weight untouched. Everything is checked before anything
    is changed, so a LoRA that does not fit leaves the model as it was.

    Args:
        module: the model whose submodules the LoRA's (diffusers) names address.
        lora: a :class:`LoraWeights` (:func:`load_lora`).
        strength: multiplies every module's ``alpha / rank``.
    Returns:
        the merged module names, sorted.
    Raises:
        ValueError: LoRA modules that match no linear layer of ``module`` (all listed,
            e.g. a LoRA of another model size), or a LoRA pair whose ``(out, in)`` differs
            from the layer's weight (the module and both shapes are named).
    """
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be finite, got {strength}")
    layers = dict(module.named_modules())
    unmatched, misfits, targets = [], [], {}
    for name, pair in sorted(lora.modules.items()):
        layer = layers.get(name)
        layer = getattr(layer, "base_layer", layer)  # a PEFT-wrapped layer
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            unmatched.append(name)
            continue
        shape = (int(pair.up.shape[0]), int(pair.down.shape[1]))
        if tuple(weight.shape) != shape:
            misfits.append(f"{name}: LoRA delta (out, in) = {shape} (up {tuple(pair.up.shape)}, down "
                           f"{tuple(pair.down.shape)}), layer weight {tuple(weight.shape)}")
            continue
        targets[name] = weight
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise ValueError(
            f"{len(unmatched)} of {len(lora.modules)} LoRA modules match no linear layer of the model ({shown}): "
            "a LoRA of another model or model size?"
        )
    if misfits:
        raise ValueError(f"{len(misfits)} LoRA module(s) do not fit the model's weights (a LoRA of another model "
                         "size?): " + "; ".join(misfits[:5]) + (" ..." if len(misfits) > 5 else ""))
    if strength != 0.0:
        with torch.no_grad():
            for name, weight in targets.items():
                pair = lora.modules[name]
                up = pair.up.to(weight.device, torch.float32)
                down = pair.down.to(weight.device, torch.float32)
                weight.copy_((weight.float() + (strength * pair.scale) * (up @ down)).to(weight.dtype))
    return sorted(targets)
