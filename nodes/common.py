"""What every node of the pack shares: the flow type, IMAGE conversion, progress."""

from __future__ import annotations

import logging
import os

import folder_paths
import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils

from ..motionnft.flow import PRECISIONS, FlowEstimator, add_weight_folders, available_backends, create_estimator, get_backend

CATEGORY = "MotionNFT"

FLOW_FOLDER = "optical_flow"
"""ComfyUI model folder of the learned flow backends' weights (``models/optical_flow``)."""

WEIGHTS_AUTO = "auto"

DRAG_FOLDER = "motionnft_drag"
"""ComfyUI model folder of the drag networks' weights (``models/motionnft_drag``: FlowGen files)."""

Flow = io.Custom("MOTIONNFT_FLOW")
"""A torch float tensor ``(B, 2, H, W)``: the flow from image A to image B in pixels of
A's size, channel 0 = x (right), channel 1 = y (down)."""

PRESET_AUTO = "auto"


def flow_inputs() -> list:
    """The backend and preset widgets every flow-computing node offers."""
    backends = available_backends()
    presets = [PRESET_AUTO] + sorted({p for b in backends.values() for p in b.presets} - {"default"})
    return [
        io.Combo.Input(
            "backend",
            options=list(backends),
            default="dis",
            tooltip=(
                "Optical-flow estimator. dis and farneback (OpenCV) need no model files; raft_large, "
                "raft_small and unimatch (the flow of the MotionEdit paper's reward) load weights from "
                "models/optical_flow."
            ),
        ),
        io.Combo.Input(
            "preset",
            options=presets,
            default=PRESET_AUTO,
            tooltip=(
                "Speed/accuracy preset of the backend; auto = the backend's default (dis: medium; raft: "
                "medium = 12 updates, fast = 6, accurate = 32; unimatch: default)."
            ),
        ),
    ]


def register_model_folder(name: str) -> None:
    """Register ``models/<name>`` with ComfyUI, merged into ``folder_paths.folder_names_and_paths``:
    an entry that ``extra_model_paths.yaml`` already made keeps its folders (first) and extensions."""
    default = os.path.join(folder_paths.models_dir, name)
    supported = set(folder_paths.supported_pt_extensions)
    existing = folder_paths.folder_names_and_paths.get(name)
    if existing is None:
        paths, extensions = [default], supported
    else:
        paths, extensions = list(existing[0]), set(existing[1])
        if default not in paths:
            paths.append(default)
        if extensions:  # an empty set means "any file" to ComfyUI: keep it so
            extensions |= supported
    folder_paths.folder_names_and_paths[name] = (paths, extensions)


def register_flow_folder() -> None:
    """Register ``models/optical_flow`` with ComfyUI (:func:`register_model_folder`) and with the
    library's weight search."""
    register_model_folder(FLOW_FOLDER)
    add_weight_folders(_flow_folders)


def _flow_folders() -> list[str]:
    return folder_paths.get_folder_paths(FLOW_FOLDER)


def model_folder_listing(name: str) -> str:
    """Every folder of ComfyUI's model folder ``name``, one ``  - path`` line each (for errors)."""
    return "\n".join(f"  - {folder}" for folder in folder_paths.get_folder_paths(name))


NO_FILE = "none"
"""The first choice of a model-file widget: nothing chosen yet."""


def chosen_model_file(widget: str, name: str, folder: str, needs: str, put: str) -> str:
    """The full path of the file ``name`` picked in ``widget`` from ComfyUI's model folder ``folder``.

    FileNotFoundError when none is chosen or it is in no folder, reading "``widget``: ``needs``
    and <what is wrong>. Put ``put`` into one of the ``folder`` folders and pick it:" and every
    folder searched, one per line."""
    path = None if name == NO_FILE else folder_paths.get_full_path(folder, name)
    if path is None:
        chosen = f"no {widget} file is chosen" if name == NO_FILE else f"{name!r} is in none of them"
        raise FileNotFoundError(f"{widget}: {needs} and {chosen}. Put {put} into one of the {folder} folders and "
                                f"pick it:\n{model_folder_listing(folder)}")
    return path


def keep_one_loaded(cache: dict, key: tuple, load):
    """``load()``'s result, kept in ``cache`` while ``key`` (e.g. a path, its mtime, the device) is
    unchanged; one entry per cache, so switching files frees the previous model."""
    if key not in cache:
        cache.clear()
        cache[key] = load()
    return cache[key]


def flow_model_inputs() -> list:
    """The weights and precision widgets of nodes that can run a learned flow backend (optional
    inputs, so graphs written before they existed still run)."""
    files = folder_paths.get_filename_list(FLOW_FOLDER)
    return [
        io.Combo.Input(
            "weights",
            options=[WEIGHTS_AUTO, *files],
            default=WEIGHTS_AUTO,
            optional=True,
            tooltip=(
                "Weight file of a learned backend (raft_large, raft_small, unimatch), from models/optical_flow. "
                "auto = the backend's preferred file found there. Ignored by dis and farneback."
            ),
        ),
        io.Combo.Input(
            "precision",
            options=list(PRECISIONS),
            default="fp32",
            optional=True,
            tooltip="Compute precision of a learned backend; fp32 is the reference, fp16/bf16 are faster on GPUs.",
        ),
    ]


