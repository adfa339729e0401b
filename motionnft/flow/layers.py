"""Building blocks shared by the learned flow networks (RAFT, GMFlow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sample_at_pixels(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``volume`` at pixel coordinates; zeros outside.

    Args:
        volume: ``(N, C, H, W)``.
        coords: ``(N, h, w, 2)`` pixel positions ``(x, y)`` in ``volume``'s grid
            (``(0, 0)`` = centre of the top-left pixel).
    Returns:
        ``(N, C, h, w)`` in the dtype of ``coords``.
    """
    height, width = volume.shape[-2:]
    # align_corners=True: -1 and +1 are the centres of the first and last pixels.
    scale = coords.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = coords * scale - 1.0
    # Positions stay in their own (float32) precision: in bf16 they would be off by up to
    # half a pixel at 128 px. A lower-precision volume is sampled in the grid's precision.
    return F.grid_sample(volume.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def convex_upsample(flow: torch.Tensor, mask_logits: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample a coarse flow by ``factor``: every fine pixel is a convex combination of
    the 3x3 coarse neighbours of its coarse pixel (weights: softmax of ``mask_logits``).

    Args:
        flow: ``(B, 2, h, w)`` in coarse pixels.
        mask_logits: ``(B, 9 * factor**2, h, w)``, laid out as ``(9, factor, factor)``.
    Returns:
        ``(B, 2, h * factor, w * factor)`` in fine pixels.
    """
    batch, channels, height, width = flow.shape
    weights = mask_logits.view(batch, 1, 9, factor, factor, height, width).softmax(dim=2)
    neighbours = F.unfold(factor * flow, kernel_size=3, padding=1)
    neighbours = neighbours.view(batch, channels, 9, 1, 1, height, width)
    fine = (weights * neighbours).sum(dim=2)  # (B, C, fy, fx, h, w)
    return fine.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height * factor, width * factor)


def bilinear_upsample_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample a flow by ``factor`` (bilinear, corners aligned) and scale its vectors."""
    height, width = flow.shape[-2:]
    return factor * F.interpolate(flow, size=(height * factor, width * factor), mode="bilinear", align_corners=True)


class ConvGRUCell(nn.Module):
    """A convolutional GRU update ``h' = (1 - z) h + z q`` with gates computed from ``[h, x]``.

    Parameter names ``convz``/``convr``/``convq`` (update gate, reset gate, candidate).
    """

    def __init__(self, hidden: int, inputs: int, kernel: int | tuple[int, int]):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel, padding=padding)

    def forward(self, hidden: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return gru_step(self.convz, self.convr, self.convq, hidden, inputs)


def gru_step(convz: nn.Module, convr: nn.Module, convq: nn.Module, hidden: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """One GRU update with the given gate convolutions (see ``ConvGRUCell``)."""
    joint = torch.cat((hidden, inputs), dim=1)
    update = torch.sigmoid(convz(joint))
    reset = torch.sigmoid(convr(joint))
    candidate = torch.tanh(convq(torch.cat((reset * hidden, inputs), dim=1)))
    return (1 - update) * hidden + update * candidate


class FlowHead(nn.Module):
    """Two 3×3 convolutions with a ReLU between: features ``(N, channels, h, w)`` -> flow ``(N, 2, h, w)``
    (RAFT's flow head and GMFlow's refinement head)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))
