"""The training losses of TPSMM (``modules/model.py`` ``GeneratorFullModel`` of the official
code), with its loss weights as defaults.

- **perceptual**: a multi-scale VGG-19 loss; the frames are taken to an image pyramid
  (scales 1, 1/2, 1/4, 1/8) and at each scale the L1 distances of five VGG-19 activations
  (relu1_1 ... relu5_1, ImageNet normalisation) are summed with weights 10 each.
  :class:`VGG19Features` has torchvision's ``vgg19().features`` keys, so torchvision's
  ImageNet file (``vgg19-dcbb9e9d.pth``) loads as it is, from a **local path only**
  (:func:`load_vgg19`); nothing is downloaded. :class:`L1Pyramid` is a weight-free stand-in
  (plain L1 at each pyramid scale) for CPU proofs and tests; it is *not* the paper's loss.
- **equivariance**: keypoints must follow a random TPS deformation of the driving frame
  (:class:`RandomTPS`, weight 10).
- **warp**: the source's encoder features warped by the dense motion must match the
  driving frame's encoder features (both occluded; gradients reach only the motion;
  weight 10).
- **background**: the background affine from source to driving composed with the one from
  driving to source must be the identity (weight 10).

Not here (not in scope yet): the adversarial loss and the identity/motion decoupling loss
of the feature-decoupling paper; the official TPSMM has no adversarial term either.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AntiAliasInterpolation2d, coordinate_grid

PERCEPTUAL_WEIGHTS = (10.0, 10.0, 10.0, 10.0, 10.0)
"""Official ``loss_weights.perceptual``: one weight per VGG-19 slice (relu1_1 ... relu5_1)."""
SCALES = (1.0, 0.5, 0.25, 0.125)
"""Official ``train_params.scales`` of the image pyramid."""
EQUIVARIANCE_WEIGHT = 10.0
WARP_WEIGHT = 10.0
BACKGROUND_WEIGHT = 10.0
SIGMA_AFFINE = 0.05
SIGMA_TPS = 0.005
POINTS_TPS = 5
"""Official ``transform_params`` of the equivariance transform."""

VGG19_FILE = "vgg19-dcbb9e9d.pth"
"""torchvision's ImageNet VGG-19 weights (``torchvision.models.vgg19(weights=IMAGENET1K_V1)``)."""

# torchvision's vgg19 ``features``: convolution widths, "M" = max-pool (indices as torchvision's).
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_VGG19_SLICES = (2, 7, 12, 21, 30)
"""End indices of the official slices: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1."""


