"""The adversarial loss: a multi-scale PatchGAN discriminator, least-squares GAN losses and
discriminator feature matching (the setup FOMM-family animation models use; written here
from that description, no code copied).

- :class:`PatchDiscriminator`: strided 4 x 4 convolutions (instance norm after the first,
  LeakyReLU 0.2), then a 1-channel 4 x 4 convolution: one realness score per patch.
- :class:`MultiScaleDiscriminator`: one such discriminator per pyramid scale (1 and 1/2 by
  default) on the anti-aliased pyramid of :class:`.losses.ImagePyramid`.
- LSGAN: the generator minimises ``mean((1 - D(fake))²)``; the discriminator minimises
  ``mean((1 - D(real))²) + mean(D(fake)²)``.
- Feature matching: ``Σ_layers mean|D_l(real) - D_l(fake)|`` with the real features detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .losses import ImagePyramid


@dataclass
class DiscriminatorOutput:
    """Attributes:
        scores: one ``(B, 1, h_s, w_s)`` patch-score map per scale.
        features: per scale, the intermediate maps (for feature matching).
    """

    scores: list[torch.Tensor]
    features: list[list[torch.Tensor]]


class PatchDiscriminator(nn.Module):
    """``(B, C, H, W)`` in [0, 1] -> patch scores ``(B, 1, H/2^n - ., W/2^n - .)`` and features."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4, max_features: int = 512):
        super().__init__()
        blocks, width = [], num_channels
        for i in range(num_blocks):
            out = min(max_features, block_expansion * 2**i)
            layers = [nn.Conv2d(width, out, kernel_size=4, stride=2 if i < num_blocks - 1 else 1, padding=1)]
            if i > 0:
                layers.append(nn.InstanceNorm2d(out, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            blocks.append(nn.Sequential(*layers))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.score = nn.Conv2d(width, 1, kernel_size=4, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.score(x), features


class MultiScaleDiscriminator(nn.Module):
    """One :class:`PatchDiscriminator` per scale of the image pyramid.

    Args:
        scales: pyramid scales (1: the frame itself).
        block_expansion, num_blocks, max_features: each discriminator's widths and depth.
    """

    def __init__(self, scales: tuple[float, ...] = (1.0, 0.5), num_channels: int = 3, block_expansion: int = 64,
                 num_blocks: int = 4, max_features: int = 512):
        super().__init__()
        self.pyramid = ImagePyramid(scales, num_channels)
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(num_channels, block_expansion, num_blocks, max_features) for _ in scales)

    def forward(self, frame: torch.Tensor) -> DiscriminatorOutput:
        scores, features = [], []
        for level, discriminator in zip(self.pyramid(frame), self.discriminators):
            score, maps = discriminator(level)
            scores.append(score)
            features.append(maps)
        return DiscriminatorOutput(scores, features)


def generator_gan_loss(fake: DiscriminatorOutput) -> torch.Tensor:
    """LSGAN generator loss ``Σ_scales mean((1 - D(fake))²)``: 0 when every patch is judged real."""
    return sum(((1 - score) ** 2).mean() for score in fake.scores)


def discriminator_gan_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> torch.Tensor:
    """LSGAN discriminator loss ``Σ_scales mean((1 - D(real))²) + mean(D(fake)²)`` (``fake`` computed
    from detached frames)."""
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real.scores, fake.scores))


def feature_matching_loss(real: DiscriminatorOutput, fake: DiscriminatorOutput) -> torch.Tensor:
    """``Σ_scales Σ_layers mean|D_l(real) - D_l(fake)|``, the real features detached."""
    return sum(F.l1_loss(f, r.detach()) for rs, fs in zip(real.features, fake.features) for r, f in zip(rs, fs))
