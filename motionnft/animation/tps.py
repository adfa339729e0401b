"""The K thin-plate spline transforms of TPSMM (eq. 2 of the paper) and the background affine.

Convention:
    - keypoints and grids are ``(x, y)`` in the normalised ``grid_sample`` frame with
      ``align_corners=True`` (:func:`.layers.coordinate_grid`): -1 / +1 at the centres of the
      first / last pixel
    - keypoints come grouped as ``(B, K, N, 2)``: K transforms of N = 5 control points; a
      detector's ``(B, K·N, 2)`` output is reshaped in order
    - a transform is fitted **from driving to source** (kernels centred on the driving
      keypoints) and maps each driving-frame position to where it is sampled in the source,
      so the grids feed ``grid_sample(source, grid, align_corners=True)`` directly
    - weights are in kornia's layout (kernel ``U(r) = r² log r``; affine rows: constant,
      x, y), so :func:`kornia.geometry.transform.warp_points_tps` evaluates them

Why the fit is written here and not taken from kornia (or the drag spline): TPSMM solves
``(L + 0.01·I) θ = Y`` with the ridge on the *whole* diagonal, the affine block included
(so ``Pᵀw = -0.01·a`` rather than ``Pᵀw = 0``), and centres the kernels on the first point
set. ``kornia.geometry.transform.get_tps_transform`` has no ridge and centres the kernels on
its second argument; ``motionnft.drag.fit_thin_plate_spline`` puts the ridge on the kernel
block only. Measured against the official ``TPS(mode='kp')`` on 2 x 10 random transforms
(keypoints U(-1, 1), source = driving + N(0, 0.1²)) on a 64 x 64 grid, in normalised units:
kornia's fit + warp is off by up to 3.2 (mean 0.11), the drag spline with the equivalent
kernel ridge by up to 0.14 (mean 0.011), this fit (evaluated by kornia) by 4e-6 (mean 2e-7).
The same ridge means equal keypoints do not give the identity: the official grid is then
off by up to 0.17 (mean 0.013); the trained networks absorb that, and so must anything
compared with them.
"""

from __future__ import annotations

import torch
from kornia.geometry.linalg import transform_points
from kornia.geometry.transform import warp_points_tps

from .layers import coordinate_grid

TPS_RIDGE = 0.01
"""The official regulariser added to the whole diagonal of the TPS system (kernel ``r² log r²``)."""


def _check_groups(name: str, keypoints: torch.Tensor) -> None:
    if keypoints.ndim != 4 or keypoints.shape[-1] != 2:
        raise ValueError(f"{name}: expected (B, K, N, 2) keypoints, got {tuple(keypoints.shape)}")


def _radial(squared: torch.Tensor) -> torch.Tensor:
    """kornia's kernel ``U = r² log r`` written in ``s = r²`` (0 at s = 0)."""
    safe = torch.where(squared > 0, squared, torch.ones_like(squared))
    return 0.5 * squared * safe.log()


