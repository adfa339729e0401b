"""Deterministic random weights and inputs for the learned flow networks' tests.

Every tensor is drawn from NumPy's legacy ``RandomState`` (whose streams never change)
seeded by the CRC of its key and a global seed, so the same key layout gives the same
values on any machine, torch version or key order. ``tests/reference/make_flow_goldens.py``
uses these to run the reference implementations; the tests rebuild the same weights and
compare against the stored outputs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

GOLDEN_DIR = Path(__file__).resolve().parent / "data" / "flow_goldens"


def layout_of(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Key -> shape of a state dict (what the golden layout files store)."""
    return {key: list(value.shape) for key, value in state_dict.items()}


def seeded_state_dict(layout: dict[str, list[int]], seed: int = 0, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Random but well-scaled weights for every key of ``layout``.

    Weights of convolutions / linear layers: N(0, gain²/fan_in); biases N(0, 0.1²); norm
    scales 1 + N(0, 0.1²); running means N(0, 0.1²) and variances in [0.5, 1.5).

    A gain below 1 makes a calmer network: at gain 1 GMFlow's softmax matching is so sharp
    that float rounding (another thread count, another CPU) moves its output by 1e-2 px,
    at 0.5 by 1e-4 px, so outputs can be compared to float tolerance.
    """
    tensors = {}
    for key, shape in layout.items():
        rng = np.random.RandomState((zlib.crc32(key.encode()) + 7919 * seed) % 2**32)
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            tensors[key] = torch.tensor(0, dtype=torch.long)
            continue
        if key.endswith("running_var"):
            value = 0.5 + rng.random_sample(shape)
        elif key.endswith("running_mean"):
            value = 0.1 * rng.standard_normal(shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            value = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
        elif key.endswith(".weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        tensors[key] = torch.from_numpy(np.asarray(value, dtype=np.float32))
    return tensors


def smooth_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1]: coarse random colours upsampled (textured but smooth)."""
    rng = np.random.RandomState(seed)
    coarse = torch.from_numpy(rng.random_sample((batch, 3, height // 8 + 2, width // 8 + 2)).astype(np.float32))
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)


def image_pair(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related frames: the second is the first shifted by a few pixels plus a little noise."""
    rng = np.random.RandomState(seed + 1)
    big = smooth_images(batch, height + 16, width + 16, seed)
    first = big[:, :, 8 : 8 + height, 8 : 8 + width]
    second = big[:, :, 5 : 5 + height, 11 : 11 + width]
    noise = torch.from_numpy(rng.standard_normal(second.shape).astype(np.float32)) * 0.01
    return first.contiguous(), (second + noise).clamp(0, 1).contiguous()


def load_layout(name: str) -> dict[str, list[int]]:
    return json.loads((GOLDEN_DIR / f"{name}.layout.json").read_text())


def load_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


@contextlib.contextmanager
def reference_code(*folders: Path, fresh: tuple[str, ...] = ()):
    """Make reference code in ``folders`` importable for the duration of the block.

    Modules named in ``fresh`` (and their submodules) are dropped before and after, so
    two copies of a package (the official UniMatch and MotionEdit's) never mix.
    """

    def purge():
        for name in list(sys.modules):
            if any(name == p or name.startswith(p + ".") for p in fresh):
                del sys.modules[name]

    purge()
    added = [str(folder) for folder in folders]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)
        purge()


def weight_folder(tmp_path: Path, monkeypatch) -> Path:
    """``tmp_path/flow_weights`` holding ``raft-small.pth`` (torchvision layout) and
    ``gmflow-scale1-things-e9887eda.pth`` (UniMatch layout), both random, made the one weight
    folder searched ($MOTIONNFT_FLOW_WEIGHTS; torch hub pointed at an empty folder)."""
    from motionnft.flow.weights import WEIGHTS_ENV

    folder = tmp_path / "flow_weights"
    folder.mkdir()
    torch.save(seeded_state_dict(load_layout("raft_small_torchvision"), 1), folder / "raft-small.pth")
    torch.save({"model": seeded_state_dict(load_layout("gmflow_scale1"), 1)}, folder / "gmflow-scale1-things-e9887eda.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return folder
