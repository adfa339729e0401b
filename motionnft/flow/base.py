"""The one optical-flow interface every backend implements, and the backend registry."""

from __future__ import annotations

import abc
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from ..image import check_image_batch

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each image pair; may raise to cancel."""


class FlowEstimator(abc.ABC):
    """Dense optical flow from image batches.

    ``estimator(image1, image2)`` takes two ``(B, 3, H, W)`` float batches in [0, 1]
    (a batch of one on either side is broadcast over the other) and returns the flow
    ``(B, 2, H, W)`` float32 in **pixels** on the device of ``image1``: channel 0 is x
    (right), channel 1 is y (down), and ``flow[:, :, y, x]`` says where the pixel
    ``(x, y)`` of ``image1`` is found in ``image2``.
    """

    name: ClassVar[str]
    differentiable: ClassVar[bool] = False

    def __call__(
        self,
        image1: torch.Tensor,
        image2: torch.Tensor,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        image1, image2 = prepare_image_pair(image1, image2)
        flow = self.estimate(image1, image2, progress)
        return flow.to(device=image1.device, dtype=torch.float32)

    @abc.abstractmethod
    def estimate(
        self, image1: torch.Tensor, image2: torch.Tensor, progress: ProgressCallback | None
    ) -> torch.Tensor:
        """Flow for validated batches of equal shape ``(B, 3, H, W)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def prepare_image_pair(
    image1: torch.Tensor, image2: torch.Tensor, names: tuple[str, str] = ("image1", "image2")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two image batches and broadcast a batch of one over the other.

    Raises:
        ValueError naming the input when shapes cannot be paired.
    """
    image1 = check_image_batch(names[0], image1)
    image2 = check_image_batch(names[1], image2)
    if image1.shape[-2:] != image2.shape[-2:]:
        raise ValueError(
            f"{names[0]} is {image1.shape[-1]}x{image1.shape[-2]} but {names[1]} is "
            f"{image2.shape[-1]}x{image2.shape[-2]} (width x height): flow needs images of one size"
        )
    b1, b2 = image1.shape[0], image2.shape[0]
    if b1 != b2:
        if b1 == 1:
            image1 = image1.expand(b2, -1, -1, -1)
        elif b2 == 1:
            image2 = image2.expand(b1, -1, -1, -1)
        else:
            raise ValueError(
                f"{names[0]} has a batch of {b1} and {names[1]} a batch of {b2}: "
                "expected equal batch sizes, or a batch of 1 on one side"
            )
    return image1, image2.to(image1.device)


PRECISIONS = ("fp32", "bf16", "fp16")
"""Compute precisions a learned backend may run at (``fp32`` is the reference)."""


@dataclass(frozen=True)
class FlowBackend:
    """A registered flow backend: how to build it and which presets it offers.

    A backend without weights is built as ``factory(preset)``. One with
    ``needs_weights=True`` is built as ``factory(preset, weights=path, precision=...,
    device=...)``, where ``path`` is found by ``motionnft.flow.weights.find_weights``
    among ``weight_files`` (the file names it accepts, preferred first) unless given.
    """

    name: str
    factory: Callable[..., FlowEstimator]
    presets: tuple[str, ...]
    default_preset: str
    needs_weights: bool = False
    description: str = ""
    weight_files: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32",)


_BACKENDS: dict[str, FlowBackend] = {}


def register_backend(backend: FlowBackend) -> None:
    """Add a backend to the registry (a later registration of a name replaces it)."""
    if backend.default_preset not in backend.presets:
        raise ValueError(f"{backend.name}: default preset {backend.default_preset!r} not in {backend.presets}")
    _BACKENDS[backend.name] = backend
    _build_estimator.cache_clear()
    _build_learned_estimator.cache_clear()


def available_backends() -> dict[str, FlowBackend]:
    """Registered backends by name, in registration order."""
    return dict(_BACKENDS)


def get_backend(name: str) -> FlowBackend:
    """The backend called ``name``; the error lists the registered ones."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown flow backend {name!r}: expected one of {', '.join(_BACKENDS) or '(none registered)'}"
        ) from None


def create_estimator(
    backend: str = "dis",
    preset: str | None = None,
    *,
    weights: str | os.PathLike | None = None,
    precision: str | None = None,
    device: str | torch.device | None = None,
) -> FlowEstimator:
    """The estimator ``backend`` at ``preset``, built once and then reused.

    ``preset=None`` takes the backend's default preset. The keywords concern learned
    backends (``FlowBackend.needs_weights``):

    Args:
        weights: a weight file's path, or a file name looked up in the weight folders
            (``motionnft.flow.weights``); ``None`` takes the first of the backend's
            expected files found there. Backends without weights refuse it.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast); the OpenCV
            backends accept only ``None``/``"fp32"``.
        device: where the network runs (``None``: on the images' device); the flow is
            returned on the device of ``image1`` either way. CPU-only backends ignore it.
    Raises:
        ValueError for an unknown backend, preset or precision, or weights given to a
        backend without weights; ``WeightsNotFoundError`` (a ``FileNotFoundError``) naming
        every folder searched and the expected file names.
    """
    info = get_backend(backend)
    preset = info.default_preset if preset is None else preset
    if preset not in info.presets:
        raise ValueError(
            f"flow backend {backend!r} has no preset {preset!r}: expected one of {', '.join(info.presets)}"
        )
    if precision is not None and precision not in info.precisions:
        raise ValueError(
            f"flow backend {backend!r} has no precision {precision!r}: expected one of {', '.join(info.precisions)}"
        )
    if not info.needs_weights:
        if weights is not None:
            raise ValueError(f"flow backend {backend!r} uses no weights, but weights={str(weights)!r} was given")
        return _build_estimator(backend, preset)
    from .weights import find_weights

    path = find_weights(backend, info.weight_files, weights).resolve()
    stamp = path.stat().st_mtime_ns
    device_key = None if device is None else str(check_device(device))
    return _build_learned_estimator(backend, preset, str(path), stamp, precision or "fp32", device_key)


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing (ValueError) a malformed name or CUDA where torch has none."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available to this torch ({torch.__version__})")
    return device


@functools.lru_cache(maxsize=16)
def _build_estimator(backend: str, preset: str) -> FlowEstimator:
    return _BACKENDS[backend].factory(preset)


@functools.lru_cache(maxsize=4)
def _build_learned_estimator(
    backend: str, preset: str, path: str, stamp: int, precision: str, device: str | None
) -> FlowEstimator:
    # ``stamp`` (the file's mtime) is part of the key so a replaced file is loaded again.
    estimator = _BACKENDS[backend].factory(preset, weights=Path(path), precision=precision, device=device)
    logging.getLogger(__name__).info("flow backend %s: loaded %s (%s)", backend, path, estimator)
    return estimator


def estimate_flow(
    image1: torch.Tensor,
    image2: torch.Tensor,
    backend: str = "dis",
    preset: str | None = None,
    progress: ProgressCallback | None = None,
    **options,
) -> torch.Tensor:
    """``create_estimator(backend, preset, **options)(image1, image2)``: flow ``(B, 2, H, W)`` in pixels.

    ``options`` are ``create_estimator``'s keywords (``weights``, ``precision``, ``device``).
    """
    return create_estimator(backend, preset, **options)(image1, image2, progress)
