"""Training TPSMM or the feature-decoupling paper's model on videos: pairs of frames of one
video, the source animated to the driving pose.

One step (the official ``GeneratorFullModel`` + ``train.py``): draw ``batch_size`` pairs
(a random video, two random frames of its training part, the earlier one the source),
detect keypoints on both, predict the background affine (after ``background_from``), the
dense motion (with TPS dropout until ``dropout_until``) and the frame; minimise
perceptual + equivariance + warp + background losses (:mod:`.losses`, TPSMM's weights);
Adam (2e-4, betas 0.5/0.999), learning rate x0.1 at 70 % and 90 % of the steps, keypoint
and background gradients clipped to an inf-norm of 10. The schedule's epochs are given as
fractions of ``steps`` here. Not in scope: the official data augmentation (flips, colour jitter).

The paper's model (:mod:`.paper_model`; ``motion_optimization`` and ``decoupling`` switch
its parts) adds the decoupling loss (:func:`.decoupling.decoupling_loss`, weight
``decoupling_weight``); ``adversarial_weight`` > 0 adds a multi-scale PatchGAN (LSGAN +
feature matching, :mod:`.adversarial`) with its own Adam step after the generator's.
Accelerate (when installed and ``accelerate`` is on) picks the device and runs several
processes under ``accelerate launch`` (:mod:`.train_parts`).

Frames are streamed once through :func:`motionnft.video.sample_frames`, centre-cropped to a
square, resized to ``size`` and kept as uint8 (3·size² bytes each); the last ``holdout``
fraction of each video is never trained on (:func:`reconstruction_l1` evaluates it).

Every random draw of step ``s`` comes from ``derived_generator(seed, purpose, s)``; a
checkpoint (model incl. batch-norm statistics, optimiser, global RNG, step) resumes the run
exactly. Ctrl-C waits for the step in progress, then saves.

Run: ``python -m motionnft.animation.train --video PATH --out RUN [--steps N] [--size 64]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..training.checkpoints import Checkpoints
from ..training.interrupt import DeferInterrupt
from ..training.stepping import StepRunResult, add_setting_flags, run_steps, settings_from_flags
from ..training.seeding import derived_generator, rng_state, set_rng_state
from .config import PRESETS
from .decoupling import decoupling_loss
from .losses import (BACKGROUND_WEIGHT, EQUIVARIANCE_WEIGHT, PERCEPTUAL_WEIGHTS, POINTS_TPS, SCALES, SIGMA_AFFINE,
                     SIGMA_TPS, VGG19_FILE, WARP_WEIGHT, L1Pyramid, PerceptualPyramidLoss, RandomTPS,
                     background_loss, driving_encoder_maps, equivariance_loss, load_vgg19, warp_loss)
from .model import TPSMM
from .paper_model import AnimationModelConfig, build_model
from .train_data import VideoFrames
from .train_parts import Adversary, add_switch_flags, average_gradients, make_accelerator

STATE_KEYS = {"step", "model", "optimizer", "rng", "config"}
PERCEPTUAL = ("vgg19", "l1_pyramid")
VGG_MIN_SIZE = 16
DECOUPLING_WEIGHT = 1.0
"""λ_dec: not given by the reference; 1 puts the (unit-scale) decoupling terms beside one perceptual level."""
ADVERSARIAL_WEIGHT = 1.0
FEATURE_MATCHING_WEIGHT = 10.0
"""λ_adv and λ_fm: not given by the reference; FOMM's generator_gan 1 and feature_matching 10."""


