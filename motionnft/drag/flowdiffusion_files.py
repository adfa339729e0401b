"""FlowDiffusion weight files: one safetensors file, in three kinds.

A file (:func:`save_flowdiffusion`) has in its header ``format = motionnft-flowdiffusion``, the
``kind``, the 10-channel UNet's diffusers config (JSON), the ``prediction_type``, the codec
(:class:`CodecSpec`: ``pooled`` with its factor and scale for the tiny model, ``sd-vae`` with
SD 1.5's 0.18215), the square ``working_size`` the model was trained at, and per kind:

- ``full``: every tensor of the :class:`~.flowdiffusion.FlowDiffusion` (``unet.*`` and
  ``null_text``), LoRA merged. Loads alone (the tiny model, a model trained from scratch).
- ``delta``: for a model fine-tuned from an SD 1.5 UNet (``from_sd_unet(base)``). Holds the tensors
  that differ from the base, *whole* (bitwise comparison), the 10-channel ``conv_in`` and
  ``null_text``; tensors equal to the base's are left out and taken from it at load. Whole rather
  than subtracted because ``(w - b) + b`` is not ``w`` in floating point: this is exact, and no
  larger than a subtracted delta of the same dtype. The header keeps each left-out tensor's
  float64 sum of absolute values (``base_signature``); a base whose tensors differ by more than
  a relative 1e-3 (more than fp16 / bf16 rounding) is refused as another base.
- ``lora``: the peft LoRA tensors (``lora_rank``, ``lora_alpha``, ``lora_targets`` in the header)
  plus ``conv_in`` (its new image / flow channels are not in any SD 1.5) and ``null_text``; the
  base supplies everything else. Tiny: 2 x rank x width per projection.

:func:`load_flowdiffusion_file` reads any kind; ``delta`` and ``lora`` need the SD 1.5 UNet they
were made from (a 4-channel diffusers UNet: from diffusers, or a ComfyUI checkpoint through
:func:`.sd_unet.unet_from_sd_state`). The official InstantDrag checkpoints are not read: their
licence is research-only (see docs/drag.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..files import atomic_write
from .finetune import merged_state
from .flowdiffusion import IN_CHANNELS, PREDICTION_TYPES, FlowDiffusion, from_sd_unet
from .flowdiffusion_conditioning import SD15_LATENT_SCALE, PooledRGBCodec

FORMAT = "motionnft-flowdiffusion"
"""The ``format`` value of a FlowDiffusion file's safetensors header."""

FILE_NAME = "flowdiffusion.safetensors"
"""What ``motionnft train-drag --part flowdiffusion`` writes into its run folder."""

KINDS = ("full", "delta", "lora")
CODECS = ("pooled", "sd-vae")
SIGNATURE_TOLERANCE = 1e-3
CONV_IN = ("unet.conv_in.weight", "unet.conv_in.bias")


@dataclass(frozen=True)
class CodecSpec:
    """How images become the model's latents.

    ``kind="pooled"``: :class:`~.flowdiffusion_conditioning.PooledRGBCodec` ``(factor, scale)``
    (weight-free, the tiny model). ``kind="sd-vae"``: SD 1.5's VAE, latents times ``scale``
    (0.18215); the VAE comes from the caller (a diffusers ``AutoencoderKL`` or ComfyUI's VAE).
    """

    kind: str
    factor: int = 8
    scale: float = SD15_LATENT_SCALE

    def __post_init__(self):
        if self.kind not in CODECS:
            raise ValueError(f"codec kind: expected one of {', '.join(CODECS)}, got {self.kind!r}")
        if self.factor < 1 or self.scale <= 0:
            raise ValueError(f"codec factor, scale: expected >= 1 and > 0, got {self.factor}, {self.scale}")

    @classmethod
    def pooled(cls, factor: int = 2, scale: float = 1.0) -> "CodecSpec":
        return cls("pooled", int(factor), float(scale))

    @classmethod
    def sd_vae(cls, scale: float = SD15_LATENT_SCALE) -> "CodecSpec":
        return cls("sd-vae", 8, float(scale))

    def build(self):
        """The codec of a ``pooled`` spec; ValueError for ``sd-vae`` (it needs a VAE from the caller)."""
        if self.kind != "pooled":
            raise ValueError("this FlowDiffusion works on SD 1.5 VAE latents: it needs an SD 1.5 VAE "
                             "(the FlowDiffusion Edit node's vae input)")
        return PooledRGBCodec(self.factor, self.scale)