class ImagePyramid(nn.Module):
    """The official ``ImagePyramide``: the frame blurred and downsampled to each scale
    (the same anti-aliased downsampling as the dense motion network)."""

    def __init__(self, scales=SCALES, channels: int = 3):
        super().__init__()
        self.scales = tuple(scales)
        self.downs = nn.ModuleList(AntiAliasInterpolation2d(channels, s) for s in self.scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [down(x) for down in self.downs]


class VGG19Features(nn.Module):
    """VGG-19 up to relu5_1, keys ``features.N.weight`` as torchvision's, returning the five
    slice outputs of the official ``Vgg19`` (input in [0, 1], ImageNet-normalised here)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU(inplace=False)]
                width = item
        self.features = nn.Sequential(*layers[:_VGG19_SLICES[-1]])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, outputs, start = (x - self.mean) / self.std, [], 0
        for end in _VGG19_SLICES:
            for layer in self.features[start:end]:
                out = layer(out)
            outputs.append(out)
            start = end
        return outputs


def load_vgg19(path: str | os.PathLike | None) -> VGG19Features:
    """VGG-19 features from a local weight file (torchvision's ``vgg19-dcbb9e9d.pth``, or a
    ``.safetensors`` with the same keys); the classifier's keys are ignored.

    Raises:
        FileNotFoundError naming the path and the expected file when it is missing.
    """
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"perceptual loss: VGG-19 weights not found at {path!s} - expected torchvision's ImageNet VGG-19 "
            f"file {VGG19_FILE} (keys features.N.weight/bias) at that path (--vgg19 PATH, or vgg19=PATH in the "
            "config; nothing is downloaded), or use --perceptual l1_pyramid (a weight-free stand-in, not the "
            "paper's loss)")
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = VGG19Features()
    wanted = {k: v for k, v in state.items() if k.startswith("features.") and k in model.state_dict()}
    missing = set(model.state_dict()) - set(wanted)
    if missing:
        raise ValueError(f"{path}: not a VGG-19 state dict (missing {sorted(missing)[:4]} ...)")
    model.load_state_dict(wanted)
    return model.eval()


class PerceptualPyramidLoss(nn.Module):
    """Σ_scales Σ_i w_i · mean|VGG_i(prediction) - VGG_i(target)| (official; target detached)."""

    def __init__(self, vgg: VGG19Features, weights=PERCEPTUAL_WEIGHTS, scales=SCALES):
        super().__init__()
        self.vgg, self.weights, self.pyramid = vgg, tuple(weights), ImagePyramid(scales)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = prediction.new_zeros(())
        for generated, real in zip(self.pyramid(prediction), self.pyramid(target)):
            for weight, x, y in zip(self.weights, self.vgg(generated), self.vgg(real)):
                total = total + weight * (x - y.detach()).abs().mean()
        return total


class L1Pyramid(nn.Module):
    """Stand-in for the perceptual loss without weights: Σ_scales w · mean|prediction - target|
    on the same image pyramid, with ``w`` the sum of the perceptual weights divided by the
    number of slices (10 with the defaults). Not the paper's loss: no features, so it favours
    blur more than VGG does; used for CPU proofs and tests."""

    def __init__(self, weight: float = sum(PERCEPTUAL_WEIGHTS) / len(PERCEPTUAL_WEIGHTS), scales=SCALES):
        super().__init__()
        self.weight, self.pyramid = weight, ImagePyramid(scales)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weight * (x - y.detach()).abs().mean()
                   for x, y in zip(self.pyramid(prediction), self.pyramid(target)))


class RandomTPS:
    """The official equivariance transform (``Transform`` of FOMM/TPSMM): a random affine
    ``θ = I + N(0, σ_affine²)`` plus a thin-plate term on a ``points × points`` control grid
    with weights ``N(0, σ_tps²)``, acting on normalised ``(x, y)`` coordinates.

    Written here, not with kornia's ``warp_points_tps``: the official kernel is
    ``d² log(d + 1e-6)`` of the **L1** distance and adds the same scalar to x and y, while
    kornia's is ``r² log r`` of the Euclidean distance with separate x/y weights; σ_tps = 0.005
    is calibrated for the official kernel, so the deformations it draws are kept. ``sigma = 0``
    gives the identity exactly.

    Args:
        batch: transforms to draw (one per sample).
        generator: the draws' generator (reproducible runs).
    """

    def __init__(self, batch: int, sigma_affine: float = SIGMA_AFFINE, sigma_tps: float = SIGMA_TPS,
                 points: int = POINTS_TPS, generator: torch.Generator | None = None, dtype=torch.float32):
        noise = torch.randn(batch, 2, 3, generator=generator, dtype=dtype) * sigma_affine
        self.theta = noise + torch.eye(2, 3, dtype=dtype)[None]
        self.control_points = coordinate_grid(points, points, dtype=dtype).reshape(1, -1, 2)
        self.control_params = torch.randn(batch, 1, points * points, generator=generator, dtype=dtype) * sigma_tps
        self.batch = batch

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """``(B, M, 2)`` (or ``(1, M, 2)``, broadcast) -> ``(B, M, 2)``."""
        theta = self.theta.to(coordinates)[:, None]
        transformed = (theta[..., :2] @ coordinates[..., None] + theta[..., 2:]).squeeze(-1)
        control = self.control_points.to(coordinates)
        distances = (coordinates[:, :, None] - control[:, None]).abs().sum(-1)
        kernel = distances.pow(2) * torch.log(distances + 1e-6) * self.control_params.to(coordinates)
        return transformed + kernel.sum(dim=2, keepdim=True)

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """The frame resampled through the transform (reflection padding, as the official)."""
        height, width = frame.shape[2:]
        grid = coordinate_grid(height, width, frame.device, frame.dtype).reshape(1, -1, 2)
        grid = self.warp_coordinates(grid).reshape(self.batch, height, width, 2)
        return F.grid_sample(frame, grid, padding_mode="reflection", align_corners=True)


def equivariance_loss(kp_detector: nn.Module, driving: torch.Tensor, kp_driving: torch.Tensor,
                      transform: RandomTPS) -> torch.Tensor:
    """mean|kp(driving) - T(kp(T⁻¹-warped driving))|: the official ``equivariance_value`` (unweighted).

    ``transform_frame`` samples the driving frame at ``T(p)``, so a keypoint found at ``p``
    in the transformed frame lies at ``T(p)`` in the driving frame.
    """
    transformed_kp = kp_detector(transform.transform_frame(driving))
    return (kp_driving - transform.warp_coordinates(transformed_kp)).abs().mean()


def driving_encoder_maps(inpainting: nn.Module, driving: torch.Tensor, occlusion_maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The official ``get_encode``: the driving frame's encoder features, fine to coarse,
    each times its occlusion mask, all detached (targets of the warp loss)."""
    count = len(occlusion_maps)

    def occlude(features, mask):
        if mask.shape[2:] != features.shape[2:]:
            mask = F.interpolate(mask, size=features.shape[2:], mode="bilinear", align_corners=True)
        return features * mask

    with torch.no_grad():
        out = inpainting.first(driving)
        maps = [occlude(out, occlusion_maps[-1].detach())]
        for i, block in enumerate(inpainting.down_blocks):
            out = block(out)
            mask = occlusion_maps[len(inpainting.down_blocks) - 1 - i] if count > 1 else occlusion_maps[0]
            maps.append(occlude(out, mask.detach()))
    return maps


def warp_loss(encoder_maps: list[torch.Tensor], warped_features: list[torch.Tensor]) -> torch.Tensor:
    """Σ_levels mean|encode(driving)_i - warped(source)_i| (official ``warp_loss``, unweighted);
    ``warped_features`` come coarse to fine (:class:`.inpainting.Inpainting`)."""
    return sum((target - warped_features[-i - 1]).abs().mean() for i, target in enumerate(encoder_maps))


def background_loss(bg_param: torch.Tensor, bg_param_reverse: torch.Tensor) -> torch.Tensor:
    """mean|I - A(source→driving) · A(driving→source)| (official ``bg``, unweighted)."""
    eye = torch.eye(3, dtype=bg_param.dtype, device=bg_param.device)
    return (eye - bg_param @ bg_param_reverse).abs().mean()
