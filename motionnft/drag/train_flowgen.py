"""Training FlowGen on pairs with dense flow: pseudo-drags in, the whole flow out.

One step: draw a batch of pairs and ``maps_per_target`` pseudo-drag maps of each
(:mod:`.pseudo_drags`), update the discriminator on real vs generated flow, then the
generator on ``l1_weight · L1 + adversarial_weight · GAN`` (:mod:`.flowgen_losses`).

Every random draw of step ``s`` comes from ``derived_generator(seed, purpose, s)``, so the
batch of a step does not depend on what ran before it; a checkpoint (both networks, both
optimisers, the global RNG for dropout, the step) resumes the run exactly. Ctrl-C waits for
the step in progress, then saves.

Scene fine-tuning (:mod:`.finetune`): pass a trained ``generator`` and its ``init`` record to start
from its weights, and ``lora_rank`` > 0 to train only a LoRA on its ``Conv2d`` layers (the
discriminator, fresh, is trained whole either way). The checkpoint then keeps the whole
generator (the tiny one is 7 MB) and the init record, and resumes only on the same init.

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
from .finetune import InitRecord, add_conv_lora, check_same_init, merged_state
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
        lora_rank: 0 trains every generator weight; > 0 only a LoRA of this rank (alpha = rank) on
            its ``Conv2d`` layers (:func:`.finetune.add_conv_lora`; for a run from trained weights).
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
    lora_rank: int = 0

    def __post_init__(self):
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model: expected one of {', '.join(MODEL_SIZES)}, got {self.model!r}")
        for name in ("steps", "batch_size", "maps_per_target", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank: expected >= 0, got {self.lora_rank}")
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

    def __init__(self, config: FlowGenTrainConfig, data, out: str | os.PathLike, show_progress: bool = True,
                 generator: FlowGen | None = None, init: InitRecord | None = None):
        """``generator``: start from these weights (e.g. :func:`.finetune.load_flowgen_init`), whose
        config must be ``config.model``'s; ``init`` records where they came from (checked on resume)."""
        self.config, self.data, self.out, self.show_progress = config, data, Path(out), show_progress
        self.init = init
        torch.manual_seed(config.seed)  # the initial weights
        model_config = config.model_config()
        if generator is not None and generator.config != model_config:
            raise ValueError(f"generator: its config is not the {config.model!r} FlowGen's")
        self.generator = generator if generator is not None else FlowGen(model_config)
        self.discriminator = PatchDiscriminator(model_config)
        if config.lora_rank:
            add_conv_lora(self.generator, config.lora_rank, config.seed)
        betas = (config.beta1, config.beta2)
        trained = [parameter for parameter in self.generator.parameters() if parameter.requires_grad]
        self.optimizer_g = torch.optim.Adam(trained, config.learning_rate, betas=betas)
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
                 "config": json.loads(json.dumps(dataclasses.asdict(self.config))), "interrupted": interrupted,
                 "init": self.init.as_dict() if self.init is not None else ""}
        return self.checkpoints.save(self.step, state)

    def load_checkpoint(self, path: Path) -> None:
        state = self.checkpoints.load(path, STATE_KEYS, "a FlowGen trainer state (expected a dict with both "
                                      "networks, both optimisers and the RNG state)")
        if state["config"]["model"] != self.config.model:
            raise ValueError(f"{path}: a {state['config']['model']!r} FlowGen; this run trains {self.config.model!r}")
        check_same_init(state.get("init") or None, self.init, path)
        if int(state["config"].get("lora_rank", 0)) != self.config.lora_rank:
            raise ValueError(f"{path}: trained with lora_rank {state['config'].get('lora_rank', 0)}; this run has "
                             f"{self.config.lora_rank}")
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
    """The generator of a checkpoint folder (or a run folder: its latest), in eval mode; a LoRA
    run's is merged into a plain FlowGen."""
    checkpoints = Checkpoints(checkpoint, keep=1)
    state = checkpoints.load(checkpoints.find(checkpoint), STATE_KEYS, "a FlowGen trainer state")
    generator = FlowGen(MODEL_SIZES[state["config"]["model"]]())
    rank = int(state["config"].get("lora_rank", 0))
    if rank:
        add_conv_lora(generator, rank)
    generator.load_state_dict(state["generator"])
    return plain_generator(generator).eval()


def plain_generator(generator: FlowGen) -> FlowGen:
    """``generator`` itself, or a plain FlowGen with its LoRA merged in (what a FlowGen file holds)."""
    if not any("lora_" in name for name, _ in generator.named_parameters()):
        return generator
    plain = FlowGen(generator.config)
    plain.load_state_dict(merged_state(generator))
    plain.working_size = getattr(generator, "working_size", None)
    return plain.train(generator.training)


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
