"""What every learned (torch network) flow estimator shares: device, precision, batching,
out-of-memory fallback, progress and gradients."""

from __future__ import annotations

import abc
import contextlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .base import PRECISIONS, FlowEstimator, ProgressCallback, check_device
from .weights import load_weight_file

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class TorchFlowEstimator(FlowEstimator):
    """A flow network run on image batches.

    Subclasses set ``self.model`` (an ``nn.Module``) and implement ``run_network`` for one
    chunk of pairs. This class moves the network to the compute device, runs it under
    autocast for ``bf16``/``fp16``, splits the batch into chunks of ``max_batch`` pairs
    (halving the chunk on a CUDA out-of-memory error), reports progress per pair, and
    keeps autograd on only when an input requires gradients.

    Gradients flow from the returned flow back to both images (and to the network's
    parameters if the caller sets ``requires_grad`` on them); the detach points inside
    the networks are those of the reference implementations.
    """

    differentiable = True

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        max_batch: int = 8,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model.eval().requires_grad_(False)
        self.precision = precision
        self.device = None if device is None else check_device(device)
        self.max_batch = max_batch

    @abc.abstractmethod
    def run_network(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """Flow ``(b, 2, H, W)`` (float32, pixels) for images ``(b, 3, H, W)`` in [0, 1] on the model's device."""

    def _autocast(self, device: torch.device):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def estimate(self, image1, image2, progress: ProgressCallback | None) -> torch.Tensor:
        device = self.device if self.device is not None else image1.device
        self.model.to(device)
        wants_grad = torch.is_grad_enabled() and (
            image1.requires_grad or image2.requires_grad or any(p.requires_grad for p in self.model.parameters())
        )
        total = image1.shape[0]
        chunk = min(self.max_batch, total)
        flows: list[torch.Tensor] = []
        done = 0
        while done < total:
            size = min(chunk, total - done)
            a = image1[done : done + size].to(device=device, dtype=torch.float32)
            b = image2[done : done + size].to(device=device, dtype=torch.float32)
            try:
                with torch.set_grad_enabled(wants_grad), self._autocast(device):
                    flow = self.run_network(a, b)
            except Exception as error:
                if not (_is_out_of_memory(error) and size > 1):
                    raise
                chunk = max(1, size // 2)
                logger.warning("flow network out of memory with %d pairs at once; retrying with %d", size, chunk)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            flows.append(flow.float())
            for index in range(done, done + size):
                if progress is not None:
                    progress(index + 1, total)
            done += size
        return torch.cat(flows)


def state_dict_from(weights: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict from a file path or a mapping of tensors."""
    if isinstance(weights, Mapping):
        return dict(weights)
    return load_weight_file(Path(weights))


def check_state_dict_keys(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str
) -> None:
    """Load ``state_dict`` into ``model`` strictly, with an error that says what did not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                parts.append(f"{label} keys: {shown}")
        if wrong:
            shown = ", ".join(
                f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})" for k in wrong[:4]
            )
            parts.append(f"wrong shapes: {shown}")
        raise ValueError(f"{origin} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)
