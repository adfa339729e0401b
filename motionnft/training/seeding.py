"""Reproducible randomness: generators derived from a seed and a purpose, and the global RNG
states a checkpoint saves so that a resumed run repeats the uninterrupted one exactly.

Generic: nothing here knows what is being trained.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derived_generator(seed: int, *keys) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (stable across runs and processes)."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def rng_state() -> dict:
    """The global RNG states as tensors and plain containers (loadable with ``weights_only``):
    numpy's ``("MT19937", keys, pos, has_gauss, cached_gaussian)`` with its key array as a tensor."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
