"""Load MotionNFT LoRA (Kontext / Qwen-Image-Edit): patch a MODEL through ComfyUI's patcher.

One node per base, so a graph says which base a LoRA belongs to. The file is read and
normalised by ``motionnft.lora`` (any layout), written back as the state dict ComfyUI's
own loader maps, and turned into patches by ComfyUI's key map and ``load_lora`` — the
path of ``comfy.sd.load_lora_for_models`` — on a clone of the model: no weight is copied;
the patches are merged when ComfyUI loads the model, as for its stock loader.
"""

from __future__ import annotations

import logging
import os
import time

from comfy_api.latest import io

import comfy.lora
import comfy.model_management
import folder_paths

from ..motionnft.lora import (
    BASE_NAMES,
    BASES,
    OFFICIAL_RELEASE_ALPHA,
    LoraWeights,
    export_prefix,
    export_state_dict,
    load_lora,
)
from .common import CATEGORY, progress_callback

LORA_FOLDER = "loras"
METADATA_SHOWN = 40
METADATA_VALUE_CHARS = 240
_cache: dict[tuple, LoraWeights] = {}


def model_base(model) -> str | None:
    """The ``motionnft.lora`` base of a ComfyUI MODEL (None for any other model)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    image_model = (getattr(config, "unet_config", None) or {}).get("image_model")
    return image_model if image_model in BASES else None


def lora_path(lora_name: str) -> str:
    path = folder_paths.get_full_path(LORA_FOLDER, lora_name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(LORA_FOLDER)) or "(none registered)"
        raise FileNotFoundError(f"lora_name: {lora_name!r} is not in the loras folders ({folders})")
    return path


def read_lora(path: str, base: str, alpha: float | None) -> LoraWeights:
    """``load_lora`` with a one-entry cache keyed by the file's identity and the alpha."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, base, alpha)
    if key not in _cache:
        _cache.clear()
        _cache[key] = load_lora(path, base=base, alpha=alpha)
    return _cache[key]


def metadata_lines(metadata: dict[str, str]) -> list[str]:
    shown = []
    for key in sorted(metadata)[:METADATA_SHOWN]:
        value = " ".join(str(metadata[key]).split())
        if len(value) > METADATA_VALUE_CHARS:
            value = value[:METADATA_VALUE_CHARS] + f"... ({len(metadata[key])} chars)"
        shown.append(f"  {key}: {value}")
    if len(metadata) > METADATA_SHOWN:
        shown.append(f"  ... and {len(metadata) - METADATA_SHOWN} more keys")
    return shown


def _target_shape(model_state: dict, target) -> tuple[str, tuple[int, ...]] | None:
    key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
    weight = model_state.get(key)
    if weight is None:
        return None
    shape = list(weight.shape)
    if offset is not None:
        shape[offset[0]] = offset[2]
    return key, tuple(shape)


def patch_model(model, lora: LoraWeights, strength: float, progress=None):
    """Patch a clone of ``model``; returns ``(patched, matched module names, unmatched names)``.

    Raises ValueError when a matched module's shape differs from the model's weight (a
    LoRA for another model size) or when nothing matches.
    """
    prefix = export_prefix(lora.base)
    state = export_state_dict(lora)
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    model_state = model.model.state_dict()
    if progress:
        progress(1, 3)
    matched, unmatched, wrong = [], [], []
    for name, module in lora.modules.items():
        target = key_map.get(prefix + name)
        found = _target_shape(model_state, target) if target is not None else None
        if found is None:
            unmatched.append(name)
            continue
        key, shape = found
        lora_shape = (module.up.shape[0], module.down.shape[1])
        if tuple(shape) != lora_shape:
            wrong.append(f"{name} is {lora_shape[0]}x{lora_shape[1]} but the model's {key} is {'x'.join(map(str, shape))}")
        matched.append(name)
    if wrong:
        raise ValueError(
            f"{len(wrong)} LoRA modules do not fit the model's weights, e.g. {'; '.join(wrong[:3])}: this LoRA was "
            "made for a model of another size"
        )
    if not matched:
        raise ValueError(
            f"none of the {len(lora.modules)} LoRA modules matches a weight of this {BASE_NAMES[lora.base]} model "
            f"(e.g. {', '.join(sorted(lora.modules)[:3])})"
        )
    patches = comfy.lora.load_lora(state, key_map, log_missing=False)
    if progress:
        progress(2, 3)
    patched = model.clone()
    applied = set(patched.add_patches(patches, strength))
    missing = [name for name in matched if key_map[prefix + name] not in applied]
    if missing:
        unmatched += missing
        matched = [name for name in matched if name not in missing]
        if not matched:
            raise ValueError(f"ComfyUI accepted none of the {len(lora.modules)} LoRA modules as patches")
    if progress:
        progress(3, 3)
    return patched, matched, sorted(unmatched)