def codec_spec_of(codec) -> CodecSpec:
    """The :class:`CodecSpec` of a codec object (:class:`~.flowdiffusion_conditioning.PooledRGBCodec`
    or :class:`~.flowdiffusion_conditioning.SDVAECodec`); TypeError for others."""
    from .flowdiffusion_conditioning import SDVAECodec

    if isinstance(codec, PooledRGBCodec):
        return CodecSpec.pooled(codec.scale_factor, codec.scale)
    if isinstance(codec, SDVAECodec):
        return CodecSpec.sd_vae(codec.scale)
    raise TypeError(f"codec: a file records PooledRGBCodec or SDVAECodec, got {type(codec).__name__}")


class LoadedFlowDiffusion(NamedTuple):
    model: FlowDiffusion
    codec: CodecSpec
    size: int


def read_header(path: str | os.PathLike) -> dict:
    """The header of a FlowDiffusion file (``format`` checked); ValueError naming ``path`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FlowDiffusion weights not found: {path}")
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 100_000_000:
                raise ValueError(f"header size {size}")
            metadata = json.loads(handle.read(size)).get("__metadata__") or {}
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a safetensors file ({error}); expected a FlowDiffusion file from "
                         "save_flowdiffusion / motionnft train-drag --part flowdiffusion") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a FlowDiffusion file (its header has format={metadata.get('format')!r}, "
                         f"expected {FORMAT!r}); write one with save_flowdiffusion or motionnft train-drag "
                         "--part flowdiffusion (the official InstantDrag checkpoints are not read: their licence is "
                         "research-only)")
    if metadata.get("kind") not in KINDS:
        raise ValueError(f"{path}: unknown FlowDiffusion file kind {metadata.get('kind')!r} (expected one of "
                         f"{', '.join(KINDS)})")
    return metadata


def _lora_settings(model: FlowDiffusion) -> dict:
    config = getattr(model.unet, "peft_config", {}).get("default")
    if config is None:
        raise ValueError("model: kind 'lora' needs a model with a LoRA (train_flowdiffusion.add_lora)")
    return {"lora_rank": str(config.r), "lora_alpha": str(config.lora_alpha),
            "lora_targets": json.dumps(sorted(config.target_modules))}


def tensor_signature(tensor: torch.Tensor) -> float:
    """Σ |w| in float64: a cheap check that two tensors (or whole models, summed) are the same weights."""
    return float(tensor.detach().double().abs().sum())


def _base_state(base) -> dict[str, torch.Tensor]:
    """A 4-channel base UNet's tensors under FlowDiffusion's ``unet.*`` names (no copy: its
    4-channel ``conv_in`` never matches, and the conv_in tensors are always stored anyway)."""
    return {f"unet.{name}": value for name, value in base.state_dict().items()}


def save_flowdiffusion(path: str | os.PathLike, model: FlowDiffusion, codec: CodecSpec, size: int,
                       kind: str = "full", base=None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as one FlowDiffusion file (atomically: a temporary file renamed). Returns the path.

    Args:
        model: the :class:`~.flowdiffusion.FlowDiffusion` (with or without a peft LoRA).
        codec: the images <-> latents codec it was trained with.
        size: the square working size (pixels) it was trained at.
        kind: ``"full"``, ``"delta"`` (needs ``base``) or ``"lora"`` (the model must carry a LoRA).
        base: for ``"delta"``: the 4-channel SD UNet ``model`` was made from.
        dtype: of the stored floating tensors (default: as they are).
    """
    from safetensors.torch import save

    if not isinstance(model, FlowDiffusion):
        raise TypeError(f"model: expected a FlowDiffusion, got {type(model).__name__}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    if size < 1:
        raise ValueError(f"size: expected a working size >= 1 pixel, got {size}")
    metadata = {"format": FORMAT, "version": "1", "kind": kind, "unet_config": json.dumps(dict(model.unet.config)),
                "prediction_type": model.prediction_type, "codec": json.dumps(asdict(codec)),
                "working_size": str(int(size))}
    if kind == "full":
        tensors = merged_state(model)
    elif kind == "lora":
        metadata.update(_lora_settings(model))
        state = model.state_dict()
        tensors = {name: value for name, value in state.items() if "lora_" in name}
        merged = merged_state(model)
        tensors.update({name: merged[name] for name in (*CONV_IN, "null_text")})
    else:
        if base is None:
            raise ValueError("base: kind 'delta' needs the 4-channel SD UNet the model was fine-tuned from")
        state, reference = merged_state(model), _base_state(base)
        tensors, signature = {"null_text": state["null_text"]}, {}
        for name, value in state.items():
            if name == "null_text":
                continue
            same = name in reference and reference[name].shape == value.shape and torch.equal(
                reference[name].to(value.device, value.dtype), value)
            if same and name not in CONV_IN:
                signature[name] = tensor_signature(value)
            else:
                tensors[name] = value
        metadata["base_signature"] = json.dumps(signature)
    tensors = {name: (value.to(dtype) if dtype is not None and value.is_floating_point() else value)
               .detach().cpu().contiguous() for name, value in tensors.items()}
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(save(tensors, metadata))
    return path


def load_flowdiffusion_file(path: str | os.PathLike, base_unet=None) -> LoadedFlowDiffusion:
    """``(model in eval mode on the CPU (or the base's device), codec spec, working size)`` of a file
    :func:`save_flowdiffusion` wrote.

    ``base_unet``: the 4-channel SD 1.5 ``UNet2DConditionModel`` a ``delta`` or ``lora`` file was
    made from (ignored for ``full``). Raises FileNotFoundError / ValueError naming ``path`` and
    what was expected.
    """
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    path = Path(path)
    header = read_header(path)
    kind = header["kind"]
    try:
        config = json.loads(header["unet_config"])
        codec = CodecSpec(**json.loads(header["codec"]))
        size = int(header["working_size"])
        prediction_type = header.get("prediction_type", "epsilon")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r}")
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: unreadable FlowDiffusion header ({type(error).__name__}: {error})") from None
    tensors = load_file(str(path))
    if kind == "full":
        if config.get("in_channels") != IN_CHANNELS:
            raise ValueError(f"{path}: its UNet config has {config.get('in_channels')} input channels, expected "
                             f"{IN_CHANNELS}")
        model = FlowDiffusion(UNet2DConditionModel.from_config(config), tensors.get("null_text"), prediction_type)
        _load(model, tensors, path, strict=True)
    else:
        if base_unet is None:
            raise ValueError(f"{path}: a FlowDiffusion {kind} file holds only what differs from the SD 1.5 UNet it "
                             "was fine-tuned from; it needs that SD 1.5 checkpoint (the FlowDiffusion Edit node's "
                             "model input: load it with Load Checkpoint)")
        base_in = getattr(getattr(base_unet, "config", None), "in_channels", None)
        if base_in != 4:
            raise ValueError(f"{path}: the base must be a 4-channel SD 1.5 UNet, got one with {base_in} input channels")
        model = from_sd_unet(base_unet, tensors["null_text"])
        model.prediction_type = prediction_type
        if kind == "delta":
            _check_base(model, json.loads(header.get("base_signature", "{}")), path)
            _load(model, tensors, path)
        else:
            from .train_flowdiffusion import add_lora

            _load(model, {name: tensors[name] for name in (*CONV_IN, "null_text")}, path)
            add_lora(model, int(header["lora_rank"]), float(header["lora_alpha"]),
                     targets=tuple(json.loads(header["lora_targets"])))
            _load(model, {name: value for name, value in tensors.items() if "lora_" in name}, path)
    model.requires_grad_(False)
    return LoadedFlowDiffusion(model.eval(), codec, size)


