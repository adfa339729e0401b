"""Middlebury ``.flo`` files: magic 202021.25, int32 width, int32 height, float32 (u, v) rows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write

FLO_MAGIC = 202021.25
UNKNOWN_FLOW_THRESHOLD = 1e9
"""Middlebury marks pixels without ground truth with values above this."""


def read_flo(path: str | os.PathLike) -> torch.Tensor:
    """Read a ``.flo`` file into a ``(2, H, W)`` float32 tensor in pixels.

    Unknown pixels keep their stored values (> 1e9); see :func:`valid_flow_mask`.

    Raises:
        FileNotFoundError, or ValueError naming the file when it is not a whole ``.flo``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path}: too short for a .flo header ({len(data)} bytes)")
    magic = np.frombuffer(data, "<f4", 1, 0)[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(f"{path}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data, "<i4", 2, 4))
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: invalid size {width}x{height}")
    expected = 12 + 8 * width * height
    if len(data) < expected:
        raise ValueError(f"{path}: truncated ({len(data)} bytes, {width}x{height} needs {expected})")
    if len(data) > expected:  # two files run together, or not a .flo: refuse rather than guess
        raise ValueError(f"{path}: {len(data) - expected} bytes after the {width}x{height} flow; "
                         f"a .flo of that size is {expected} bytes")
    flow = np.frombuffer(data, "<f4", 2 * width * height, 12).reshape(height, width, 2)
    return torch.from_numpy(flow.copy()).permute(2, 0, 1).contiguous()


def write_flo(path: str | os.PathLike, flow: torch.Tensor) -> Path:
    """Write a ``(2, H, W)`` (or ``(1, 2, H, W)``) flow in pixels to ``path`` atomically."""
    path = Path(path)
    if flow.ndim == 4 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"write_flo: expected a flow of shape (2, H, W), got {tuple(flow.shape)}")
    _, height, width = flow.shape
    array = flow.detach().float().cpu().permute(1, 2, 0).contiguous().numpy().astype("<f4")
    with atomic_write(path) as handle:
        handle.write(np.array([FLO_MAGIC], "<f4").tobytes())
        handle.write(np.array([width, height], "<i4").tobytes())
        handle.write(array.tobytes())
    return path


FLOW_FILE_SUFFIXES = (".flo", ".npy", ".npz")


def read_flow_file(path: str | os.PathLike) -> torch.Tensor:
    """A flow file as a ``(2, H, W)`` float32 tensor in pixels: Middlebury ``.flo``, or NumPy
    ``.npy`` / ``.npz`` as other tools write them: ``(H, W, 2)`` (OpenCV, RAFT's demo,
    comfyui_controlnet_aux), ``(2, H, W)`` (torch), either with a leading batch of one. An
    ``.npz`` holds one array, or several with one named ``flow``.

    Raises:
        FileNotFoundError; ValueError naming the file and the shape found when it is not a flow.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix not in FLOW_FILE_SUFFIXES:
        raise ValueError(f"{path}: expected a flow file ({', '.join(FLOW_FILE_SUFFIXES)}), got {suffix or 'no extension'}")
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)  # a pickled object array could run code
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: not a readable NumPy file ({error})") from None
    if suffix == ".npz":
        with loaded:
            names = list(loaded.files)
            if "flow" not in names and len(names) != 1:
                raise ValueError(f"{path}: holds arrays {names}; expected one array, or one named 'flow'")
            loaded = loaded["flow" if "flow" in names else names[0]]
    array = np.asarray(loaded)
    while array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected a flow array (H, W, 2) or (2, H, W), got shape {array.shape} "
                         f"of {array.dtype}")
    if array.shape[-1] == 2 and array.shape[0] != 2:
        array = array.transpose(2, 0, 1)
    elif array.shape[0] != 2:  # (2, H, 2), ambiguous only for 2-pixel-wide flows, is read as (2, H, W)
        raise ValueError(f"{path}: expected a flow array (H, W, 2) or (2, H, W), got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def valid_flow_mask(flow: torch.Tensor) -> torch.Tensor:
    """True where a flow ``(..., 2, H, W)`` is known: finite and within the unknown threshold."""
    finite = torch.isfinite(flow).all(dim=-3)
    return finite & (flow.abs() < UNKNOWN_FLOW_THRESHOLD).all(dim=-3)
