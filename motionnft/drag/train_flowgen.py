"""Training FlowGen on pairs with dense flow: pseudo-drags in, the whole flow out.

One step: draw a batch of pairs and ``maps_per_target`` pseudo-drag maps of each
(:mod:`.pseudo_drags`), update the discriminator on real vs generated flow, then the
generator on ``l1_weight · L1 + adversarial_weight · GAN`` (:mod:`.flowgen_losses`).

Every random draw of step ``s`` comes from ``derived_generator(seed, purpose, s)``, so the
batch of a step does not depend on what ran before it; a checkpoint (both networks, both
optimisers, the global RNG for dropout, the step) resumes the run exactly. Ctrl-C waits for
the step in progress, then saves.

Run: ``python -m motionnft.drag.train_flowgen --out RUN [--data FOLDER] [--steps N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training.checkpoints import Checkpoints
from ..training.interrupt import DeferInterrupt
from ..training.stepping import StepRunResult, add_setting_flags, run_steps, settings_from_flags
from ..training.seeding import derived_generator, rng_state, set_rng_state
from .flow_data import FlowBatch, FlowPairFolder, figure_scenes
from .flowgen import FlowGen, FlowGenConfig, PatchDiscriminator
from .flowgen_losses import discriminator_loss, flow_l1, generator_adversarial_loss, reconstruction_weights
from .pseudo_drags import STRATEGIES, moving_mask, sample_pseudo_drags

STATE_KEYS = {"step", "generator", "discriminator", "optimizer_g", "optimizer_d", "rng", "config"}
MODEL_SIZES = {"tiny": FlowGenConfig.tiny, "full": FlowGenConfig.full}


@dataclass(frozen=True)
class FlowGenTrainConfig:
    """Every setting of a FlowGen run (saved with each checkpoint).

    Attributes:
        model: ``"tiny"`` or ``"full"`` (:class:`FlowGenConfig`).
        steps: optimiser steps of the generator (the discriminator takes one per step too).
        batch_size: pairs per step; each gives ``maps_per_target`` drag maps.
        drags: inclusive range of drags per map.
        strategies: pseudo-drag strategies drawn from (:data:`~.pseudo_drags.STRATEGIES`).
        l1_weight, adversarial_weight: the generator's loss terms (pix2pix: 100 and 1).
        moving_weight: extra L1 weight of the moving region (:func:`reconstruction_weights`).
        motion_threshold: pixels; flow shorter than this is "not moving".
        learning_rate, beta1, beta2: Adam, both networks (pix2pix: 2e-4, 0.5, 0.999).
        save_every, keep: checkpoint every N steps (0: only at the end), and how many to keep.
        log_every: a metrics row (means since the last one) every N steps.
    """

    model: str = "tiny"
    steps: int = 2000
    batch_size: int = 16
    maps_per_target: int = 2
    drags: tuple[int, int] = (1, 5)
    strategies: tuple[str, ...] = STRATEGIES
    l1_weight: float = 100.0
    adversarial_weight: float = 1.0
    moving_weight: float = 4.0
    motion_threshold: float = 0.5
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    save_every: int = 500
    keep: int = 2
    log_every: int = 50

    def __post_init__(self):
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model: expected one of {', '.join(MODEL_SIZES)}, got {self.model!r}")
        for name in ("steps", "batch_size", "maps_per_target", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 1 <= self.drags[0] <= self.drags[1]:
            raise ValueError(f"drags: expected (low, high) with 1 <= low <= high, got {self.drags}")
        if self.l1_weight < 0 or self.adversarial_weight < 0 or self.l1_weight + self.adversarial_weight == 0:
            raise ValueError("l1_weight and adversarial_weight: expected >= 0, not both 0")

    def model_config(self) -> FlowGenConfig:
        return MODEL_SIZES[self.model]()


@dataclass(frozen=True)
class TrainingBatch:
    """One step's data: ``images`` ``(B', 3, H, W)``, ``sparse`` and ``flows`` ``(B', 2, H, W)``
    pixels, ``weights`` ``(B', H, W)`` (B' = batch_size · maps_per_target)."""

    images: torch.Tensor
    sparse: torch.Tensor
    flows: torch.Tensor
    weights: torch.Tensor


def make_batch(pairs: FlowBatch, config: FlowGenTrainConfig, generator: torch.Generator) -> TrainingBatch:
    """Pseudo-drag maps of ``pairs`` and the L1 weights of their targets."""
    drags = sample_pseudo_drags(pairs.flows, config.drags, config.strategies, pairs.masks, config.maps_per_target,
                                config.motion_threshold, generator)
    flows, valid = pairs.flows[drags.source], pairs.valid[drags.source]
    moving = moving_mask(flows, config.motion_threshold)
    weights = reconstruction_weights(flows, valid, moving, config.moving_weight)
    return TrainingBatch(pairs.images[drags.source], drags.sparse, flows, weights)


FlowGenTrainResult = StepRunResult  # what a run returns (a name kept for callers)


class FlowGenTrainer:
    """Generator, discriminator, their optimisers, and the run folder's checkpoints."""

    def __init__(self, config: FlowGenTrainConfig, data, out: str | os.PathLike, show_progress: bool = True):
        self.config, self.data, self.out, self.show_progress = config, data, Path(out), show_progress
        torch.manual_seed(config.seed)  # the initial weights
        model_config = config.model_config()
        self.generator, self.discriminator = FlowGen(model_config), PatchDiscriminator(model_config)
        betas = (config.beta1, config.beta2)
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), config.learning_rate, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), config.learning_rate, betas=betas)
        self.checkpoints = Checkpoints(self.out, config.keep)
        self.step = 0

    def batch(self, step: int) -> TrainingBatch:
        """The data of ``step`` (a function of the seed and the step alone)."""
        indices = torch.randint(len(self.data), (self.config.batch_size,),
                                generator=derived_generator(self.config.seed, "flowgen-pairs", step))
        return make_batch(self.data.batch(indices), self.config,
                          derived_generator(self.config.seed, "flowgen-drags", step))

    def train_step(self) -> dict:
        """One discriminator and one generator update; returns the step's losses."""
        config = self.config
        batch = self.batch(self.step)
        self.generator.train()
        self.discriminator.train()
        with DeferInterrupt():
            fake = self.generator(batch.images, batch.sparse)
            loss_d = torch.zeros(())
            if config.adversarial_weight > 0:
                loss_d = discriminator_loss(self.discriminator(batch.images, batch.sparse, batch.flows),
                                            self.discriminator(batch.images, batch.sparse, fake.detach()))
                self.optimizer_d.zero_grad(set_to_none=True)
                loss_d.backward()
                self.optimizer_d.step()
            l1 = flow_l1(fake, batch.flows, batch.weights)
            adversarial = (generator_adversarial_loss(self.discriminator(batch.images, batch.sparse, fake))
                           if config.adversarial_weight > 0 else torch.zeros(()))
            loss_g = config.l1_weight * l1 + config.adversarial_weight * adversarial
            self.optimizer_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.optimizer_g.step()
            self.step += 1
        return {name: float(value.detach()) for name, value in
                (("loss_g", loss_g), ("l1", l1), ("adversarial", adversarial), ("loss_d", loss_d))}

    def save_checkpoint(self, interrupted: bool = False) -> Path:
        state = {"step": self.step, "generator": self.generator.state_dict(),
                 "discriminator": self.discriminator.state_dict(), "optimizer_g": self.optimizer_g.state_dict(),
                 "optimizer_d": self.optimizer_d.state_dict(), "rng": rng_state(),
                 "config": json.loads(json.dumps(dataclasses.asdict(self.config))), "interrupted": interrupted}
        return self.checkpoints.save(self.step, state)

    def load_checkpoint(self, path: Path) -> None:
        state = self.checkpoints.load(path, STATE_KEYS, "a FlowGen trainer state (expected a dict with both "
                                      "networks, both optimisers and the RNG state)")
        if state["config"]["model"] != self.config.model:
            raise ValueError(f"{path}: a {state['config']['model']!r} FlowGen; this run trains {self.config.model!r}")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def run(self, resume: str | os.PathLike | None = "auto") -> FlowGenTrainResult:
        """Train to ``config.steps`` (from the checkpoint ``resume`` names, if any; ``"auto"``:
        this run folder's latest) and save a final checkpoint (:func:`~motionnft.training.stepping.run_steps`)."""
        return run_steps(self, "FlowGen", ("l1", "loss_d"), resume)


