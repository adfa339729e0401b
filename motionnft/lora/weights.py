"""A LoRA in canonical form: one ``(down, up, alpha)`` pair per diffusers module name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .names import BASES, block_suffix

NO_ALPHA = "none in the file, so alpha = rank"
OFFICIAL_RELEASE_ALPHA = 64.0
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
        alpha = check_alpha(alpha, "alpha")
        modules = {name: LoraModule(m.down, m.up, alpha) for name, m in self.modules.items()}
        return LoraWeights(modules, self.base, dict(self.metadata), self.layout, "given", list(self.ignored_keys))

    def target_modules(self) -> list[str]:
        """The distinct module names without block index (``attn.to_q``, ``img_mod.1``, ...)."""
        return sorted({block_suffix(name) for name in self.modules})

    def describe(self) -> str:
        """A few lines for people: base, layout, size, ranks, alphas, scales, alpha source."""
        lines = [
            f"base: {self.base} ({BASES.get(self.base, 'unknown')})",
            f"layout: {self.layout}; {len(self.modules)} modules, {self.parameter_count / 1e6:.2f} M parameters",
            f"rank: {listing(self.ranks)}; alpha: {listing(self.alphas)}; "
            f"scale alpha/rank: {listing(self.scales)} (alpha source: {self.alpha_source})",
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


def most_common_alpha(lora: LoraWeights) -> float:
    """The alpha most modules have (the larger one on a tie)."""
    counts: dict[float, int] = {}
    for module in lora.modules.values():
        counts[float(module.alpha)] = counts.get(float(module.alpha), 0) + 1
    return max(counts, key=lambda a: (counts[a], a))


def listing(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "-"


def check_alpha(alpha, name: str) -> float:
    value = float(alpha)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a positive finite alpha, got {alpha!r}")
    return value
