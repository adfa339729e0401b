"""One process or many (``accelerate launch``: DDP or FSDP) behind the same calls. Generic.

The trainers keep small trained parameters (LoRA matrices) whole on every process: under
FSDP they are left out of sharding (:func:`keep_whole_under_fsdp`) and their gradients
all-reduced by the trainer (:func:`clip_gradients`), so EMA, old policy and checkpoints
work as on one device.
"""

from __future__ import annotations

import torch


def make_accelerator(mixed_precision: str):
    """An ``accelerate.Accelerator``: ``mixed_precision`` (``"bf16"`` or ``"no"``) on CUDA,
    float32 on the CPU."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision if cuda else "no", cpu=not cuda)


def is_fsdp(accelerator) -> bool:
    return accelerator.distributed_type.value == "FSDP"


def keep_whole_under_fsdp(accelerator, modules: list[torch.nn.Module]) -> None:
    """Leave ``modules`` out of FSDP's sharding (call before ``accelerator.prepare``)."""
    accelerator.state.fsdp_plugin.ignored_modules = modules


def gather(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 in process order, on the CPU
    (this process's own on one process)."""
    if accelerator.num_processes > 1:
        return accelerator.gather(tensor.to(accelerator.device)).cpu()
    return tensor.cpu()


def clip_gradients(accelerator, parameters: list[torch.Tensor], max_norm: float, fsdp: bool) -> float:
    """Clip the gradients of ``parameters`` to ``max_norm``; returns the norm before clipping.

    Under FSDP the parameters were left unsharded, so DDP's gradient averaging does not
    reach them: their gradients are averaged over the processes here first.
    """
    if fsdp:
        for param in parameters:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.AVG)
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    return float(accelerator.clip_grad_norm_(parameters, max_norm))


def synchronize() -> None:
    """Wait for the GPU's queued work (so that wall-clock phase timings are honest)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
