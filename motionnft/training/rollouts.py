"""Rollouts: CFG-free samples of one prompt from one of the LoRA policies."""

from __future__ import annotations

import torch


@torch.no_grad()
def sample_rollouts(model, accelerator, condition, noise: torch.Tensor, sigmas: torch.Tensor, sampler: str,
                    batch_size: int) -> torch.Tensor:
    """Sample from ``noise`` ``(K, N, C)`` (packed latent tokens, CPU) with the transformer's
    active adapter, ``batch_size`` rollouts per transformer call.

    Args:
        condition: the prompt's :class:`~motionnft.models.Condition` (batch of one).
        sigmas: ``(steps + 1,)`` flow times from 1 to 0 (:meth:`~motionnft.models.EditModel.sigmas`).
        sampler: a :data:`motionnft.sampling.SAMPLERS` name.

    Returns:
        ``(K, N, C)`` float32 clean latents ``x0`` on the CPU.
    """
    from ..sampling import sample

    out = []
    for start in range(0, noise.shape[0], batch_size):
        chunk = noise[start:start + batch_size].to(accelerator.device)
        repeated = condition.repeat(chunk.shape[0])
        with accelerator.autocast():
            x0 = sample(lambda x, t: model.velocity(x, t, repeated), chunk, sigmas, sampler)
        out.append(x0.float().cpu())
    return torch.cat(out)


def decode(model, x0: torch.Tensor, size: tuple[int, int], device) -> torch.Tensor:
    """Packed latents ``(K, N, C)`` -> images ``(K, 3, H, W)`` in [0, 1], float32 on the CPU."""
    return model.decode_tokens(x0.to(device), size).float().cpu()
