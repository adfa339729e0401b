"""FlowGen at inference: an image of any size and user drags -> dense flow; FlowGen weight files.

:func:`flowgen_flow` is what the Drag to Flow node and ``motionnft drag`` call. The network
only takes sizes that are multiples of ``2 ** depth``; the image goes to a *working size*
and the flow comes back:

- ``fit="resize"`` (default): the image is resized to ``S x S`` (aspect not kept). This is
  how the trainer sees its data (:class:`~.flow_data.FlowPairFolder` resizes every pair to the
  square training size), so the network gets what it learned on. The drags are scaled by the
  same x and y factors, the flow is resized back (:func:`~motionnft.flow.resize_flow`
  rescales its vectors per axis), so the result is in pixels of the input image.
- ``fit="pad"``: the long side is resized to ``S`` keeping the aspect ratio, the short side is
  padded (replicated edge pixels) up to the next multiple of ``2 ** depth``; the flow of the
  padding is cut off before resizing back. Shapes keep their proportions, at the cost of
  borders the network never saw in training.

``S`` is the generator's working size: ``generator.working_size`` when set (the training size
:func:`load_flowgen` reads from a file), else ``2 ** depth`` (256 for the paper's model, 64 for
the tiny one: the sizes they are trained at).

A FlowGen file (:func:`save_flowgen`) is one safetensors file: the generator's weights, and in
the header ``format = motionnft-flowgen``, the :class:`~.flowgen.FlowGenConfig` as JSON and the
working size. :func:`load_flowgen` reads it, or takes a trainer checkpoint or run folder
(:mod:`.train_flowgen`).

Convention: image ``(B, 3, H, W)`` in [0, 1]; drags and flow in pixels ``(x, y)`` of that image,
channel 0 = x (right), 1 = y (down).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import atomic_write
from ..flow.warp import resize_flow
from .flowgen import FlowGen, FlowGenConfig
from .pseudo_drags import drags_to_sparse
from .spline import DragList

FORMAT = "motionnft-flowgen"
"""The ``format`` value of a FlowGen file's safetensors header."""

FILE_NAME = "flowgen.safetensors"
"""What ``motionnft train-drag`` writes into its run folder; :func:`load_flowgen` also looks for it there."""

FITS = ("resize", "pad")


def working_size(generator: FlowGen) -> int:
    """The side ``S`` of the square the generator works at (see the module docstring), pixels."""
    size = getattr(generator, "working_size", None) or generator.config.multiple
    if size % generator.config.multiple:
        raise ValueError(f"working size {size}: expected a multiple of {generator.config.multiple} (2 ** depth)")
    return int(size)


