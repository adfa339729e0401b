"""LoRA weights in one canonical form, and the safetensors files ComfyUI and diffusers load.

Canonical form (:class:`LoraWeights`): module names as diffusers names them inside the
transformer, without any prefix (``transformer_blocks.0.attn.to_q``), each with its
``down`` (A, ``(rank, in)``) and ``up`` (B, ``(out, rank)``) matrices and its ``alpha``
(the update applied is ``alpha / rank · up @ down``).

Files written by :func:`save_lora`:

- FLUX.1 (Kontext) — ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight`` /
  ``.alpha``: the diffusers key layout, which ComfyUI maps onto its fused Flux layers and
  diffusers' ``load_lora_weights`` reads with the alphas.
- Qwen-Image (-Edit, -Edit-2509) — ``diffusion_model.<module>.lora_A.weight`` /
  ``.lora_B.weight`` / ``.alpha``: ComfyUI's generic layout (its Qwen-Image module names
  are diffusers' names), which diffusers' Qwen-Image loader also converts.

Every file carries one scalar ``.alpha`` tensor per module, so no loader falls back to
``alpha = rank``, and the training metadata (string to string) in the safetensors header.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import atomic_write

BASES = ("flux", "qwen_image")
_FILE_PREFIX = {"flux": "transformer.", "qwen_image": "diffusion_model."}
# Prefixes that other tools put before the canonical module name.
_KNOWN_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.", "unet.")
_PEFT_KEY = re.compile(r"^(?P<module>.+?)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[A-Za-z0-9_]+))?\.weight$")


@dataclass
class LoraModule:
    down: torch.Tensor
    """"A": ``(rank, in_features)``."""
    up: torch.Tensor
    """"B": ``(out_features, rank)``."""
    alpha: float
    """The effective scale of the update is ``alpha / rank``."""

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The weight update ``alpha / rank · up @ down``, ``(out_features, in_features)``."""
        return (self.alpha / self.rank) * (self.up.float() @ self.down.float())


@dataclass
class LoraWeights:
    modules: dict[str, LoraModule]
    """Canonical keys: diffusers module names inside the transformer, no prefix."""
    base: str
    """``"flux"`` (FLUX.1 dev / Kontext) or ``"qwen_image"`` (Qwen-Image / -Edit / -Edit-2509)."""
    metadata: dict[str, str] = field(default_factory=dict)


def _check_base(base: str) -> str:
    if base not in BASES:
        raise ValueError(f"LoRA base {base!r}: expected one of {', '.join(BASES)}")
    return base


def _strip_prefix(module: str) -> str:
    for prefix in _KNOWN_PREFIXES:
        if module.startswith(prefix):
            return module[len(prefix):]
    return module


def lora_from_peft_state_dict(
    state_dict: dict[str, torch.Tensor], alpha: float, base: str, metadata: dict[str, str] | None = None
) -> LoraWeights:
    """Canonical LoRA weights from a PEFT state dict.

    Accepts ``base_model.model.<module>.lora_A.weight`` (``PeftModel.state_dict()`` after
    ``get_peft_model_state_dict``), ``<module>.lora_A.<adapter>.weight`` (a model with
    injected adapters) and ``<module>.lora_A.weight``. Keys that are not LoRA matrices
    are ignored; with several adapters in one state dict, pass only one adapter's keys.

    Raises:
        ValueError: no LoRA matrix found, an A without its B (or the reverse), a rank
            mismatch, or more than one adapter name.
    """
    _check_base(base)
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    adapters = set()
    for key, tensor in state_dict.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            continue
        module = _strip_prefix(match["module"])
        adapters.add(match["adapter"])
        (downs if match["which"] == "A" else ups)[module] = tensor.detach()
    if not downs and not ups:
        raise ValueError("no LoRA matrices (keys '<module>.lora_A/lora_B[.<adapter>].weight') in the state dict")
    if len(adapters) > 1:
        raise ValueError(f"the state dict holds several adapters ({sorted(a or '' for a in adapters)}): pass one")
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise ValueError(f"LoRA modules without both lora_A and lora_B: {', '.join(unpaired[:5])}")
    modules = {}
    for name in sorted(downs):
        down, up = downs[name], ups[name]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{name}: lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)} do not form a LoRA")
        modules[name] = LoraModule(down=down, up=up, alpha=float(alpha))
    return LoraWeights(modules=modules, base=base, metadata=dict(metadata or {}))


def save_lora(path: str | os.PathLike, lora: LoraWeights) -> Path:
    """Write ``lora`` as a safetensors file (atomically) in the layout of its base model.

    Tensors are stored contiguous in their own dtype; alphas as float32 scalars. The
    metadata (strings) goes into the safetensors header, with ``motionnft.base``.
    """
    from safetensors.torch import save

    base = _check_base(lora.base)
    if not lora.modules:
        raise ValueError("save_lora: the LoRA has no modules")
    prefix = _FILE_PREFIX[base]
    tensors: dict[str, torch.Tensor] = {}
    for name, module in lora.modules.items():
        key = prefix + _strip_prefix(name)
        tensors[f"{key}.lora_A.weight"] = module.down.detach().cpu().contiguous()
        tensors[f"{key}.lora_B.weight"] = module.up.detach().cpu().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(module.alpha), dtype=torch.float32)
    metadata = {str(k): str(v) for k, v in lora.metadata.items()}
    metadata.setdefault("format", "pt")
    metadata["motionnft.base"] = base
    path = Path(path)
    data = save(tensors, metadata=metadata)
    with atomic_write(path) as handle:
        handle.write(data)
    return path


def load_lora(path: str | os.PathLike) -> LoraWeights:
    """Read a LoRA safetensors file: this project's files, diffusers and PEFT files.

    Alphas come from ``.alpha`` tensors when present; otherwise from a PEFT
    ``adapter_config.json`` next to the file; otherwise ``alpha = rank`` (what diffusers
    and ComfyUI assume for files without alphas).
    """
    import json

    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    alphas = {_strip_prefix(key[: -len(".alpha")]): float(value) for key, value in tensors.items() if key.endswith(".alpha")}
    config_alpha = None
    config_file = path.with_name("adapter_config.json")
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config_alpha = float(config.get("lora_alpha", config.get("r", 0))) or None
    base = metadata.get("motionnft.base")
    if base is None:
        base = "qwen_image" if any(k.startswith("diffusion_model.") or "img_mlp" in k for k in tensors) else "flux"
    lora = lora_from_peft_state_dict(tensors, alpha=1.0, base=base, metadata=metadata)
    for name, module in lora.modules.items():
        module.alpha = alphas.get(name, config_alpha if config_alpha is not None else float(module.rank))
    return lora
