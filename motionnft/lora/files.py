"""LoRA files on disk: find the weights (a file or a PEFT folder), read them, write them atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..files import atomic_write, remove_stale_temporaries
from .export import export_state_dict, training_metadata
from .names import check_base
from .read import lora_from_state_dict
from .weights import LoraWeights

PEFT_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG_FILE = "adapter_config.json"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors on the CPU, header metadata)`` of a safetensors file; ValueError if unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors, metadata


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinite values (a diverged run): applied, they turn every
    output into NaN. ValueError naming ``path``, how many tensors, and the first few."""
    bad = [key for key, value in tensors.items()
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values, e.g. {', '.join(sorted(bad)[:3])}"
                         " (a diverged training run?); refusing to use them")


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if path.suffix.lower() in (".safetensors", ".sft"):
        return read_safetensors(path)
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


def _adapter_alphas(config: dict, config_path: Path) -> tuple[float | None, dict[str, float] | None, str]:
    """``(lora_alpha, alpha_pattern, alpha source)`` of a PEFT config, rsLoRA turned into plain alphas."""
    if config.get("use_dora"):
        raise ValueError(f"{config_path}: DoRA adapters (use_dora) are not supported, only plain LoRA")
    if config.get("lora_alpha") is None:
        return None, None, "adapter_config.json"
    default_alpha = float(config["lora_alpha"])
    alpha_pattern = {k: float(v) for k, v in (config.get("alpha_pattern") or {}).items()}
    if not config.get("use_rslora"):
        return default_alpha, alpha_pattern, "adapter_config.json"
    # rsLoRA scales by alpha / sqrt(r): store the alpha that gives that scale at alpha / r.
    root = math.sqrt(int(config.get("r") or 1))
    return default_alpha * root, {k: v * root for k, v in alpha_pattern.items()}, "adapter_config.json (rsLoRA)"


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
    check_finite(tensors, weights_path)
    default_alpha = alpha_pattern = None
    source = "adapter_config.json"
    if config_path is not None:
        config = read_adapter_config(config_path)
        default_alpha, alpha_pattern, source = _adapter_alphas(config, config_path)
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


def save_lora(path: str | Path, lora: LoraWeights) -> Path:
    """Write ``lora`` atomically as a safetensors file; returns the path.

    ComfyUI's stock ``LoraLoaderModelOnly`` (0.3.64 and 0.8.0) and diffusers'
    ``load_lora_weights`` both apply it at ``alpha / rank`` per module. The header holds
    ``lora.metadata`` (strings) plus ``motionnft.*`` keys (base, rank, alpha, targets).
    """
    from safetensors.torch import save

    path = Path(path)
    check_base(lora.base)
    for key, value in lora.metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"lora.metadata: keys and values must be strings, got {key!r}: {type(value).__name__}")
    data = save(export_state_dict(lora), metadata=training_metadata(lora))
    remove_stale_temporaries(path.parent, f".{path.name}.")  # a large file: a killed write must not pile up
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path
