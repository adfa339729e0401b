"""State dicts of any layout -> :class:`LoraWeights`: group keys into modules, pick the base,
map names to canonical modules (splitting fused projections), and settle each alpha."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .detect import resolve_base
from .layouts import DORA_SUFFIXES, TEXT_ENCODER_PREFIXES, file_layout, read_stem, split_key
from .names import RowBlock, canonical_targets, check_base, unflatten
from .weights import NO_ALPHA, LoraModule, LoraWeights, check_alpha


@dataclass
class _RawModule:
    key_prefix: str  # the key without part suffix, as in the file
    name: str        # dotted module name (prefix removed, flattened names restored)
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    keys: list[str] = field(default_factory=list)


@dataclass
class _Collected:
    raw: dict[str, _RawModule] = field(default_factory=dict)
    flat: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(key, stem, flattened name, part): restored once the base is known."""
    ignored: list[str] = field(default_factory=list)
    layouts: dict[str, int] = field(default_factory=dict)


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
    """Normalise a LoRA state dict of any supported layout (see :mod:`motionnft.lora`).

    Alpha per module, first found: ``alpha`` (given: overrides all), the file's
    ``<module>.alpha`` tensor, ``alpha_pattern`` (PEFT: pattern -> alpha), ``default_alpha``
    (PEFT's ``lora_alpha``), else the rank (scale 1, what every loader assumes).
    ``base`` is checked against the names and shapes: a LoRA of the other base raises
    ``ValueError``; it decides only when the names fit both bases.
    """
    metadata = dict(metadata or {})
    if alpha is not None:
        alpha = check_alpha(alpha, "alpha")
    dora = [key for key in state_dict if key.endswith(DORA_SUFFIXES)]
    if dora:
        raise ValueError(f"DoRA weights ({dora[0]}) are not supported, only plain LoRA")
    found = _collect(state_dict)
    if not found.raw and not found.flat:
        raise ValueError(_no_lora_message(found.ignored))
    names = [m.name for m in found.raw.values()] + [name for _, _, name, _ in found.flat]
    widths = {m.name: int(m.down.shape[1]) for m in found.raw.values() if m.down is not None and m.down.ndim == 2}
    base = resolve_base(base, names, widths, metadata)
    _restore_flat(found, state_dict, base)

    modules: dict[str, LoraModule] = {}
    origin: dict[str, str] = {}
    sources = set()
    for module in found.raw.values():
        targets = canonical_targets(module.name, base)
        if targets is None:
            found.ignored += module.keys
            continue
        down = _checked_down(module)
        value, source = _module_alpha(module, alpha, default_alpha, alpha_pattern, default_alpha_source)
        sources.add(source)
        for canonical, part_up in _target_ups(module, targets):
            if canonical in modules:
                raise ValueError(f"LoRA modules {origin[canonical]} and {module.key_prefix} both target {canonical}")
            modules[canonical] = LoraModule(down, part_up, check_alpha(value, f"alpha of {module.key_prefix}"))
            origin[canonical] = module.key_prefix
    if not modules:
        raise ValueError(_no_lora_message(found.ignored))
    source = sources.pop() if len(sources) == 1 else " and ".join(sorted(sources))
    return LoraWeights(modules, base, metadata, file_layout(found.layouts, metadata), source, sorted(found.ignored))


def lora_from_peft_state_dict(
    state_dict: dict[str, torch.Tensor], alpha: float, base: str, metadata: dict[str, str] | None = None
) -> LoraWeights:
    """A PEFT state dict (``peft.get_peft_model_state_dict`` / a ``PeftModel``'s) as a LoRA.

    Keys ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` or
    ``<module>.lora_A.default.weight``; other keys (base weights) are ignored. ``alpha``
    is PEFT's ``lora_alpha`` (scale ``alpha / r``), ``base`` ``"flux"`` or ``"qwen_image"``.
    Tensors are detached, not copied.
    """
    check_base(base)
    lora_only = {k: v.detach() for k, v in state_dict.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora_only:
        raise ValueError("state_dict: no PEFT LoRA keys (<module>.lora_A/lora_B[.default].weight) found")
    lora = lora_from_state_dict(lora_only, base=base, default_alpha=check_alpha(alpha, "alpha"),
                                metadata=metadata, default_alpha_source="given")
    lora.layout = "peft"
    return lora


def _collect(state_dict: dict[str, torch.Tensor]) -> _Collected:
    """Group the keys into modules by stem; flattened names wait for the base to be known."""
    found = _Collected()
    for key, tensor in state_dict.items():
        split = split_key(key)
        if split is None or not isinstance(tensor, torch.Tensor) or split[0].startswith(TEXT_ENCODER_PREFIXES):
            found.ignored.append(key)
            continue
        stem, part = split
        name, layout, flat = read_stem(stem)
        found.layouts[layout] = found.layouts.get(layout, 0) + 1
        if flat:
            found.flat.append((key, stem, name, part))
            continue
        _set_part(found.raw.setdefault(stem, _RawModule(stem, name)), part, tensor, key)
    return found


def _restore_flat(found: _Collected, state_dict: dict[str, torch.Tensor], base: str) -> None:
    # "_" is both a separator and part of names, so only the base's name tables can undo the flattening.
    for key, stem, name, part in found.flat:
        dotted = unflatten(name, base)
        if dotted is None:
            found.ignored.append(key)
            continue
        _set_part(found.raw.setdefault(stem, _RawModule(stem, dotted)), part, state_dict[key], key)


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


def _checked_down(module: _RawModule) -> torch.Tensor:
    """The module's ``down``, once both weights are there and form a linear layer's pair."""
    if module.down is None or module.up is None:
        missing = "up (B)" if module.up is None else "down (A)"
        raise ValueError(f"LoRA module {module.key_prefix}: the {missing} weight is missing")
    down, up = module.down, module.up
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise ValueError(
            f"LoRA module {module.key_prefix}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a "
            "(rank, in) / (out, rank) pair of a linear layer"
        )
    return down


def _module_alpha(module: _RawModule, alpha: float | None, default_alpha: float | None,
                  alpha_pattern: dict[str, float] | None, default_source: str) -> tuple[float, str]:
    """``(alpha, where it came from)``: given, the file's tensor, PEFT's pattern or default, else the rank."""
    if alpha is not None:
        return alpha, "given"
    if module.alpha is not None:
        return module.alpha, "the file's alpha tensors"
    value = _pattern_alpha(module.name, alpha_pattern) if alpha_pattern else None
    if value is not None:
        return value, default_source
    if default_alpha is not None:
        return float(default_alpha), default_source
    return float(module.down.shape[0]), NO_ALPHA


def _pattern_alpha(name: str, patterns: dict[str, float]) -> float | None:
    # PEFT matches a pattern against the end of the module name at a "." boundary.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return float(value)
    return None


def _target_ups(module: _RawModule, targets: list[tuple[str, RowBlock | None, bool]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(canonical name, its up)`` per target: a fused ``B`` cut into row blocks, BFL halves swapped."""
    up = module.up
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
        yield canonical, part_up


def _no_lora_message(ignored: list[str]) -> str:
    return "no LoRA weights of a Flux/Kontext or Qwen-Image transformer found" + (
        f" (keys such as {', '.join(sorted(ignored)[:3])})" if ignored else " (no keys at all)"
    )
