"""Merging a LoRA into a model's weights (what ComfyUI does when it loads a patched model)."""

from __future__ import annotations

import math

import torch

from .weights import LoraWeights


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
    targets = _target_weights(module, lora)
    if strength != 0.0:
        with torch.no_grad():
            for name, weight in targets.items():
                pair = lora.modules[name]
                up = pair.up.to(weight.device, torch.float32)
                down = pair.down.to(weight.device, torch.float32)
                weight.copy_((weight.float() + (strength * pair.scale) * (up @ down)).to(weight.dtype))
    return sorted(targets)


def _target_weights(module: torch.nn.Module, lora: LoraWeights) -> dict[str, torch.Tensor]:
    """The weight each LoRA module patches, by name; ValueError naming every module that does not fit."""
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
    return targets