def load_generator(checkpoint: str | os.PathLike) -> FlowGen:
    """The generator of a checkpoint folder (or a run folder: its latest), in eval mode."""
    checkpoints = Checkpoints(checkpoint, keep=1)
    state = checkpoints.load(checkpoints.find(checkpoint), STATE_KEYS, "a FlowGen trainer state")
    generator = FlowGen(MODEL_SIZES[state["config"]["model"]]())
    generator.load_state_dict(state["generator"])
    return generator.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m motionnft.drag.train_flowgen", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv)")
    parser.add_argument("--data", help="dataset folder with images/<id>_flow.flo; default: synthetic figure scenes")
    parser.add_argument("--scenes", type=int, default=3000, help="synthetic scenes (without --data)")
    parser.add_argument("--size", type=int, default=64, help="training resolution (square), a multiple of 2**depth")
    parser.add_argument("--resume", default="auto", help="'auto', 'none', a run folder or a checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_setting_flags(parser, FlowGenTrainConfig)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> FlowGenTrainResult:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = settings_from_flags(FlowGenTrainConfig, args)
    data = (FlowPairFolder(args.data, (args.size, args.size)) if args.data
            else figure_scenes(args.scenes, args.size, seed=config.seed))
    resume = None if args.resume == "none" else args.resume
    return FlowGenTrainer(config, data, args.out).run(resume)


if __name__ == "__main__":
    main()