@dataclass(frozen=True)
class AnimationTrainConfig:
    """Every setting of a run (saved with each checkpoint).

    Attributes:
        model: a preset of :data:`.config.PRESETS` (``"tiny"`` for CPU).
        size: square training frame size (a multiple of the model's, e.g. 64 or 128 for tiny).
        perceptual: ``"vgg19"`` (the paper's loss; needs ``vgg19``, a local weight file) or
            ``"l1_pyramid"`` (a weight-free stand-in: L1 on the same pyramid).
        vgg19: path of torchvision's ``vgg19-dcbb9e9d.pth`` (never downloaded).
        equivariance_weight, warp_weight, background_weight: TPSMM's 10 each.
        sigma_affine, sigma_tps, points_tps: the equivariance transform (0.05, 0.005, 5).
        dropout_start_p, dropout_max_p: TPS dropout probability, rising linearly from the start
            value over ``dropout_ramp`` of the steps to the max, off after ``dropout_until``
            (official: 0.1, 0.3, epochs 10 and 35 of 100).
        background_from: fraction of the steps after which the background predictor and its
            loss are on (official: epoch 10 of 100).
        lr_milestones: fractions of the steps where the learning rate drops x0.1 (70, 90 of 100).
        clip: inf-norm gradient clip of the keypoint and background networks.
        holdout: the last fraction of each video's frames, never trained on.
        sample_fps: frames read per second of video (None: every frame).
        motion_optimization, decoupling: the paper model's parts (both off: TPSMM).
        decoupling_weight: λ_dec of :func:`.decoupling.decoupling_loss` (with ``decoupling``).
        adversarial_weight, feature_matching_weight: λ of the LSGAN generator loss and of the
            discriminator feature matching; 0 and 0 (the default, because the PatchGAN measurably
            hurt at CPU scale, docs/animation.md): no discriminator. When on: FOMM's
            :data:`ADVERSARIAL_WEIGHT` and :data:`FEATURE_MATCHING_WEIGHT`.
        discriminator_scales: the discriminator's pyramid.
        accelerate: use accelerate (device, several processes) when it is installed.
    """

    model: str = "tiny"
    size: int = 64
    steps: int = 2000
    batch_size: int = 8
    perceptual: str = "vgg19"
    vgg19: str = f"models/vgg19/{VGG19_FILE}"
    perceptual_weights: tuple[float, ...] = PERCEPTUAL_WEIGHTS
    scales: tuple[float, ...] = SCALES
    equivariance_weight: float = EQUIVARIANCE_WEIGHT
    warp_weight: float = WARP_WEIGHT
    background_weight: float = BACKGROUND_WEIGHT
    sigma_affine: float = SIGMA_AFFINE
    sigma_tps: float = SIGMA_TPS
    points_tps: int = POINTS_TPS
    dropout_start_p: float = 0.1
    dropout_max_p: float = 0.3
    dropout_ramp: float = 0.1
    dropout_until: float = 0.35
    background_from: float = 0.1
    learning_rate: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_milestones: tuple[float, ...] = (0.7, 0.9)
    clip: float = 10.0
    holdout: float = 0.0
    sample_fps: float = 0.0
    seed: int = 0
    save_every: int = 500
    keep: int = 2
    log_every: int = 50
    motion_optimization: bool = True
    decoupling: bool = True
    decoupling_weight: float = DECOUPLING_WEIGHT
    adversarial_weight: float = 0.0
    feature_matching_weight: float = 0.0
    discriminator_scales: tuple[float, ...] = (1.0, 0.5)
    accelerate: bool = True

    def __post_init__(self):
        if self.model not in PRESETS:
            raise ValueError(f"model: expected one of {', '.join(PRESETS)}, got {self.model!r}")
        if self.perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual: expected one of {PERCEPTUAL}, got {self.perceptual!r}")
        for name in ("steps", "batch_size", "keep", "log_every", "size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout: expected a fraction in [0, 1), got {self.holdout}")

    def model_config(self) -> AnimationModelConfig:
        return AnimationModelConfig.preset(self.model, self.motion_optimization, self.decoupling)

    @property
    def adversarial(self) -> bool:
        return self.adversarial_weight > 0 or self.feature_matching_weight > 0

    def dropout_p(self, step: int) -> float:
        """TPS dropout probability at ``step`` (0 once ``dropout_until`` of the steps are done)."""
        progress = step / self.steps
        if progress >= self.dropout_until or self.dropout_max_p <= 0:
            return 0.0
        ramp = progress / self.dropout_ramp if self.dropout_ramp > 0 else 1.0
        return min(ramp * self.dropout_max_p + self.dropout_start_p, self.dropout_max_p)

    def lr(self, step: int) -> float:
        return self.learning_rate * 0.1 ** sum(step >= m * self.steps for m in self.lr_milestones)


AnimationTrainResult = StepRunResult  # what a run returns (a name kept for callers)


