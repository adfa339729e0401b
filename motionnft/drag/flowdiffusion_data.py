"""FlowDiffusion's training pairs (source, target, flow, moving mask) and the two transforms
the paper applies to them: background-consistent targets and condition dropout.

Sources of pairs answer ``len()`` and ``batch(indices) -> EditPairs``:

- :func:`figure_pairs`: the synthetic figure scenes of :func:`.flow_data.figure_scenes`
  (same seed: the same scenes, motions and flows) with the moved frame rendered as the target.
- :class:`EditPairFolder`: the dataset folder FlowGen reads (``metadata.jsonl`` + ``images/``
  with ``<id>_flow.flo`` and optional ``<id>_mask.png``), plus each sample's target image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..flow.flo import read_flo, valid_flow_mask
from ..flow.warp import pixel_grid, resize_flow
from ..synthetic import render_scene, scene_flow, scene_number
from ..training.seeding import derived_generator
from .flow_data import FLOW_SUFFIX, MASK_SUFFIX, random_motion
from .pseudo_drags import moving_mask

IMAGE_DROPOUT = 0.05
FLOW_DROPOUT = 0.10


@dataclass(frozen=True)
class EditPairs:
    """``sources``/``targets`` ``(B, 3, H, W)`` in [0, 1]; ``flows`` ``(B, 2, H, W)`` pixels, source ->
    target; ``masks`` ``(B, H, W)`` bool moving region of the source, or None (the flow decides)."""

    sources: torch.Tensor
    targets: torch.Tensor
    flows: torch.Tensor
    masks: torch.Tensor | None


@dataclass(frozen=True)
class PairScenes:
    """Pairs held in memory: images uint8 ``(N, 3, H, W)``, flows ``(N, 2, H, W)`` float32 pixels."""

    sources: torch.Tensor
    targets: torch.Tensor
    flows: torch.Tensor
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.sources.shape[0])

    def batch(self, indices: torch.Tensor) -> EditPairs:
        return EditPairs(self.sources[indices].float() / 255, self.targets[indices].float() / 255,
                         self.flows[indices], None)


def figure_pairs(count: int, size: int = 64, seed: int = 0, style: str = "textured") -> PairScenes:
    """``count`` synthetic scenes with their moved frame: the scenes, motions and flows of
    :func:`.flow_data.figure_scenes` with the same arguments. Deterministic in ``seed``."""
    if count < 1 or size < 16:
        raise ValueError(f"figure_pairs: need count >= 1 and size >= 16, got {count}, {size}")
    sources = torch.empty(count, 3, size, size, dtype=torch.uint8)
    targets = torch.empty_like(sources)
    flows = torch.empty(count, 2, size, size)
    kinds = []
    for index in range(count):
        start, end, kind = random_motion(derived_generator(seed, "figure-motion", index))
        scene = scene_number(seed, index)
        sources[index] = (render_scene(start, (size, size), scene, style) * 255).round().to(torch.uint8)
        targets[index] = (render_scene(end, (size, size), scene, style) * 255).round().to(torch.uint8)
        flows[index] = scene_flow(start, end, (size, size))
        kinds.append(kind)
    return PairScenes(sources, targets, flows, tuple(kinds))


class EditPairFolder:
    """A dataset folder's pairs that have a flow file, read on demand at ``size = (H, W)``.

    Unknown flow (Middlebury's huge values) counts as zero motion.
    """

    def __init__(self, root: str | os.PathLike, size: tuple[int, int]):
        from ..data import open_dataset

        self.root, self.size = Path(root), tuple(size)
        dataset = open_dataset(self.root)
        self.samples = []
        for sample in dataset:
            if not isinstance(sample.input_source, Path) or not isinstance(sample.target_source, Path):
                raise ValueError(f"{self.root}: FlowDiffusion data needs a folder dataset (metadata.jsonl + images/)")
            folder = sample.input_source.parent
            flow_file, mask_file = folder / f"{sample.id}{FLOW_SUFFIX}", folder / f"{sample.id}{MASK_SUFFIX}"
            if flow_file.is_file():
                self.samples.append((sample.input_source, sample.target_source, flow_file,
                                     mask_file if mask_file.is_file() else None))
        if not self.samples:
            raise FileNotFoundError(f"{self.root}: no sample has a flow file (looked for images/<id>{FLOW_SUFFIX} "
                                    f"beside each of the {len(dataset)} input images)")

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: torch.Tensor) -> EditPairs:
        from ..image import load_image, resize_image

        sources, targets, flows, masks = [], [], [], []
        for index in indices.tolist():
            source_file, target_file, flow_file, mask_file = self.samples[index]
            source, target, flow = load_image(source_file), load_image(target_file), read_flo(flow_file)[None]
            if flow.shape[-2:] != source.shape[-2:]:
                raise ValueError(f"{flow_file}: flow is {tuple(flow.shape[-2:])} but {source_file} is "
                                 f"{tuple(source.shape[-2:])} (H, W)")
            flow = torch.where(valid_flow_mask(flow)[:, None], flow, torch.zeros_like(flow))
            sources.append(resize_image(source, self.size))
            targets.append(resize_image(target, self.size))
            flows.append(resize_flow(flow, self.size))
            if mask_file is not None:
                mask = load_image(mask_file).mean(1, keepdim=True)
                masks.append(F.interpolate(mask, self.size, mode="nearest")[:, 0] > 0.5)
            else:
                masks.append(moving_mask(flows[-1]))
        return EditPairs(torch.cat(sources), torch.cat(targets), torch.cat(flows), torch.cat(masks))


def edit_region(flows: torch.Tensor, masks: torch.Tensor | None = None, threshold: float = 0.5,
                dilation: int = 2) -> torch.Tensor:
    """Where the target may differ from the source: ``(B, H, W)`` bool.

    The moving region of the source (``masks``, or flow longer than ``threshold`` pixels),
    united with where it lands in the target (each of its pixels moved by its flow, rounded
    to the nearest pixel), grown by ``dilation`` pixels (a square max-filter) so that the
    object's anti-aliased edge, rounding holes and small flow errors stay inside.
    """
    source = moving_mask(flows, threshold) if masks is None else masks.bool()
    region = (source | landing_mask(source, flows))[:, None].float()
    if dilation > 0:
        region = F.max_pool2d(region, 2 * dilation + 1, stride=1, padding=dilation)
    return region[:, 0] > 0.5


def landing_mask(mask: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """Where the pixels of ``mask`` ``(B, H, W)`` bool land when moved by ``flows`` ``(B, 2, H, W)``
    (pixels, rounded to the nearest): ``(B, H, W)`` bool. Unlike a normalised splat, the static
    pixels under the landing spot do not dilute it (the moving object covers them)."""
    batch, height, width = mask.shape
    grid = pixel_grid(height, width, flows.device, flows.dtype)
    target = (grid + flows).round().long()
    inside = mask & (target[:, 0] >= 0) & (target[:, 0] < width) & (target[:, 1] >= 0) & (target[:, 1] < height)
    index = (target[:, 1].clamp(0, height - 1) * width + target[:, 0].clamp(0, width - 1)).flatten(1)
    landed = torch.zeros(batch, height * width, device=flows.device)
    landed.scatter_add_(1, index, inside.flatten(1).float())
    return (landed > 0).view(batch, height, width)


def background_composite(sources: torch.Tensor, targets: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The training target with the source's background: ``region · target + (1 − region) · source``.

    Video frames also differ outside the moving object (camera shake, lighting, other motion);
    training on the raw target would teach the model to change the background. Inside
    ``region`` (:func:`edit_region`: where the object was and where it lands, so the uncovered
    background comes from the target frame) the target is kept; everywhere else the source.

    Args:
        sources, targets: ``(B, 3, H, W)`` in [0, 1].
        region: ``(B, H, W)`` bool.
    Returns:
        ``(B, 3, H, W)``.
    """
    if sources.shape != targets.shape or region.shape != (sources.shape[0], *sources.shape[-2:]):
        raise ValueError(f"background_composite: sources {tuple(sources.shape)}, targets {tuple(targets.shape)}, "
                         f"region {tuple(region.shape)}; expected two (B, 3, H, W) and a (B, H, W)")
    return torch.where(region[:, None], targets, sources)


def condition_dropout(batch: int, generator: torch.Generator, image_rate: float = IMAGE_DROPOUT,
                      flow_rate: float = FLOW_DROPOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples keep their image and flow conditions: ``(keep_image, keep_flow)``, each ``(B,)`` bool.

    One uniform draw ``u`` per sample: ``u < image_rate`` drops both, ``u < flow_rate`` drops
    the flow. So the image is dropped with probability ``image_rate`` (5 %), the flow with
    ``flow_rate`` (10 %), and the image never alone: training sees exactly the three inputs
    the guidance asks for (nothing, image only, image + flow) and never "flow without image".
    """
    if not 0 <= image_rate <= flow_rate <= 1:
        raise ValueError(f"dropout rates: expected 0 <= image_rate <= flow_rate <= 1, got {image_rate}, {flow_rate}")
    draws = torch.rand(batch, generator=generator, dtype=torch.float64)
    return draws >= image_rate, draws >= flow_rate
