"""Differentiable flow functions for the guidance energy: ``flow_fn(source, result) -> flow``.

- :func:`correlation_flow_fn`: the weight-free soft block matcher
  (:mod:`motionnft.flow.correlation`), for tests, CPU toys and machines without RAFT files.
- :func:`estimator_flow_fn`: any differentiable :class:`~motionnft.flow.base.FlowEstimator`
  (the pack's RAFT and UniMatch), optionally with fewer RAFT iterations (the paper uses
  5) and at a reduced resolution (the flow is resized back with
  :func:`~motionnft.flow.warp.resize_flow`).

Convention: images ``(B, 3, H, W)`` in [0, 1] (a batch of 1 on the source broadcasts);
the flow ``(B, 2, H, W)`` in pixels of the *input* size, source -> result.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..flow.base import FlowEstimator
from ..flow.correlation import CorrelationFlowConfig, correlation_flow
from ..flow.warp import resize_flow
from .energy import FlowFn


def _resized(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=False)


def _working_size(size: tuple[int, int], scale: float, multiple: int) -> tuple[int, int]:
    height, width = size
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


def correlation_flow_fn(config: CorrelationFlowConfig = CorrelationFlowConfig(), scale: float = 1.0) -> FlowFn:
    """:func:`~motionnft.flow.correlation.correlation_flow` as a flow function.

    Args:
        config: radius, levels, patch, temperature.
        scale: compute at ``scale ×`` the input size (> 0), then resize the flow back.
    Returns:
        ``flow_fn(source (B, 3, H, W), result (B, 3, H, W)) -> (B, 2, H, W)`` pixels.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")

    def flow_fn(source: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        size = tuple(result.shape[-2:])
        work = _working_size(size, scale, 1)
        flow = correlation_flow(_resized(source, work), _resized(result, work), config)
        return resize_flow(flow, size)

    return flow_fn


def estimator_flow_fn(estimator: FlowEstimator, iterations: int | None = None, scale: float = 1.0,
                      multiple: int = 8) -> FlowFn:
    """A differentiable flow estimator (RAFT, UniMatch) as a flow function.

    Args:
        estimator: a :class:`~motionnft.flow.base.FlowEstimator` with ``differentiable = True``
            (e.g. ``create_estimator("raft_large", weights=...)``). It is not changed.
        iterations: RAFT refinement iterations (the paper: 5); None keeps the estimator's.
            Only for estimators with an ``iterations`` attribute (RAFT); a shallow copy
            carries the new count, sharing the network.
        scale: compute the flow at ``scale ×`` the image size (rounded to ``multiple``), then
            resize it back (:func:`~motionnft.flow.warp.resize_flow`); < 1 saves time and memory.
        multiple: side multiple of the reduced size (RAFT works on /8 features).
    Raises:
        ValueError: the estimator is not differentiable (OpenCV's DIS, Farneback), or
            ``iterations`` is given for one without iterations.
    """
    if not getattr(estimator, "differentiable", False):
        raise ValueError(f"{estimator!r} is not differentiable: Motion Guidance needs a torch flow network "
                         "(raft_large, raft_small, unimatch) or correlation_flow_fn()")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if iterations is not None:
        if not hasattr(estimator, "iterations"):
            raise ValueError(f"{estimator!r} has no refinement iterations to set")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        estimator = copy.copy(estimator)
        estimator.iterations = int(iterations)

    def flow_fn(source: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        size = tuple(result.shape[-2:])
        work = size if scale == 1.0 else _working_size(size, scale, multiple)
        flow = estimator(_resized(source, work), _resized(result, work))
        return resize_flow(flow, size)

    return flow_fn
