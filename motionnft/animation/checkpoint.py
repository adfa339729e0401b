"""Load the official TPSMM checkpoints (``vox.pth.tar``, ``taichi.pth.tar``, ``ted.pth.tar``,
``mgif.pth.tar``) or their safetensors conversion.

Licence: the TPSMM code and its released checkpoints are MIT-licensed (Copyright (c) 2021
yoyo-nb, github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model); keep that notice with any
weights you redistribute. The checkpoints were trained on VoxCeleb, TaiChiHD, TED-talks and
MGif; those datasets carry their own terms.

An official ``.pth.tar`` is a pickled dict: one state dict per network (see
:data:`.model.NETWORKS`), the optimisers' state dicts and the epoch, all plain containers,
numbers and tensors, so ``torch.load(weights_only=True)`` reads it and nothing else is
unpickled. A copy holding anything else is refused, never unpickled; ``tools/convert_tpsmm.py``
rewrites a readable checkpoint's networks as safetensors (smaller, faster to load).

The paper's model (:mod:`.paper_model`) is saved by :func:`save_model` as safetensors with its
:class:`.paper_model.AnimationModelConfig` as JSON in the header (``animation_config``);
:func:`load_official_checkpoint` reads the model kind from there, so every reader of TPSMM
files (``motionnft animate``, the Animate Image node) takes such a file too.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from ..files import atomic_write

from .config import PRESETS, AVDConfig, DenseMotionConfig, InpaintingConfig, TPSMMConfig
from .model import NETWORKS, TPSMM
from .paper_model import PAPER_NETWORKS, AnimationModelConfig, build_model

logger = logging.getLogger(__name__)

LICENCE = "MIT (Copyright (c) 2021 yoyo-nb, github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model)"


def read_official_state_dicts(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Network name -> state dict, from an official ``.pth.tar`` or a converted ``.safetensors``.

    Only the networks are kept (optimiser states and the epoch are dropped). Tensors are
    loaded on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TPSMM checkpoint not found: looked for the file {path.resolve()}")
    if path.suffix == ".safetensors":
        flat = load_file(str(path))
        networks: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in flat.items():
            name, _, rest = key.partition(".")
            networks.setdefault(name, {})[rest] = value
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as error:
            raise ValueError(f"{path}: torch.load(weights_only=True) refused this file ({error}): it holds objects "
                             "other than tensors and plain containers, which unpickling could use to run code. Use "
                             "the official release file, or re-save its state dicts (a dict of network -> state "
                             "dict) where you trust it.") from None
        if not isinstance(payload, dict):
            raise ValueError(f"{path}: expected a dict of state dicts, got {type(payload).__name__}")
        networks = {name: dict(payload[name]) for name in NETWORKS if isinstance(payload.get(name), dict)}
    for name in networks:
        networks[name] = {key.removeprefix("module."): value for key, value in networks[name].items()}
    missing = [name for name in ("kp_detector", "dense_motion_network", "inpainting_network") if name not in networks]
    if missing:
        raise ValueError(f"{path}: not a TPSMM checkpoint, no {', '.join(missing)} (found: {sorted(networks) or 'none'})")
    return networks


def _count(state: dict[str, torch.Tensor], prefix: str, suffix: str) -> int:
    index = 0
    while f"{prefix}{index}{suffix}" in state:
        index += 1
    return index


def infer_config(networks: dict[str, dict[str, torch.Tensor]], frame_size: int = 256) -> TPSMMConfig:
    """The :class:`.config.TPSMMConfig` whose networks have these state dicts' shapes.

    ``kp_variance`` is not stored and keeps the official 0.01; ``frame_size`` is the caller's.
    """
    kp, motion, generator = networks["kp_detector"], networks["dense_motion_network"], networks["inpainting_network"]
    down_blocks = _count(generator, "down_blocks.", ".conv.weight")
    hourglass_blocks = _count(motion, "hourglass.encoder.down_blocks.", ".conv.weight")
    masks = _count(motion, "occlusion.", ".weight")
    ups = _count(motion, "up.", ".conv.weight")
    if masks > 1:
        scale = 0.5**ups
    elif "down.weight" in motion:  # kernel size 2·round(4σ)+1 with σ = (1/scale - 1)/2
        scale = 1 / (2 * (motion["down.weight"].shape[-1] - 1) / 8 + 1)
    else:
        scale = 1.0
    avd = networks.get("avd_network")
    return TPSMMConfig(
        num_tps=kp["fg_encoder.fc.weight"].shape[0] // 10,
        num_channels=kp["fg_encoder.conv1.weight"].shape[1],
        bg="bg_predictor" in networks,
        multi_mask=masks > 1,
        generator=InpaintingConfig(
            block_expansion=generator["first.conv.weight"].shape[0],
            max_features=max(generator[f"down_blocks.{i}.conv.weight"].shape[0] for i in range(down_blocks)),
            num_down_blocks=down_blocks),
        dense_motion=DenseMotionConfig(
            block_expansion=motion[f"hourglass.decoder.up_blocks.{hourglass_blocks - 1}.conv.weight"].shape[0],
            max_features=max(motion[f"hourglass.encoder.down_blocks.{i}.conv.weight"].shape[0]
                             for i in range(hourglass_blocks)),
            num_blocks=hourglass_blocks, scale_factor=scale),
        avd=AVDConfig(avd["id_encoder.9.weight"].shape[0], avd["pose_encoder.9.weight"].shape[0]) if avd else AVDConfig(),
        frame_size=frame_size,
    )


def load_networks(model: TPSMM, networks: dict[str, dict[str, torch.Tensor]], source: str = "weights") -> None:
    """Load each network's state dict strictly; one error lists every missing / unexpected key
    (and every network the file has that the model has not, among the paper's parts)."""
    problems = [f"{name}: in {source} but not in this model (another model kind)" for name in PAPER_NETWORKS
                if name in networks and getattr(model, name, None) is None]
    for name in NETWORKS + PAPER_NETWORKS:
        module = getattr(model, name, None)
        if module is None:
            continue
        if name not in networks:
            problems.append(f"{name}: absent from {source}")
            continue
        try:
            result = module.load_state_dict(networks[name], strict=False)
        except RuntimeError as error:  # shape mismatches raise even when not strict
            problems.append(f"{name}: {error}".replace("\n", " "))
            continue
        if result.missing_keys or result.unexpected_keys:
            problems.append(f"{name}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    if problems:
        raise ValueError(f"{source} do not fit this TPSMM model:\n  " + "\n  ".join(problems))


def load_official_checkpoint(path: str | Path, config: TPSMMConfig | None = None, with_avd: bool | None = None,
                             device: str | torch.device = "cpu") -> TPSMM:
    """Build a :class:`.model.TPSMM` in eval mode from an official or converted checkpoint.

    Args:
        path: ``vox.pth.tar`` etc. (read with ``weights_only=True``) or its ``.safetensors``.
        config: the architecture; by default inferred from the weights' shapes, with the
            frame size of the preset the file is named after (``ted*`` -> 384, else 256).
        with_avd: load the AVD network; by default when the file has one.
    Every key must match: no missing and no unexpected ones.
    """
    networks = read_official_state_dicts(path)
    paper = read_animation_config(path)
    if paper is not None:
        with_avd = "avd_network" in networks if with_avd is None else with_avd
        model = build_model(paper if config is None else dataclasses.replace(paper, tpsmm=config), with_avd)
        load_networks(model, networks, source=str(path))
        logger.info("loaded %s weights %s (built on TPSMM, licence: %s)", paper.kind, path, LICENCE)
        return model.to(device).eval()
    if config is None:
        stem = Path(path).name.split(".")[0].lower()
        preset = next((PRESETS[name]() for name in ("vox", "taichi", "ted", "mgif") if stem.startswith(name)), None)
        config = infer_config(networks, preset.frame_size if preset else 256)
    with_avd = "avd_network" in networks if with_avd is None else with_avd
    model = TPSMM(config, with_avd=with_avd)
    load_networks(model, networks, source=str(path))
    logger.info("loaded TPSMM weights %s; licence: %s", path, LICENCE)
    return model.to(device).eval()


def read_animation_config(path: str | Path) -> AnimationModelConfig | None:
    """The paper model's configuration in a safetensors header, or None (a TPSMM file)."""
    if Path(path).suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get("animation_config")
    return AnimationModelConfig.from_json(text) if text else None


def save_model(model: TPSMM, path: str | Path) -> None:
    """Write any animation model as one safetensors file: TPSMM's flat ``<network>.<key>``
    names (what :func:`save_converted` writes), plus, for the paper model, its parts and its
    configuration in the header (``animation_config``)."""
    networks = {name: getattr(model, name).state_dict() for name in NETWORKS + PAPER_NETWORKS
                if getattr(model, name, None) is not None}
    metadata = {"format": "tpsmm", "licence": LICENCE}
    paper = getattr(model, "model_config", None)
    if paper is not None:
        metadata["animation_config"] = paper.to_json()
        metadata["kind"] = paper.kind
    _write_networks(networks, path, metadata)


def save_converted(networks: dict[str, dict[str, torch.Tensor]], path: str | Path) -> None:
    """Write TPSMM's network state dicts as one safetensors file with flat ``<network>.<key>`` names."""
    _write_networks({name: state for name, state in networks.items() if name in NETWORKS}, path,
                    {"format": "tpsmm", "licence": LICENCE})


def _write_networks(networks: dict[str, dict[str, torch.Tensor]], path: str | Path, metadata: dict) -> None:
    """One safetensors file of flat ``<network>.<key>`` tensors, written atomically (a run killed
    while saving leaves the old file or none, never a truncated one the node would list)."""
    flat = {f"{name}.{key}": value.detach().cpu().contiguous() for name, state in networks.items()
            for key, value in state.items()}
    with atomic_write(path) as handle:
        handle.write(save(flat, metadata))
