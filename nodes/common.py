"""What every node of the pack shares: the flow type, IMAGE conversion, progress."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.utils

from ..motionnft.flow import available_backends

CATEGORY = "MotionNFT"

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
            tooltip="Optical-flow estimator. dis and farneback (OpenCV) need no model files.",
        ),
        io.Combo.Input(
            "preset",
            options=presets,
            default=PRESET_AUTO,
            tooltip="Speed/accuracy preset of the backend; auto = the backend's default (dis: medium).",
        ),
    ]


def resolve_preset(preset: str) -> str | None:
    """The preset to pass to the library: ``None`` (the backend's default) for auto."""
    return None if preset == PRESET_AUTO else preset


def image_to_bchw(name: str, image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``(B, H, W, 3)`` -> library layout ``(B, 3, H, W)`` float32."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE batch (B, H, W, 3), got {shape}")
    if image.shape[-1] != 3:
        raise ValueError(
            f"{name}: expected 3 colour channels, got {image.shape[-1]} (shape {tuple(image.shape)}); "
            "convert the image to RGB first"
        )
    return image.movedim(-1, 1).float()


def bchw_to_image(image: torch.Tensor) -> torch.Tensor:
    """Library ``(B, 3, H, W)`` -> ComfyUI IMAGE ``(B, H, W, 3)`` on the intermediate device."""
    return image.movedim(1, -1).contiguous().float().to(comfy.model_management.intermediate_device())


def check_flow(name: str, flow) -> torch.Tensor:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name}: expected a MOTIONNFT_FLOW tensor (B, 2, H, W), got {shape}")
    return flow


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
