"""Pairs with dense flow for FlowGen: synthetic figure scenes and the miner's folders.

A source of pairs answers ``len()`` and ``batch(indices) -> FlowBatch``; the trainer knows
nothing else about it.

- :func:`figure_scenes`: the project's synthetic figure (:mod:`motionnft.synthetic`) in a
  random pose, moved articulately (torso only, arm only, or both), with the exact flow.
  The image shows which pixels belong to the torso and which to the arm; drags alone do
  not, which is what FlowGen can learn and a spline cannot.
- :class:`FlowPairFolder`: a dataset folder (``metadata.jsonl`` + ``images/``) whose
  samples have ``images/<id>_flow.flo`` (input -> target, pixels of the input image) and,
  optionally, ``images/<id>_mask.png`` (white = moving) beside ``<id>_input.png``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..flow.flo import read_flo, valid_flow_mask
from ..flow.warp import resize_flow
from ..synthetic import FigurePose, render_scene, scene_flow, scene_number
from ..training.seeding import derived_generator

FLOW_SUFFIX = "_flow.flo"
MASK_SUFFIX = "_mask.png"


@dataclass(frozen=True)
class FlowBatch:
    """Images ``(B, 3, H, W)`` in [0, 1]; flows ``(B, 2, H, W)`` in pixels (input -> target);
    ``masks`` ``(B, H, W)`` bool moving region or None (then the flow decides); ``valid``
    ``(B, H, W)`` bool where the flow is known."""

    images: torch.Tensor
    flows: torch.Tensor
    masks: torch.Tensor | None
    valid: torch.Tensor


@dataclass(frozen=True)
class FlowScenes:
    """Pairs held in memory: images as uint8 ``(N, 3, H, W)`` (a quarter of float32's memory),
    flows ``(N, 2, H, W)`` float32 pixels, and each scene's motion kind."""

    images: torch.Tensor
    flows: torch.Tensor
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, indices: torch.Tensor) -> FlowBatch:
        flows = self.flows[indices]
        return FlowBatch(self.images[indices].float() / 255, flows, None, valid_flow_mask(flows))


MOTION_KINDS = ("torso", "arm", "both")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))


def random_motion(generator: torch.Generator) -> tuple[FigurePose, FigurePose, str]:
    """A start pose and a moved one: the torso steps (the arm rides along), the arm swings
    about the shoulder, or both; moves of 4-12 % of the size and 20-60 degrees."""
    start = FigurePose(x=_uniform(generator, 0.3, 0.7), y=_uniform(generator, 0.56, 0.66),
                       arm_angle=_uniform(generator, 15.0, 150.0))
    kind = MOTION_KINDS[int(torch.randint(len(MOTION_KINDS), (1,), generator=generator))]
    dx = dy = arm = 0.0
    if kind in ("torso", "both"):
        step, heading = _uniform(generator, 0.04, 0.12), _uniform(generator, 0.0, 2 * math.pi)
        dx, dy = step * math.cos(heading), 0.6 * step * math.sin(heading)
    if kind in ("arm", "both"):
        swing = _uniform(generator, 20.0, 60.0)
        # Swing towards the side with room, so the arm stays between hanging and raised.
        arm = swing if start.arm_angle + swing <= 170.0 and (start.arm_angle < 90 or
                                                             start.arm_angle - swing < 5.0) else -swing
    return start, start.moved(dx=dx, dy=dy, arm=arm), kind


def figure_scenes(count: int, size: int = 64, seed: int = 0, style: str = "textured") -> FlowScenes:
    """``count`` scenes of the synthetic figure, each with its own background and textures
    (:func:`~motionnft.synthetic.scene_number` of ``seed``), a random articulated motion and
    its exact flow. Deterministic in ``seed``; different seeds share no scene."""
    if count < 1 or size < 16:
        raise ValueError(f"figure_scenes: need count >= 1 and size >= 16, got {count}, {size}")
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    flows = torch.empty(count, 2, size, size)
    kinds = []
    for index in range(count):
        start, end, kind = random_motion(derived_generator(seed, "figure-motion", index))
        scene = scene_number(seed, index)
        images[index] = (render_scene(start, (size, size), scene, style) * 255).round().to(torch.uint8)
        flows[index] = scene_flow(start, end, (size, size))
        kinds.append(kind)
    return FlowScenes(images, flows, tuple(kinds))


class FlowPairFolder:
    """The miner's pairs with flow, read on demand and resized to ``size = (H, W)``."""

    def __init__(self, root: str | os.PathLike, size: tuple[int, int]):
        from ..data import open_dataset

        self.root, self.size = Path(root), tuple(size)
        dataset = open_dataset(self.root)
        self.samples = []
        for sample in dataset:
            if not isinstance(sample.input_source, Path):
                raise ValueError(f"{self.root}: FlowGen data needs a folder dataset (metadata.jsonl + images/)")
            flow_file = sample.input_source.parent / f"{sample.id}{FLOW_SUFFIX}"
            if flow_file.is_file():
                mask_file = sample.input_source.parent / f"{sample.id}{MASK_SUFFIX}"
                self.samples.append((sample.input_source, flow_file, mask_file if mask_file.is_file() else None))
        if not self.samples:
            raise FileNotFoundError(f"{self.root}: no sample has a flow file (looked for images/<id>{FLOW_SUFFIX} "
                                    f"beside each of the {len(dataset)} input images)")

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: torch.Tensor) -> FlowBatch:
        from ..image import load_image, resize_image

        images, flows, masks, valids = [], [], [], []
        for index in indices.tolist():
            image_file, flow_file, mask_file = self.samples[index]
            image = load_image(image_file)
            flow = read_flo(flow_file)[None]
            if flow.shape[-2:] != image.shape[-2:]:
                raise ValueError(f"{flow_file}: flow is {tuple(flow.shape[-2:])} but {image_file} is "
                                 f"{tuple(image.shape[-2:])} (H, W)")
            valid = valid_flow_mask(flow)
            flow = torch.where(valid[:, None], flow, torch.zeros_like(flow))
            images.append(resize_image(image, self.size))
            flows.append(resize_flow(flow, self.size))
            valids.append(F.interpolate(valid[:, None].float(), self.size, mode="nearest")[:, 0] > 0.5)
            if mask_file is not None:
                mask = load_image(mask_file).mean(1, keepdim=True)
                masks.append(F.interpolate(mask, self.size, mode="nearest")[:, 0] > 0.5)
            else:
                masks.append(torch.ones(1, *self.size, dtype=torch.bool))
        return FlowBatch(torch.cat(images), torch.cat(flows), torch.cat(masks), torch.cat(valids))