def fit_tps(driving: torch.Tensor, source: torch.Tensor, ridge: float = TPS_RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the K regularised splines that carry ``driving`` keypoints to ``source`` ones.

    The official system, with kernel ``r² log r²`` and ridge ρ on the whole diagonal,
    ``[[K + ρI, P], [Pᵀ, ρI]] [w; a] = [y; 0]``, is solved here in kornia's units (kernel
    halved, so ``w' = 2w``): ``[[K/2 + ρ/2·I, P], [Pᵀ, 2ρ·I]] [w'; a] = [y; 0]`` — the same
    field. The official ``log(r² + 1e-9)`` is ``log r²`` here: they differ by < 1e-9 · r⁻².

    Args:
        driving: ``(B, K, N, 2)`` control points (the kernel centres).
        source: ``(B, K, N, 2)`` where they go.
        ridge: ρ in the official units (0.01 in TPSMM).
    Returns:
        kernel weights ``(B, K, N, 2)`` and affine weights ``(B, K, 3, 2)``, dtype of ``driving``.

    Example:
        >>> kp = torch.rand(2, 10, 5, 2) * 2 - 1
        >>> kernel, affine = fit_tps(kp, kp)
        >>> kernel.shape, affine.shape
        (torch.Size([2, 10, 5, 2]), torch.Size([2, 10, 3, 2]))
    """
    _check_groups("driving", driving)
    _check_groups("source", source)
    if driving.shape != source.shape:
        raise ValueError(f"source: expected {tuple(driving.shape)} like driving, got {tuple(source.shape)}")
    batch, groups, n = driving.shape[:3]
    centres = driving.reshape(batch * groups, n, 2)
    eye_n = torch.eye(n, device=driving.device, dtype=driving.dtype)
    kernel = _radial((centres[:, :, None] - centres[:, None]).pow(2).sum(-1)) + 0.5 * ridge * eye_n
    affine = torch.cat((torch.ones_like(centres[..., :1]), centres), dim=-1)
    corner = (2 * ridge * torch.eye(3, device=driving.device, dtype=driving.dtype)).expand(batch * groups, 3, 3)
    system = torch.cat((torch.cat((kernel, affine), 2), torch.cat((affine.transpose(1, 2), corner), 2)), 1)
    rhs = torch.cat((source.reshape(batch * groups, n, 2), source.new_zeros(batch * groups, 3, 2)), 1)
    solution = torch.linalg.solve(system, rhs)
    return solution[:, :n].reshape(batch, groups, n, 2), solution[:, n:].reshape(batch, groups, 3, 2)


def apply_tps(points: torch.Tensor, centres: torch.Tensor, kernel: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Evaluate K splines (from :func:`fit_tps`) at the same points, with kornia.

    Args:
        points: ``(B, M, 2)``.
        centres: ``(B, K, N, 2)`` the driving keypoints the splines were fitted on.
        kernel, affine: ``(B, K, N, 2)`` and ``(B, K, 3, 2)``.
    Returns:
        ``(B, K, M, 2)``: where each point goes under each transform.
    """
    batch, groups, n = centres.shape[:3]
    flat_points = points[:, None].expand(-1, groups, -1, -1).reshape(batch * groups, -1, 2)
    warped = warp_points_tps(flat_points, centres.reshape(batch * groups, n, 2),
                             kernel.reshape(batch * groups, n, 2), affine.reshape(batch * groups, 3, 2))
    return warped.reshape(batch, groups, -1, 2)


def tps_grids(driving: torch.Tensor, source: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grids of the K keypoint transforms (eq. 2): driving pixel -> source position.

    Args:
        driving: ``(B, K, N, 2)`` driving keypoints; source: ``(B, K, N, 2)`` source keypoints.
    Returns:
        ``(B, K, H, W, 2)`` grids for ``grid_sample(..., align_corners=True)``.

    Example:
        >>> kp = torch.rand(1, 2, 5, 2) * 2 - 1
        >>> tps_grids(kp, kp, 4, 6).shape
        torch.Size([1, 2, 4, 6, 2])
    """
    kernel, affine = fit_tps(driving, source)
    grid = coordinate_grid(height, width, driving.device, driving.dtype).reshape(1, -1, 2)
    warped = apply_tps(grid.expand(driving.shape[0], -1, -1), driving, kernel, affine)
    return warped.reshape(*driving.shape[:2], height, width, 2)


def affine_grid(matrix: torch.Tensor | None, batch: int, height: int, width: int, device=None,
                dtype=torch.float32) -> torch.Tensor:
    """The background transform's sampling grid: ``matrix`` applied to the identity grid.

    Args:
        matrix: ``(B, 3, 3)`` homogeneous affine in the normalised frame (last row 0, 0, 1),
            or ``None`` for the identity.
    Returns:
        ``(B, H, W, 2)``.
    """
    grid = coordinate_grid(height, width, device, dtype).reshape(1, -1, 2).expand(batch, -1, -1)
    if matrix is not None:
        if matrix.shape != (batch, 3, 3):
            raise ValueError(f"bg_param: expected ({batch}, 3, 3), got {tuple(matrix.shape)}")
        grid = transform_points(matrix.to(dtype), grid)
    return grid.reshape(batch, height, width, 2)


def deformation_to_flow(deformation: torch.Tensor) -> torch.Tensor:
    """A TPSMM deformation grid as a flow in pixels, in this project's flow layout.

    Args:
        deformation: ``(B, H, W, 2)`` normalised (``align_corners=True``) source positions
            of each driving-frame pixel.
    Returns:
        ``(B, 2, H, W)`` pixels: for each driving-frame pixel, where its content is in the
        source (a backward flow, driving -> source).

    Example:
        >>> grid = coordinate_grid(4, 6)[None]
        >>> float(deformation_to_flow(grid).abs().max()) < 1e-6
        True
    """
    height, width = deformation.shape[1:3]
    scale = deformation.new_tensor([(width - 1) / 2, (height - 1) / 2])
    identity = coordinate_grid(height, width, deformation.device, deformation.dtype)
    return ((deformation - identity) * scale).permute(0, 3, 1, 2)