class AnimationTrainer:
    """The model (TPSMM or the paper model), its optimiser, the losses, the optional discriminator and the
    run folder's checkpoints."""

    def __init__(self, config: AnimationTrainConfig, data: VideoFrames, out: str | os.PathLike,
                 show_progress: bool = True):
        self.config, self.data, self.out, self.show_progress = config, data, Path(out), show_progress
        if config.perceptual == "vgg19":
            # VGG-19 pools 4 times before relu5_1: a pyramid level under 16 px has no relu5_1.
            scales = tuple(s for s in config.scales if config.size * s >= VGG_MIN_SIZE)
            if len(scales) < len(config.scales):
                print(f"note: perceptual loss at {config.size} px: pyramid scales {scales} (levels under "
                      f"{VGG_MIN_SIZE} px dropped: VGG-19 cannot reach relu5_1 there)", file=sys.stderr)
            if not scales:
                raise ValueError(f"size {config.size}: no pyramid scale of {config.scales} is >= {VGG_MIN_SIZE} px")
            self.reconstruction = PerceptualPyramidLoss(load_vgg19(config.vgg19), config.perceptual_weights, scales)
        else:
            self.reconstruction = L1Pyramid(sum(config.perceptual_weights) / len(config.perceptual_weights),
                                            config.scales)
        self.accelerator = make_accelerator(config.accelerate)
        self.device = self.accelerator.device if self.accelerator is not None else torch.device("cpu")
        self.reconstruction = self.reconstruction.to(self.device)
        torch.manual_seed(config.seed)  # the initial weights
        self.model = build_model(config.model_config()).to(self.device)
        self.model.check_frame_size(config.size, config.size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), config.learning_rate,
                                          betas=(config.beta1, config.beta2))
        self.adversary = None
        if config.adversarial:
            small = config.model == "tiny"
            self.adversary = Adversary(config.discriminator_scales, 16 if small else 64, 128 if small else 512,
                                       config.learning_rate, (config.beta1, config.beta2),
                                       self.model.config.num_channels, self.device)
        if self.accelerator is not None:
            self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)
        self.checkpoints = Checkpoints(self.out, config.keep)
        self.step = 0

    def losses(self, source: torch.Tensor, driving: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """The weighted loss terms of one batch at ``step`` (random draws derived from the step)."""
        config, model = self.config, self.model
        kp_source, kp_driving = model.kp_detector(source), model.kp_detector(driving)
        use_background = model.bg_predictor is not None and step >= config.background_from * config.steps
        bg_param = model.bg_predictor(source, driving) if use_background else None
        motion = model.dense_motion_network(source, kp_driving, kp_source, bg_param, config.dropout_p(step),
                                            derived_generator(config.seed, "tpsmm-dropout", step))
        motion = model.refine_motion(source, motion)
        generated = model.generate(source, motion, warped_features=config.warp_weight > 0)
        terms = {"perceptual": self.reconstruction(generated.prediction, driving)}
        if generated.codes is not None and config.decoupling_weight > 0:
            identity_driving = model.decoupling.identity_code(model.inpainting_network.encode(driving)[-1],
                                                              generated.codes.identity_basis)
            terms["decoupling"] = config.decoupling_weight * decoupling_loss(generated.codes, identity_driving)
        if self.adversary is not None:
            gan, matching = self.adversary.generator_terms(generated.prediction, driving)
            terms["adversarial"] = config.adversarial_weight * gan
            terms["feature_matching"] = config.feature_matching_weight * matching
        if config.equivariance_weight > 0:
            transform = RandomTPS(driving.shape[0], config.sigma_affine, config.sigma_tps, config.points_tps,
                                  derived_generator(config.seed, "tpsmm-equivariance", step))
            terms["equivariance"] = config.equivariance_weight * equivariance_loss(
                model.kp_detector, driving, kp_driving, transform)
        if config.warp_weight > 0:
            targets = driving_encoder_maps(model.inpainting_network, driving, motion.occlusion_maps)
            terms["warp"] = config.warp_weight * warp_loss(targets, generated.warped_features)
        if use_background and config.background_weight > 0:
            terms["background"] = config.background_weight * background_loss(
                bg_param, model.bg_predictor(driving, source))
        terms["l1"] = (generated.prediction - driving).abs().mean().detach()  # monitored, not optimised
        self._last_prediction = generated.prediction  # the discriminator's step reuses it
        return terms

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs of ``step`` (a function of the seed, the step and the process alone)."""
        process = self.accelerator.process_index if self.accelerator is not None else 0
        keys = ("tpsmm-pairs", step) if process == 0 else ("tpsmm-pairs", step, process)
        source, driving = self.data.pairs(self.config.batch_size, derived_generator(self.config.seed, *keys))
        return source.to(self.device), driving.to(self.device)

    def train_step(self) -> dict:
        config = self.config
        source, driving = self.batch(self.step)
        self.model.train()
        with DeferInterrupt():
            for group in self.optimizer.param_groups:
                group["lr"] = config.lr(self.step)
            terms = self.losses(source, driving, self.step)
            loss = sum(value for name, value in terms.items() if name != "l1")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.accelerator, self.model.parameters())
            for network in (self.model.kp_detector, self.model.bg_predictor):
                if network is not None and config.clip > 0:
                    torch.nn.utils.clip_grad_norm_(network.parameters(), config.clip, norm_type=float("inf"))
            self.optimizer.step()
            extra = {}
            if self.adversary is not None:
                extra["discriminator"] = self.adversary.step(self._last_prediction, driving, config.lr(self.step),
                                                             self.accelerator)
            self._last_prediction = None
            self.step += 1
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}, **extra}

    def state(self, interrupted: bool = False) -> dict:
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "config": json.loads(json.dumps(dataclasses.asdict(self.config))),
                 "interrupted": interrupted}
        if self.adversary is not None:
            state["adversary"] = self.adversary.state()
        return state

    def save_checkpoint(self, interrupted: bool = False) -> Path | None:
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return None  # one writer; every process holds the same weights
        return self.checkpoints.save(self.step, self.state(interrupted))

    def load_checkpoint(self, path: Path) -> None:
        state = self.checkpoints.load(path, STATE_KEYS, "a TPSMM trainer state (expected a dict with the model, "
                                      "the optimiser and the RNG state)")
        # Runs written before the paper's parts existed were TPSMM runs (switches off).
        for key in ("model", "size", "motion_optimization", "decoupling"):
            if state["config"].get(key, False) != getattr(self.config, key):
                raise ValueError(f"{path}: trained with {key}={state['config'].get(key, False)!r}; this run has "
                                 f"{getattr(self.config, key)!r}")
        if ("adversary" in state) != (self.adversary is not None):
            raise ValueError(f"{path}: trained {'with' if 'adversary' in state else 'without'} a discriminator; "
                             f"this run has adversarial_weight={self.config.adversarial_weight}, "
                             f"feature_matching_weight={self.config.feature_matching_weight}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.adversary is not None:
            self.adversary.load(state["adversary"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def run(self, resume: str | os.PathLike | None = "auto") -> AnimationTrainResult:
        """Train to ``config.steps`` (from the checkpoint ``resume`` names, if any; ``"auto"``:
        this run folder's latest) and save a final checkpoint (:func:`~motionnft.training.stepping.run_steps`)."""
        return run_steps(self, "TPSMM", ("loss", "l1"), resume)


def load_model(checkpoint: str | os.PathLike) -> TPSMM:
    """The model of a checkpoint folder (or a run folder: its latest), in eval mode."""
    checkpoints = Checkpoints(checkpoint, keep=1)
    state = checkpoints.load(checkpoints.find(checkpoint), STATE_KEYS, "a TPSMM trainer state")
    config = state["config"]
    model = build_model(AnimationModelConfig.preset(config["model"], config.get("motion_optimization", False),
                                                    config.get("decoupling", False)))
    model.load_state_dict(state["model"])
    return model.eval()


def reconstruction_l1(model: TPSMM, frames: torch.Tensor, use_background: bool | None = None) -> dict[str, float]:
    """The video-reconstruction protocol on ``frames`` ``(T, 3, H, W)`` in [0, 1]: frame 0 is
    the source, each later frame drives (standard mode) and is compared with the output
    (:func:`.evaluation.reconstruct`).

    Returns:
        ``model``: mean L1 of the outputs against the driving frames (frames 1..T-1);
        ``static``: the same for the source itself ("nothing moves").
    """
    from .evaluation import reconstruct

    outputs, source, driving = reconstruct(model, frames, use_background), frames[:1], frames[1:]
    errors = (outputs - driving).abs().mean(dim=(1, 2, 3))
    return {"model": float(errors.mean()), "static": float((driving - source).abs().mean()), "frames": len(errors)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m motionnft.animation.train", description=__doc__.split("\n")[0])
    parser.add_argument("--video", required=True, help="a video file or a folder of videos")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv, config.json)")
    parser.add_argument("--resume", default="auto", help="'auto', 'none', a run folder or a checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_setting_flags(parser, AnimationTrainConfig)
    add_switch_flags(parser, AnimationTrainConfig)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> AnimationTrainResult:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = settings_from_flags(AnimationTrainConfig, args)
    data = VideoFrames.read(args.video, config.size, config.holdout, config.sample_fps or None)
    resume = None if args.resume == "none" else args.resume
    result = AnimationTrainer(config, data, args.out).run(resume)
    if config.holdout > 0:
        print(f"held-out reconstruction L1 (video 0): {reconstruction_l1(load_model(args.out), data.held_out(0))}",
              file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