def summary(lora_name: str, lora: LoraWeights, strength: float, matched, unmatched, timings) -> str:
    scales = ", ".join(f"{s:g}" for s in lora.scales)
    lines = [
        f"{lora_name}: {len(matched)} of {len(lora.modules)} LoRA modules patched onto the "
        f"{BASE_NAMES[lora.base]} model at strength {strength:g} x scale alpha/rank {scales} "
        f"= {', '.join(f'{strength * s:g}' for s in lora.scales)}",
        lora.describe(),
    ]
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        lines.append(f"NOT MATCHED ({len(unmatched)} modules, left out): {shown}")
    lines.append("timing: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in timings))
    if lora.metadata:
        lines.append(f"metadata ({len(lora.metadata)} keys):")
        lines += metadata_lines(lora.metadata)
    else:
        lines.append("metadata: none in the file")
    return "\n".join(lines)


class _LoadMotionLora(io.ComfyNode):
    """Shared by the per-base loaders; ``BASE`` picks the base."""

    BASE = ""
    MODEL_LABEL = ""

    @classmethod
    def _schema(cls, node_id: str) -> io.Schema:
        other = [label for base, label in BASE_NAMES.items() if base != cls.BASE][0]
        return io.Schema(
            node_id=node_id,
            display_name=f"Load MotionNFT LoRA ({cls.MODEL_LABEL}) (MotionNFT)",
            category=CATEGORY,
            description=(
                f"Applies a LoRA made for {BASES[cls.BASE]} to a {cls.MODEL_LABEL} MODEL (e.g. from Load Diffusion "
                "Model). Reads this project's files, PEFT adapters (alpha from adapter_config.json), the official "
                "MotionEdit release, kohya/musubi, ai-toolkit and diffusers files. Reports how many modules matched "
                f"and the file's metadata; refuses a LoRA made for {other} or one that matches nothing."
            ),
            inputs=[
                io.Model.Input("model", tooltip=f"A {cls.MODEL_LABEL} diffusion model."),
                io.Combo.Input(
                    "lora_name", options=folder_paths.get_filename_list(LORA_FOLDER),
                    tooltip="A LoRA file in models/loras (a PEFT folder there: pick its adapter_model.safetensors).",
                ),
                io.Float.Input(
                    "strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="Multiplies the LoRA's effect, on top of its scale alpha/rank.",
                ),
                io.Float.Input(
                    "alpha", default=0.0, min=0.0, max=4096.0, step=1.0,
                    tooltip=(
                        "0 = the file's alpha (or its adapter_config.json's; rank if it has none). Any other value "
                        "replaces every module's alpha: the official MotionEdit adapter_model_converted.safetensors "
                        f"lost its alpha; set {OFFICIAL_RELEASE_ALPHA:g} to apply it at its trained scale 2."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, model, lora_name, strength, alpha):
        # Re-run when the file changes on disk, not only when the name does.
        path = folder_paths.get_full_path(LORA_FOLDER, lora_name)
        if path is None:
            return lora_name
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, model, lora_name, strength, alpha) -> io.NodeOutput:
        base = model_base(model)
        if base != cls.BASE:
            config = getattr(getattr(model, "model", None), "model_config", None)
            found = (getattr(config, "unet_config", None) or {}).get("image_model") or type(getattr(model, "model", model)).__name__
            hint = f"; use Load MotionNFT LoRA ({BASE_NAMES[base]})" if base in BASE_NAMES else ""
            raise ValueError(f"model: this node patches a {cls.MODEL_LABEL} model, the MODEL given is {found!r}{hint}")
        progress = progress_callback(3)
        path = lora_path(lora_name)
        start = time.perf_counter()
        lora = read_lora(path, cls.BASE, alpha if alpha > 0 else None)
        read_ms = 1000 * (time.perf_counter() - start)
        comfy.model_management.throw_exception_if_processing_interrupted()
        start = time.perf_counter()
        patched, matched, unmatched = patch_model(model, lora, strength, progress)
        patch_ms = 1000 * (time.perf_counter() - start)
        text = summary(lora_name, lora, strength, matched, unmatched,
                       [("read + normalise", read_ms), ("map + register patches", patch_ms)])
        if unmatched:
            logging.warning("MotionNFT LoRA %s: %d modules not matched: %s", lora_name, len(unmatched), ", ".join(unmatched))
        logging.info("MotionNFT LoRA %s", text.splitlines()[0])
        return io.NodeOutput(patched, text, ui={"text": [text], "motionnft_lora": [{
            "base": lora.base, "layout": lora.layout, "modules": len(lora.modules), "matched": len(matched),
            "unmatched": unmatched, "scales": lora.scales, "alpha_source": lora.alpha_source,
            "ignored_keys": lora.ignored_keys[:50],
        }]})


class LoadMotionLoraKontext(_LoadMotionLora):
    BASE = "flux"
    MODEL_LABEL = "FLUX.1 Kontext"

    @classmethod
    def define_schema(cls):
        return cls._schema(node_id="MotionNFT_LoadLoraKontext")


class LoadMotionLoraQwenImageEdit(_LoadMotionLora):
    BASE = "qwen_image"
    MODEL_LABEL = "Qwen-Image-Edit"

    @classmethod
    def define_schema(cls):
        return cls._schema(node_id="MotionNFT_LoadLoraQwenImageEdit")