def flow_estimator(backend: str, preset: str, weights: str = WEIGHTS_AUTO, precision: str = "fp32") -> FlowEstimator:
    """The estimator a node's backend/preset/weights/precision widgets describe, on ComfyUI's device."""
    info = get_backend(backend)
    if not info.needs_weights:
        if weights != WEIGHTS_AUTO:
            logging.info("MotionNFT: backend %s uses no weights; %s ignored", backend, weights)
        return create_estimator(backend, resolve_preset(preset))
    return create_estimator(
        backend, resolve_preset(preset), weights=resolve_weights(weights), precision=precision,
        device=comfy.model_management.get_torch_device(),
    )


def resolve_weights(weights: str) -> str | None:
    """The weight file a ``weights`` widget names: None for auto (the backend's preferred file),
    a full path as given, else the file of that name in the optical_flow folders.

    Raises FileNotFoundError listing every optical_flow folder when there is none."""
    if weights == WEIGHTS_AUTO:
        return None
    if os.path.isabs(weights) and os.path.isfile(weights):
        return weights  # a full path typed in a text setting (the miner's overrides)
    path = folder_paths.get_full_path(FLOW_FOLDER, weights)
    if path is None:
        listing = "\n".join(f"  - {folder}" for folder in _flow_folders())
        raise FileNotFoundError(f"weights: {weights!r} is in none of the optical_flow folders:\n{listing}")
    return path


def resolve_preset(preset: str) -> str | None:
    """The preset to pass to the library: ``None`` (the backend's default) for auto."""
    return None if preset == PRESET_AUTO else preset


def image_to_bchw(name: str, image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``(B, H, W, 3)`` -> library layout ``(B, 3, H, W)`` float32.

    Raises ValueError naming ``name`` for another layout, an empty batch or NaN/infinite values.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE batch (B, H, W, 3), got {shape}")
    if image.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected 3 colour channels, got {image.shape[-1]} (shape {tuple(image.shape)}); "
            "convert the image to RGB first"
        )
    if image.numel() == 0:
        raise ValueError(f"{name}: empty IMAGE batch (shape {tuple(image.shape)}); expected at least one image")
    check_finite(name, image)
    return image.movedim(-1, 1).float()


def check_finite(name: str, values: torch.Tensor) -> None:
    """ValueError naming ``name`` when ``values`` holds NaN or infinite numbers (what a diverged
    upstream node gives): scoring or warping them would silently give NaN."""
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ValueError(f"{name}: {bad} of {values.numel()} values are NaN or infinite; check the node that made it")


def bchw_to_image(image: torch.Tensor) -> torch.Tensor:
    """Library ``(B, 3, H, W)`` -> ComfyUI IMAGE ``(B, H, W, 3)`` on the intermediate device."""
    return image.movedim(1, -1).contiguous().float().to(comfy.model_management.intermediate_device())


def check_flow(name: str, flow) -> torch.Tensor:
    """A MOTIONNFT_FLOW ``(B, 2, H, W)`` in pixels, checked; ValueError naming ``name`` otherwise."""
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name}: expected a MOTIONNFT_FLOW tensor (B, 2, H, W), got {shape}")
    if flow.numel() == 0:
        raise ValueError(f"{name}: empty flow (shape {tuple(flow.shape)})")
    check_finite(name, flow)
    return flow


def check_mask(name: str, mask, size: tuple[int, int]) -> torch.Tensor:
    """A ComfyUI MASK ``(H, W)`` or ``(B, H, W)`` in [0, 1] as ``(B, H, W)`` float at ``size``
    (resized bilinearly when it differs); ValueError naming ``name`` for another layout, an empty
    mask or NaN values."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a MASK (H, W) or (B, H, W), got {shape}")
    mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
    if mask.numel() == 0:
        raise ValueError(f"{name}: empty MASK (shape {tuple(mask.shape)})")
    check_finite(name, mask)
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = torch.nn.functional.interpolate(mask.unsqueeze(1).float(), size=tuple(size), mode="bilinear")[:, 0]
    return mask.float()


def progress_callback(total: int):
    """A ``progress(done, total)`` for the library that drives ComfyUI's bar and honours cancel."""
    bar = comfy.utils.ProgressBar(total)

    def progress(done: int, of: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, of)

    return progress


def broadcast_batches(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Expand batches of 1 to the common batch size; other mismatches are errors naming inputs."""
    sizes = {name: t.shape[0] for name, t in named.items()}
    batch = max(sizes.values())
    wrong = {name: size for name, size in sizes.items() if size not in (1, batch)}
    if wrong:
        listing = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(
            f"batch sizes do not match ({listing}): each input needs the same batch size or a batch of 1"
        )
    return {name: t.expand(batch, *t.shape[1:]) for name, t in named.items()}


register_flow_folder()
register_model_folder(DRAG_FOLDER)
