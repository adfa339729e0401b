"""Parts of the animation trainer that are not TPSMM's: the adversary (discriminator, its
optimiser and its step), accelerate, and on/off flags for the model switches.

Accelerate: the trainer calls the model's networks one by one (keypoints, motion, generator),
so the model is not wrapped in DistributedDataParallel (whose gradient hooks expect its own
``forward``); instead each process draws its own pairs and the gradients are averaged over
processes after ``backward`` (:func:`average_gradients`), which is what DDP would compute.
On one process that is a no-op and the run is the plain single-device loop.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from .adversarial import (MultiScaleDiscriminator, discriminator_gan_loss, feature_matching_loss,
                          generator_gan_loss)


def make_accelerator(enabled: bool):
    """An ``accelerate.Accelerator`` (its device: the GPU of this process under ``accelerate
    launch``, else CUDA when present, else the CPU), or None when disabled or not installed."""
    if not enabled:
        return None
    try:
        from accelerate import Accelerator
    except ImportError:  # optional: the plain single-device loop
        return None
    return Accelerator()


def average_gradients(accelerator, parameters) -> None:
    """Mean of each parameter's gradient over the processes (nothing to do on one)."""
    if accelerator is None or accelerator.num_processes == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad = accelerator.reduce(parameter.grad, reduction="mean")


class Adversary:
    """A :class:`.adversarial.MultiScaleDiscriminator` with its Adam optimiser.

    Args:
        scales: the discriminator's pyramid scales.
        block_expansion, max_features: its widths (small for the tiny model).
        learning_rate, betas: its optimiser.
    """

    def __init__(self, scales: tuple[float, ...], block_expansion: int, max_features: int, learning_rate: float,
                 betas: tuple[float, float], num_channels: int = 3, device=None):
        self.discriminator = MultiScaleDiscriminator(tuple(scales), num_channels, block_expansion,
                                                     max_features=max_features).to(device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), learning_rate, betas=betas)

    def generator_terms(self, prediction: torch.Tensor, driving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(LSGAN generator loss, feature matching)`` of the generated frames (unweighted);
        the discriminator's parameters get no gradient from them that is used (its step
        clears its gradients first)."""
        with torch.no_grad():
            real = self.discriminator(driving)
        fake = self.discriminator(prediction)
        return generator_gan_loss(fake), feature_matching_loss(real, fake)

    def step(self, prediction: torch.Tensor, driving: torch.Tensor, learning_rate: float, accelerator=None) -> float:
        """One discriminator update on detached generated frames; returns its loss."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        loss = discriminator_gan_loss(self.discriminator(driving), self.discriminator(prediction.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(accelerator, self.discriminator.parameters())
        self.optimizer.step()
        return float(loss.detach())

    def state(self) -> dict:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


def add_switch_flags(parser: argparse.ArgumentParser, settings_class, dest_prefix: str = "") -> None:
    """``--name / --no-name`` for each bool field of the dataclass (``add_setting_flags`` takes
    int, float and str fields only)."""
    for field in dataclasses.fields(settings_class):
        if field.type == "bool":
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=dest_prefix + field.name,
                                action=argparse.BooleanOptionalAction, default=field.default,
                                help=f"(default {'on' if field.default else 'off'})")