def _fit_shape(height: int, width: int, size: int, multiple: int, fit: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(resized (h, w), padded (h, w))`` for an ``height x width`` image."""
    if fit == "resize":
        return (size, size), (size, size)
    if fit != "pad":
        raise ValueError(f"fit: expected one of {', '.join(FITS)}, got {fit!r}")
    scale = size / max(height, width)
    resized = (max(1, round(height * scale)), max(1, round(width * scale)))
    return resized, tuple(math.ceil(side / multiple) * multiple for side in resized)


@torch.no_grad()
def flowgen_flow(generator: FlowGen, image: torch.Tensor, drags: DragList, fit: str = "resize",
                 size: int | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense flow of ``drags`` on ``image`` by FlowGen.

    Args:
        generator: a :class:`~.flowgen.FlowGen` (run in eval mode here, then put back as it was).
        image: ``(B, 3, H, W)`` in [0, 1]; every image gets the same drags.
        drags: the point pairs, rescaled from their ``size`` to ``W x H`` (pixels of ``image``).
        fit: ``"resize"`` or ``"pad"``: how the image reaches the working size (module docstring).
        size: the working size ``S`` (a multiple of ``2 ** depth``); default :func:`working_size`.
        mask: optional ``(H, W)`` or ``(1 or B, H, W)`` in [0, 1]: where content may move; the
            flow is multiplied by it (as :func:`~.spline.drags_to_flow` does).
    Returns:
        ``(B, 2, H, W)`` float32 flow in pixels of ``image``, on ``image``'s device.

    Example:
        >>> from motionnft.drag import FlowGenConfig, parse_drags
        >>> generator = FlowGen(FlowGenConfig.tiny())
        >>> flowgen_flow(generator, torch.rand(1, 3, 48, 80), parse_drags("10,10 -> 20,12")).shape
        torch.Size([1, 2, 48, 80])
    """
    if image.ndim != 4 or image.shape[1] != 3 or image.numel() == 0:
        raise ValueError(f"image: expected (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
    batch, _, height, width = image.shape
    if mask is not None:
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or tuple(mask.shape[-2:]) != (height, width) or mask.shape[0] not in (1, batch):
            raise ValueError(f"mask: expected (H, W) or (1 or {batch}, H, W) with H, W = {height}, {width}; "
                             f"got {tuple(mask.shape)}")
    drags = drags.scaled_to(width, height)
    if len(drags) == 0:
        raise ValueError("drags: no drag pairs; FlowGen needs at least one")
    inside = ((drags.sources >= 0) & (drags.sources <= drags.sources.new_tensor([width - 1, height - 1]))).all(1)
    if not inside.any():
        raise ValueError(f"drags: every drag starts outside the {width}x{height} image")
    if size is not None:
        generator_size = size
        if size < 1 or size % generator.config.multiple:
            raise ValueError(f"size: expected a multiple of {generator.config.multiple} (2 ** depth), got {size}")
    else:
        generator_size = working_size(generator)
    (h, w), (padded_h, padded_w) = _fit_shape(height, width, generator_size, generator.config.multiple, fit)

    parameter = next(generator.parameters())
    work = image.to(parameter.device, torch.float32)
    work = F.interpolate(work, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if (padded_h, padded_w) != (h, w):
        work = F.pad(work, (0, padded_w - w, 0, padded_h - h), mode="replicate")
    scale = torch.tensor([w / width, h / height], dtype=torch.float64)
    sources = drags.sources.double().cpu() * scale
    displacements = (drags.targets.double().cpu() - drags.sources.double().cpu()) * scale
    # A source on the last pixel column / row must stay inside after scaling and rounding.
    sources = torch.minimum(sources, torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64))
    sparse = drags_to_sparse(sources[None].float(), displacements[None].float(), padded_h, padded_w,
                             valid=inside[None].cpu())
    sparse = sparse.to(parameter.device).expand(batch, -1, -1, -1)

    was_training = generator.training
    generator.eval()
    try:
        flow = generator(work.to(parameter.dtype), sparse.to(parameter.dtype)).float()
    finally:
        generator.train(was_training)
    flow = resize_flow(flow[..., :h, :w], (height, width))
    if mask is not None:
        flow = flow * mask.to(flow.device, flow.dtype).clamp(0, 1)[:, None]
    return flow.to(image.device)


def save_flowgen(path: str | os.PathLike, generator: FlowGen, size: int | None = None) -> Path:
    """Write ``generator`` as one safetensors file (atomically): its weights (float32), and in
    the header the format name, its :class:`~.flowgen.FlowGenConfig` (JSON) and the working size
    ``size`` (default :func:`working_size`). Returns the path."""
    from safetensors.torch import save

    if not isinstance(generator, FlowGen):
        raise TypeError(f"generator: expected a FlowGen, got {type(generator).__name__}")
    size = size or working_size(generator)
    if size % generator.config.multiple:
        raise ValueError(f"size: expected a multiple of {generator.config.multiple} (2 ** depth), got {size}")
    tensors = {name: value.detach().float().cpu().contiguous() for name, value in generator.state_dict().items()}
    metadata = {"format": FORMAT, "version": "1", "config": json.dumps(dataclasses.asdict(generator.config)),
                "working_size": str(int(size))}
    path = Path(path)
    with atomic_write(path) as handle:
        handle.write(save(tensors, metadata))
    return path


def load_flowgen(path: str | os.PathLike) -> FlowGen:
    """A FlowGen generator in eval mode (on the CPU) from:

    - a file :func:`save_flowgen` wrote (``.safetensors``);
    - a folder holding ``flowgen.safetensors`` (what ``motionnft train-drag`` leaves) or a
      trainer run folder / checkpoint folder (``checkpoints/latest``, ``trainer_state.pt``:
      :func:`~.train_flowgen.load_generator`); a trainer state is preferred when both exist,
      since it is the newest; a ``trainer_state.pt`` file stands for its folder.

    The generator's ``working_size`` attribute is set from the file (the square the network
    was trained at). Raises FileNotFoundError / ValueError naming ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"FlowGen weights not found: {path}")
    if path.is_file() and path.name == "trainer_state.pt":
        path = path.parent
    if path.is_dir():
        if (path / "checkpoints" / "latest").is_file() or (path / "trainer_state.pt").is_file():
            from .train_flowgen import load_generator

            try:
                return load_generator(path)
            except (KeyError, RuntimeError) as error:
                raise ValueError(f"{path}: not a FlowGen trainer checkpoint ({type(error).__name__}: {error})") from None
        if (path / FILE_NAME).is_file():
            return _load_file(path / FILE_NAME)
        raise FileNotFoundError(f"{path}: no FlowGen weights in this folder (looked for {path / FILE_NAME}, "
                                f"{path / 'checkpoints' / 'latest'} and {path / 'trainer_state.pt'})")
    return _load_file(path)


def _load_file(path: Path) -> FlowGen:
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        tensors = load(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a safetensors file ({error}); expected a FlowGen file from "
                         "save_flowgen / motionnft train-drag") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a FlowGen file (its header has format={metadata.get('format')!r}, expected "
                         f"{FORMAT!r}); write one with save_flowgen or motionnft train-drag")
    try:
        config = FlowGenConfig(**json.loads(metadata["config"]))
        size = int(metadata.get("working_size") or config.multiple)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: unreadable FlowGen config in the header ({type(error).__name__}: {error})") from None
    generator = FlowGen(config)
    try:
        generator.load_state_dict(tensors)
    except RuntimeError as error:
        first = str(error).splitlines()[1:2] or [str(error)]
        raise ValueError(f"{path}: weights do not match the config in its header ({first[0].strip()})") from None
    generator.working_size = size
    return generator.eval()
