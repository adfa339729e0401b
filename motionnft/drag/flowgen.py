"""InstantDrag's FlowGen: image + sparse drags -> dense flow (a pix2pix-style U-Net GAN).

Written from the paper's description (Shin et al., "InstantDrag", SIGGRAPH Asia 2024, §3.1):
a U-Net generator with 8 down-samplings, 64 base filters and GroupNorm (54.4 M parameters)
and a PatchGAN discriminator (15.4 M), conditioned on the RGB image and a 2-channel sparse
drag map. The losses live in :mod:`.flowgen_losses`, the training in :mod:`.train_flowgen`.

Convention:
    - image: ``(B, 3, H, W)`` in [0, 1]; it enters the network in [-1, 1]
    - sparse drag map: ``(B, 2, H, W)`` in pixels, zero except at each drag's source pixel,
      where it holds the drag's displacement ``(dx, dy)`` (channel 0 = x right, 1 = y down)
    - each channel of the sparse map is divided by its largest absolute value (per sample),
      as in the paper, so the network sees drags of any length in [-1, 1]; its tanh output is
      multiplied back by the same per-channel scale (times ``output_gain``), which makes
      the dense flow in pixels of the input image, the library's flow convention
    - H and W must be multiples of ``2 ** depth`` (the U-Net halves them ``depth`` times)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

DISCRIMINATOR_FLOW_SCALE = 8.0
"""The discriminator sees flow as a fraction of the image size times this: drags of 5-20 %
of the size land near 1, like its other inputs."""


@dataclass(frozen=True)
class FlowGenConfig:
    """The generator and discriminator sizes (the saved config of a checkpoint).

    Attributes:
        base_channels: filters of the first level; level ``i`` has ``base · 2^i`` up to
            ``max_channels``.
        depth: down-samplings (the paper's 8: a 256 px input reaches 1 x 1).
        dropout: dropout of the innermost decoder blocks (pix2pix's source of noise).
        dropout_blocks: how many innermost decoder blocks get it.
        norm_groups: GroupNorm groups (fewer when a layer's channels are not a multiple).
        output_gain: the dense flow may reach ``output_gain`` times the largest drag per
            channel: tanh never reaches ±1, and points between drags may move further than
            any drag (an arm's tip when its middle is dragged).
        scale_floor: smallest per-channel scale, pixels (a channel no drag moves in).
        disc_channels, disc_layers, disc_max_channels: the PatchGAN's first width,
            stride-2 layers and width cap.
    """

    base_channels: int = 64
    depth: int = 8
    max_channels: int = 512
    dropout: float = 0.5
    dropout_blocks: int = 3
    norm_groups: int = 32
    output_gain: float = 2.0
    scale_floor: float = 1.0
    disc_channels: int = 64
    disc_layers: int = 6
    disc_max_channels: int = 512

    def __post_init__(self):
        for name in ("base_channels", "depth", "max_channels", "norm_groups", "disc_channels", "disc_layers",
                     "disc_max_channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"FlowGenConfig.{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FlowGenConfig.dropout: expected [0, 1), got {self.dropout}")
        if self.output_gain <= 0 or self.scale_floor <= 0:
            raise ValueError("FlowGenConfig: output_gain and scale_floor must be > 0")

    @classmethod
    def full(cls) -> "FlowGenConfig":
        """The paper's size: 54.4 M generator, 15.4 M discriminator parameters, 256 px input."""
        return cls()

    @classmethod
    def tiny(cls) -> "FlowGenConfig":
        """A 64 px model for tests and the CPU benchmark (1.8 M + 0.18 M parameters)."""
        return cls(base_channels=16, depth=6, max_channels=128, dropout=0.0, norm_groups=8,
                   disc_channels=16, disc_layers=3, disc_max_channels=128)

    def channels(self, level: int) -> int:
        return min(self.base_channels * 2 ** level, self.max_channels)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** self.depth


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def drag_scale(sparse: torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """Per-sample, per-channel largest absolute drag ``(B, 2, 1, 1)`` in pixels, at least ``floor``."""
    return sparse.detach().abs().amax(dim=(2, 3), keepdim=True).clamp_min(floor)


def pack_inputs(image: torch.Tensor, sparse: torch.Tensor, floor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's input ``(B, 5, H, W)``: image in [-1, 1], then the sparse map divided
    per channel by its largest absolute value; and that scale ``(B, 2, 1, 1)`` in pixels.

    Example:
        >>> packed, scale = pack_inputs(torch.rand(2, 3, 64, 64), torch.zeros(2, 2, 64, 64))
        >>> packed.shape, scale.shape
        (torch.Size([2, 5, 64, 64]), torch.Size([2, 2, 1, 1]))
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected (B, 3, H, W) in [0, 1], got {tuple(image.shape)}")
    if sparse.ndim != 4 or sparse.shape[1] != 2 or sparse.shape[0] != image.shape[0] \
            or sparse.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"sparse: expected ({image.shape[0]}, 2, {image.shape[2]}, {image.shape[3]}) drag map "
                         f"in pixels, got {tuple(sparse.shape)}")
    scale = drag_scale(sparse, floor)
    return torch.cat((image * 2 - 1, sparse / scale), dim=1), scale


def discriminator_inputs(image: torch.Tensor, sparse: torch.Tensor, flow: torch.Tensor,
                         floor: float = 1.0) -> torch.Tensor:
    """The discriminator's input ``(B, 7, H, W)``: the generator's packed input and a dense
    flow ``(B, 2, H, W)`` in pixels, as a fraction of the image size times
    :data:`DISCRIMINATOR_FLOW_SCALE` (real and generated flows in the same units, unclipped)."""
    packed, _ = pack_inputs(image, sparse, floor)
    size = flow.new_tensor([flow.shape[-1], flow.shape[-2]]).view(1, 2, 1, 1)
    return torch.cat((packed, flow / size * DISCRIMINATOR_FLOW_SCALE), dim=1)


class _Down(nn.Module):
    """LeakyReLU -> 4x4 stride-2 conv -> GroupNorm (the first block has neither activation
    nor norm, the innermost no norm: a 1 x 1 map has nothing to normalise over)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, outermost: bool, innermost: bool):
        super().__init__()
        layers = [] if outermost else [nn.LeakyReLU(0.2)]
        plain = outermost or innermost
        layers.append(nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=plain))
        if not plain:
            layers.append(_norm(out_channels, groups))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H/2, W/2)``."""
        return self.block(x)


class _Up(nn.Module):
    """ReLU -> 4x4 stride-2 transposed conv -> GroupNorm [-> dropout] (the outermost ends in
    the bare convolution; the tanh is applied by :class:`FlowGen`)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, outermost: bool, dropout: float):
        super().__init__()
        layers = [nn.ReLU(), nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=outermost)]
        if not outermost:
            layers.append(_norm(out_channels, groups))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, 2H, 2W)``."""
        return self.block(x)


class FlowGen(nn.Module):
    """The generator: a U-Net from (image, sparse drags) to dense flow in pixels."""

    def __init__(self, config: FlowGenConfig | None = None):
        super().__init__()
        self.config = config = config or FlowGenConfig()
        depth, groups = config.depth, config.norm_groups
        self.downs = nn.ModuleList(
            _Down(5 if i == 0 else config.channels(i - 1), config.channels(i), groups, i == 0, i == depth - 1)
            for i in range(depth))
        # Decoder level i maps to the resolution of encoder level i - 1; all but the
        # innermost also take that encoder level's features (the skip).
        self.ups = nn.ModuleList(
            _Up(config.channels(i) * (1 if i == depth - 1 else 2), 2 if i == 0 else config.channels(i - 1), groups,
                i == 0, config.dropout if 0 < depth - 1 - i < config.dropout_blocks + 1 and i > 0 else 0.0)
            for i in range(depth))

    def forward(self, image: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Dense flow from drags.

        Args:
            image: ``(B, 3, H, W)`` in [0, 1], H and W multiples of ``2 ** depth``.
            sparse: ``(B, 2, H, W)`` drag map in pixels (see the module's Convention).
        Returns:
            ``(B, 2, H, W)`` flow in pixels; channel ``c`` lies within ``± output_gain ·
            max|sparse[:, c]|``.
        """
        multiple = self.config.multiple
        if image.shape[-1] % multiple or image.shape[-2] % multiple:
            raise ValueError(f"image: H and W must be multiples of {multiple} (2 ** depth), got "
                             f"{tuple(image.shape[-2:])}; resize or pad first")
        x, scale = pack_inputs(image, sparse, self.config.scale_floor)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = self.ups[-1](skips[-1])
        for level in range(self.config.depth - 2, -1, -1):
            x = self.ups[level](torch.cat((x, skips[level]), dim=1))
        return torch.tanh(x) * scale * self.config.output_gain


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per receptive-field patch of (image, drags, flow)."""

    def __init__(self, config: FlowGenConfig | None = None):
        super().__init__()
        self.config = config = config or FlowGenConfig()
        width = [min(config.disc_channels * 2 ** i, config.disc_max_channels) for i in range(config.disc_layers + 1)]
        layers: list[nn.Module] = [nn.Conv2d(7, width[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, config.disc_layers + 1):
            stride = 2 if i < config.disc_layers else 1  # the last one widens the patch without shrinking the map
            layers += [nn.Conv2d(width[i - 1], width[i], 4, stride, 1, bias=False),
                       _norm(width[i], config.norm_groups), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width[-1], 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, sparse: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 1, h, w)`` (h, w about ``H / 2^disc_layers``) for ``image`` ``(B, 3, H, W)``
        in [0, 1], ``sparse`` and ``flow`` ``(B, 2, H, W)`` in pixels."""
        return self.net(discriminator_inputs(image, sparse, flow, self.config.scale_floor))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
