"""What a MotionNFT run trains and evaluates on: the datasets, which prompts each step
samples (:class:`PromptCursor`), and each prompt's prepared tensors (:class:`PromptEntry`,
kept in a :class:`PromptCache`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .seeding import derived_generator

HELDOUT_SEED_OFFSET = 1_000_003
"""The synthetic held-out draw uses ``seed + HELDOUT_SEED_OFFSET``: other scenes than training's."""


class PromptCursor:
    """Which prompts each step samples: a seeded permutation per pass, retired ids skipped."""

    def __init__(self, ids: list[str], seed: int):
        self.ids = ids
        self.seed = seed
        self.pass_index = 0
        self.position = 0
        self.retired: set[str] = set()

    def _order(self) -> list[int]:
        generator = derived_generator(self.seed, "data", self.pass_index)
        return torch.randperm(len(self.ids), generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        """The next ``count`` sample indices (passes wrap; fewer live prompts than
        ``count`` repeat within a step)."""
        live = [i for i, sid in enumerate(self.ids) if sid not in self.retired]
        if not live:
            raise RuntimeError("every prompt of the dataset is retired (solved): nothing left to train on")
        chosen = []
        order = self._order()
        while len(chosen) < count:
            if self.position >= len(order):
                self.pass_index += 1
                self.position = 0
                order = self._order()
            index = order[self.position]
            self.position += 1
            if self.ids[index] not in self.retired:
                chosen.append(index)
        return chosen

    def state(self) -> dict:
        return {"pass_index": self.pass_index, "position": self.position, "retired": sorted(self.retired)}

    def load(self, state: dict) -> None:
        self.pass_index, self.position = state["pass_index"], state["position"]
        self.retired = set(state["retired"])


def _usable(dataset, where: str):
    usable = [s for s in dataset if s.prompt.strip()]
    if not usable:
        raise ValueError(f"dataset {where}: no sample has an instruction (prompt)")
    dataset.samples = usable
    return dataset


def open_training_data(config):
    """The dataset ``config.data`` names (a folder, or the synthetic task drawn with ``config.seed``)."""
    from ..data import open_dataset
    from ..synthetic import motion_edit_dataset

    if config.data == "synthetic":
        return motion_edit_dataset(config.synthetic_samples, size=config.resolution, seed=config.seed)
    return _usable(open_dataset(config.data), config.data)


def open_heldout_data(config):
    """The first ``heldout_samples`` prompts of ``heldout_data`` (None when it is empty)."""
    from ..data import open_dataset
    from ..synthetic import motion_edit_dataset

    if not config.heldout_data:
        return None
    if config.heldout_data == "synthetic":
        return motion_edit_dataset(config.heldout_samples, size=config.resolution,
                                   seed=config.seed + HELDOUT_SEED_OFFSET)
    dataset = _usable(open_dataset(config.heldout_data), config.heldout_data)
    dataset.samples = dataset.samples[:config.heldout_samples]
    return dataset


@dataclass
class PromptEntry:
    """One prompt ready for rollouts and rewards: the model's condition, the input and target
    images ``(1, 3, H, W)`` in [0, 1] at the training size, and the target's flow
    ``(1, 2, H, W)`` (pixels)."""

    condition: Any
    input_image: torch.Tensor
    target_image: torch.Tensor
    flow_target: torch.Tensor


def prepare_prompt(sample, model, estimator, size: tuple[int, int]) -> PromptEntry:
    """A sample's images centre-cropped and resized to ``size`` ``(H, W)``, its condition
    (text embeddings, reference latents) and its ground-truth flow."""
    from ..image import center_crop_resize

    input_image = center_crop_resize(sample.input_image(), size)
    target_image = center_crop_resize(sample.target_image(), size)
    condition = model.encode_condition(sample.prompt, input_image, size)
    flow_target = estimator(input_image, target_image)
    return PromptEntry(condition, input_image, target_image, flow_target)


class PromptCache(OrderedDict):
    """The ``capacity`` most recently used prompts' entries, by sample index."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_or_make(self, index: int, make: Callable[[], PromptEntry]) -> PromptEntry:
        if index in self:
            self.move_to_end(index)
            return self[index]
        entry = make()
        self[index] = entry
        while len(self) > self.capacity:
            self.popitem(last=False)
        return entry