def _load(model: FlowDiffusion, tensors: dict[str, torch.Tensor], path: Path, strict: bool = False) -> None:
    """Put ``tensors`` into ``model`` (its device and dtype); each must find a place of its shape."""
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    wrong = [f"{name} {tuple(value.shape)} vs {tuple(own[name].shape)}" for name, value in tensors.items()
             if name in own and own[name].shape != value.shape]
    missing = sorted(set(own) - set(tensors)) if strict else []
    if unknown or wrong or missing:
        raise ValueError(f"{path}: weights do not fit this FlowDiffusion (unknown {unknown[:3]}, wrong shapes "
                         f"{wrong[:3]}, missing {missing[:3]}); was it made for another SD 1.5-shaped UNet?")
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name].device, own[name].dtype))


def _check_base(model: FlowDiffusion, signature: dict[str, float], path: Path) -> None:
    state = model.state_dict()
    for name, expected in signature.items():
        if name not in state:
            raise ValueError(f"{path}: the base UNet has no {name}; this delta was made for another model")
        found = tensor_signature(state[name])
        if abs(found - expected) > SIGNATURE_TOLERANCE * max(abs(expected), 1e-12):
            raise ValueError(f"{path}: this delta was made from another SD 1.5 UNet ({name} differs: sum of "
                             f"|w| {found:.6g} vs {expected:.6g}); load the checkpoint it was fine-tuned from")
