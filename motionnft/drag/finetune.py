"""Scene fine-tuning: start a run from trained weights (``--init``), LoRA on FlowGen, merged exports.

InstantDrag's general-scene setting fine-tunes both networks on a short video of the scene.
A run that starts from a file must resume on the same file: a LoRA checkpoint does not hold
the weights under it, and a full one would silently mix two starting points. So a run records
an :class:`InitRecord` (the file's path and a signature of its weights) and refuses to resume
on another (:func:`check_same_init`), as a ``--base`` run records its SD 1.5 checkpoint.

FlowGen's LoRA goes on its ``Conv2d`` layers only (the encoder and nothing of the decoder):
peft 0.21 has no LoRA layer for ``ConvTranspose2d``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SIGNATURE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class InitRecord:
    """Where a run's starting weights came from: ``path`` (as given) and ``signature``
    (:func:`state_signature` of the weights loaded from it)."""

    path: str
    signature: float

    def as_dict(self) -> dict:
        return {"path": self.path, "signature": self.signature}


def state_signature(state: dict[str, torch.Tensor]) -> float:
    """Σ |w| over every floating tensor of ``state`` in float64: cheap (one pass), and a
    different training run or file changes it."""
    from .flowdiffusion_files import tensor_signature

    return float(sum(tensor_signature(value) for value in state.values() if value.is_floating_point()))


def check_same_init(saved: dict | None, given: InitRecord | None, where: Path | str) -> None:
    """ValueError unless a checkpoint's recorded init (``saved``, a dict or None/"") and this
    run's ``given`` are both absent or are the same weights (signatures equal)."""
    if saved and given is None:
        raise ValueError(f"{where}: a run fine-tuned from --init {saved['path']}; resume it with that --init "
                         "again")
    if given is not None and not saved:
        raise ValueError(f"{where}: a run without --init; it cannot continue from --init {given.path}: use "
                         "another --out")
    if saved and given is not None:
        expected = float(saved["signature"])
        if abs(expected - given.signature) > SIGNATURE_TOLERANCE * max(abs(expected), 1e-12):
            raise ValueError(f"{where}: the run started from --init {saved['path']}, and --init {given.path} holds "
                             f"other weights (sum of |w| {given.signature:.10g} vs {expected:.10g}); resume with "
                             "the same file or use another --out")


def conv2d_names(module: nn.Module) -> list[str]:
    """The names of ``module``'s ``nn.Conv2d`` layers (what a FlowGen LoRA adapts)."""
    return [name for name, layer in module.named_modules() if type(layer) is nn.Conv2d]


def add_conv_lora(module: nn.Module, rank: int, seed: int = 0) -> list[str]:
    """Freeze ``module`` and inject a peft LoRA (alpha = rank) into every ``Conv2d``.

    B starts at zero (peft's default), so the module computes exactly what it did before. A's
    initial weights come from the global RNG: drawn here under ``seed`` without touching the
    caller's RNG state. Returns the names of the trainable (LoRA) parameters.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"rank: expected >= 1, got {rank}")
    targets = conv2d_names(module)
    module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), module)
    names = []
    for name, parameter in module.named_parameters():
        parameter.requires_grad_("lora_" in name)
        if "lora_" in name:
            names.append(name)
    return names


def merged_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s tensors under the plain layer names, each peft LoRA layer's weight replaced
    by ``base + scaling · B·A`` (the model the LoRA computes, as one plain state dict)."""
    merged = {}
    for name, layer in module.named_modules():
        if hasattr(layer, "get_delta_weight") and hasattr(layer, "base_layer"):
            base = layer.base_layer
            delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
            merged[f"{name}.weight"] = base.weight.detach() + delta.to(base.weight.dtype)
            if base.bias is not None:
                merged[f"{name}.bias"] = base.bias.detach()
    state = {name: tensor.detach() for name, tensor in module.state_dict().items()
             if "lora_" not in name and ".base_layer." not in name}
    state.update(merged)
    return state


def load_flowgen_init(path: str | os.PathLike):
    """``(generator, InitRecord)`` of a FlowGen file / run folder (:func:`.inference.load_flowgen`);
    FileNotFoundError / ValueError name ``--init``. The generator's ``working_size`` is the file's
    (a run folder's: that of the flowgen.safetensors beside its checkpoints, else ``2 ** depth``)."""
    from .inference import FILE_NAME, load_flowgen

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init {path}: no such FlowGen file or run folder (expected a flowgen.safetensors "
                                "from train-drag)")
    try:
        generator = load_flowgen(path)
        if getattr(generator, "working_size", None) is None:
            beside = path / FILE_NAME if path.is_dir() else path.parent / FILE_NAME
            generator.working_size = (load_flowgen(beside).working_size if beside.is_file()
                                      else generator.config.multiple)
    except (OSError, ValueError) as error:
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        raise type(error)(f"--init {message}") from None
    return generator, InitRecord(str(path), state_signature(generator.state_dict()))
