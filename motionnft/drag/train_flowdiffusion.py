"""Training FlowDiffusion: ε-prediction on (source, flow) -> background-consistent target.

One step: draw ``batch_size`` pairs; replace each target's background by the source's
(:func:`.flowdiffusion_data.background_composite` over :func:`.flowdiffusion_data.edit_region`);
encode source and target; drop conditions (image 5 %, flow 10 %, the image only with the
flow: :func:`.flowdiffusion_data.condition_dropout`); noise the target latent at a uniform
timestep of SD 1.5's schedule and regress the noise (MSE). Full fine-tuning, or LoRA
(``lora_rank`` 8 on the attention projections ``to_q/to_k/to_v/to_out.0`` via peft, as the
paper's per-scene fine-tuning) with everything else frozen but ``conv_in`` while the model has
never seen the image and flow conditions (their input channels all zero, as
:func:`.flowdiffusion.from_sd_unet` leaves them): a LoRA on the attention layers alone could not
read them.

Every draw of step ``s`` comes from ``derived_generator(seed, purpose, s)``; a checkpoint (the
trained weights, the optimiser, the RNG, the step) resumes the run exactly. Ctrl-C waits for
the step in progress, then saves.

Run: ``python -m motionnft.drag.train_flowdiffusion --out RUN [--data FOLDER] [--steps N] [--lora-rank 8]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..training.checkpoints import Checkpoints
from ..training.interrupt import DeferInterrupt
from ..training.stepping import StepRunResult, add_setting_flags, run_steps, settings_from_flags
from ..training.seeding import derived_generator, rng_state, set_rng_state
from .finetune import InitRecord, check_same_init
from .flowdiffusion import LATENT_CHANNELS, PREDICTION_TYPES, FlowDiffusion
from .flowdiffusion_conditioning import Codec, PooledRGBCodec, encode_images, flow_condition
from .flowdiffusion_files import CONV_IN
from .flowdiffusion_data import (FLOW_DROPOUT, IMAGE_DROPOUT, EditPairFolder, EditPairs, background_composite,
                                 condition_dropout, edit_region, figure_pairs)
from .flowdiffusion_sampling import make_scheduler

STATE_KEYS = {"step", "model", "optimizer", "rng", "config"}
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet's attention projections (self- and cross-attention) a FlowDiffusion LoRA adapts."""


@dataclass(frozen=True)
class FlowDiffusionTrainConfig:
    """Every setting of a FlowDiffusion run (saved with each checkpoint).

    Attributes:
        size: training resolution (square, pixels); a multiple of the codec factor times 4.
        codec_factor, codec_scale: the tiny model's :class:`PooledRGBCodec` (latent = size / factor,
            values times scale; 2.5 brings the synthetic scenes' latents near unit variance).
        steps, batch_size: optimiser steps and pairs per step.
        learning_rate, weight_decay, max_grad_norm: AdamW and gradient clipping.
        lora_rank: 0 trains every weight; > 0 trains only a LoRA of this rank (alpha = rank).
        lora_conv_in: with a LoRA, also train the 10-channel ``conv_in`` (its weights are then kept
            by checkpoints and ``lora`` files). None (default): when its image / flow channels are
            all zero, i.e. the model was just made from an SD UNet and cannot see the conditions.
        prediction_type: the UNet's output, ``"epsilon"`` (SD 1.5, the paper) or ``"v_prediction"``
            (for the tiny model trained from scratch: see :class:`.flowdiffusion.FlowDiffusion`).
            Set on the model by the trainer and saved with the checkpoint.
        image_dropout, flow_dropout: condition dropout rates (paper: 5 % and 10 %).
        composite: replace each target's background by the source's (paper: yes).
        dilation, motion_threshold: the composite's edit region (pixels; see ``edit_region``).
        save_every, keep, log_every: checkpoints every N steps (0: at the end only), kept, metrics rows.
    """

    size: int = 64
    codec_factor: int = 2
    codec_scale: float = 2.5
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 0
    lora_conv_in: bool | None = None
    prediction_type: str = "epsilon"
    image_dropout: float = IMAGE_DROPOUT
    flow_dropout: float = FLOW_DROPOUT
    composite: bool = True
    dilation: int = 2
    motion_threshold: float = 0.5
    seed: int = 0
    save_every: int = 500
    keep: int = 2
    log_every: int = 25

    def __post_init__(self):
        for name in ("size", "codec_factor", "steps", "batch_size", "keep", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.size % (4 * self.codec_factor):
            raise ValueError(f"size: expected a multiple of 4 x codec_factor = {4 * self.codec_factor}, "
                             f"got {self.size}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type: expected one of {', '.join(PREDICTION_TYPES)}, "
                             f"got {self.prediction_type!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank: expected >= 0, got {self.lora_rank}")
        if not 0 <= self.image_dropout <= self.flow_dropout <= 1:
            raise ValueError("dropout: expected 0 <= image_dropout <= flow_dropout <= 1 (the image is only dropped "
                             f"together with the flow), got {self.image_dropout}, {self.flow_dropout}")


def add_lora(model: FlowDiffusion, rank: int = 8, alpha: float | None = None,
             targets: tuple[str, ...] = LORA_TARGETS, train_conv_in: bool = False) -> list[str]:
    """Freeze ``model`` and add a peft LoRA of ``rank`` to ``targets`` (default: every attention
    projection of its UNet).

    ``train_conv_in``: keep the 10-channel ``conv_in`` trainable too. A model fresh from
    :func:`.flowdiffusion.from_sd_unet` needs it: its image and flow input channels are zero, and
    frozen they stay zero, so the LoRA would never see the conditions
    (:func:`conditions_unseen` tells that case).

    Returns the names of the trainable parameters (the LoRA's, then ``conv_in``'s).
    """
    from peft import LoraConfig

    model.requires_grad_(False)
    model.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                      target_modules=list(targets)))
    names = []
    for name, parameter in model.named_parameters():
        trainable = "lora_" in name or (train_conv_in and name in CONV_IN)
        parameter.requires_grad_(trainable)
        if trainable:
            names.append(name)
    return names


def conditions_unseen(model: FlowDiffusion) -> bool:
    """Whether ``model``'s ``conv_in`` ignores the image and flow (their input channels all zero):
    a model just made by :func:`.flowdiffusion.from_sd_unet`, never trained on the conditions."""
    return bool(model.unet.conv_in.weight[:, LATENT_CHANNELS:].detach().abs().max() == 0)


@dataclass(frozen=True)
class DiffusionBatch:
    """One step's inputs: latents ``(B, 4, h, w)`` of the (composited) targets and the sources,
    the flow condition ``(B, 2, h, w)``, ``noise`` like the latents, ``timesteps`` ``(B,)`` long,
    and the dropout decisions ``keep_image``/``keep_flow`` ``(B,)`` bool."""

    targets: torch.Tensor
    image_latents: torch.Tensor
    flow: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    keep_image: torch.Tensor
    keep_flow: torch.Tensor


def make_batch(pairs: EditPairs, codec: Codec, config: FlowDiffusionTrainConfig, generator: torch.Generator,
               num_train_timesteps: int = 1000) -> DiffusionBatch:
    """Composite, encode, drop conditions and draw noise and timesteps for ``pairs``."""
    targets = pairs.targets
    if config.composite:
        region = edit_region(pairs.flows, pairs.masks, config.motion_threshold, config.dilation)
        targets = background_composite(pairs.sources, targets, region)
    with torch.no_grad():  # on the CPU in float32 like the noise (the codec may run on a GPU)
        target_latents = encode_images(codec, targets).float().cpu()
        image_latents = encode_images(codec, pairs.sources).float().cpu()
    flow = flow_condition(pairs.flows, tuple(image_latents.shape[-2:]))
    batch = target_latents.shape[0]
    keep_image, keep_flow = condition_dropout(batch, generator, config.image_dropout, config.flow_dropout)
    noise = torch.randn(target_latents.shape, generator=generator)
    timesteps = torch.randint(num_train_timesteps, (batch,), generator=generator)
    return DiffusionBatch(target_latents, image_latents, flow, noise, timesteps, keep_image, keep_flow)


def diffusion_loss(model: FlowDiffusion, noise_scheduler, batch: DiffusionBatch) -> torch.Tensor:
    """The denoising loss (a scalar):
    ``mean ‖y − f_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t, image · keep_image, flow · keep_flow)‖²`` with the
    target ``y = ε`` (``model.prediction_type == "epsilon"``) or ``y = v = √ᾱ_t ε − √(1−ᾱ_t) z``."""
    parameter = next(model.parameters())
    device, dtype = parameter.device, parameter.dtype
    noisy = noise_scheduler.add_noise(batch.targets, batch.noise, batch.timesteps)
    image = batch.image_latents * batch.keep_image.view(-1, 1, 1, 1)
    flow = batch.flow * batch.keep_flow.view(-1, 1, 1, 1)
    prediction = model(noisy.to(device, dtype), batch.timesteps.to(device), image.to(device, dtype),
                       flow.to(device, dtype))
    if getattr(model, "prediction_type", "epsilon") == "v_prediction":
        target = noise_scheduler.get_velocity(batch.targets, batch.noise, batch.timesteps)
    else:
        target = batch.noise
    return F.mse_loss(prediction.float(), target.to(device))


def trainable_state(model: FlowDiffusion) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps: every tensor (full fine-tune), or the LoRA's plus ``conv_in``
    (trained with a LoRA made on a fresh model; 0.1 MB for SD 1.5, so kept either way)."""
    state = model.state_dict()
    if any("lora_" in name for name in state):
        return {name: tensor for name, tensor in state.items() if "lora_" in name or name in CONV_IN}
    return state


FlowDiffusionTrainResult = StepRunResult  # what a run returns (a name kept for callers)


class FlowDiffusionTrainer:
    """The model, its optimiser, the codec and the run folder's checkpoints.

    ``model``/``codec`` default to the tiny FlowDiffusion (initial weights from ``config.seed``)
    and :class:`PooledRGBCodec`; pass a real SD 1.5 FlowDiffusion (``from_sd_unet``) and
    :class:`SDVAECodec` instead, with ``base_name`` naming its SD 1.5 checkpoint. For LoRA the
    base weights are not saved: a resumed run must be built on the same base (a checkpoint
    records ``base_name``; resuming a base run without one, or the reverse, is refused). A run
    started from a trained FlowDiffusion file (``--init``) passes that model and its ``init``
    record (:class:`.finetune.InitRecord`), checked the same way on resume.
    """

    def __init__(self, config: FlowDiffusionTrainConfig, data, out: str | os.PathLike,
                 model: FlowDiffusion | None = None, codec: Codec | None = None, show_progress: bool = True,
                 base_name: str | None = None, init: InitRecord | None = None):
        self.config, self.data, self.out, self.show_progress = config, data, Path(out), show_progress
        self.base_name, self.init = base_name, init
        if model is None:
            torch.manual_seed(config.seed)  # the initial weights
            model = FlowDiffusion.tiny(config.size // config.codec_factor)
        model.prediction_type = config.prediction_type
        self.model = model
        self.codec = codec or PooledRGBCodec(config.codec_factor, config.codec_scale)
        if config.lora_rank:
            train_conv_in = conditions_unseen(model) if config.lora_conv_in is None else config.lora_conv_in
            # The resolved choice is what the run did: saved with it, and the same on resume
            # (the model is rebuilt fresh before the checkpoint is loaded).
            self.config = config = dataclasses.replace(config, lora_conv_in=train_conv_in)
            # peft draws the LoRA's initial weights from the global RNG: seed them, so that a run
            # is a function of its seed, without touching the caller's RNG state.
            device = next(model.parameters()).device
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(config.seed)
                add_lora(model, config.lora_rank, train_conv_in=train_conv_in)
        parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, config.learning_rate, weight_decay=config.weight_decay)
        self.noise_scheduler = make_scheduler("ddpm")
        self.checkpoints = Checkpoints(self.out, config.keep)
        self.step = 0

    def batch(self, step: int) -> DiffusionBatch:
        """The data of ``step`` (a function of the seed and the step alone)."""
        config = self.config
        indices = torch.randint(len(self.data), (config.batch_size,),
                                generator=derived_generator(config.seed, "flowdiffusion-pairs", step))
        return make_batch(self.data.batch(indices), self.codec, config,
                          derived_generator(config.seed, "flowdiffusion-noise", step),
                          self.noise_scheduler.config.num_train_timesteps)

    def train_step(self) -> dict:
        """One optimiser step; returns the step's loss."""
        batch = self.batch(self.step)
        self.model.train()
        with DeferInterrupt():
            loss = diffusion_loss(self.model, self.noise_scheduler, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                                  self.config.max_grad_norm)
            self.optimizer.step()
            self.step += 1
        return {"loss": float(loss.detach()), "grad_norm": float(norm)}

    def save_checkpoint(self, interrupted: bool = False) -> Path:
        state = {"step": self.step, "model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "config": json.loads(json.dumps(dataclasses.asdict(self.config))),
                 "unet_config": json.loads(json.dumps(dict(self.model.unet.config))), "interrupted": interrupted,
                 "base": self.base_name or "", "init": self.init.as_dict() if self.init is not None else ""}
        return self.checkpoints.save(self.step, state)

    def load_checkpoint(self, path: Path) -> None:
        state = self.checkpoints.load(path, STATE_KEYS, "a FlowDiffusion trainer state (expected a dict with the "
                                      "model, the optimiser and the RNG state)")
        _check_same_base(state.get("base") or None, self.base_name, path)  # first: the likeliest cause
        check_same_init(state.get("init") or None, self.init, path)
        if int(state["config"]["lora_rank"]) != self.config.lora_rank:
            raise ValueError(f"{path}: trained with lora_rank {state['config']['lora_rank']}; this run has "
                             f"{self.config.lora_rank}")
        load_trainable_state(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def run(self, resume: str | os.PathLike | None = "auto") -> FlowDiffusionTrainResult:
        """Train to ``config.steps`` (from the checkpoint ``resume`` names, if any; ``"auto"``:
        this run folder's latest) and save a final checkpoint (:func:`~motionnft.training.stepping.run_steps`)."""
        return run_steps(self, "FlowDiffusion", ("loss",), resume)

    def export(self, path: str | os.PathLike | None = None, kind: str = "full", base=None) -> Path:
        """Write the model as one FlowDiffusion file (default ``RUN/flowdiffusion.safetensors``) for
        ``motionnft drag --flowdiffusion`` and the FlowDiffusion Edit node: ``kind="full"`` (the tiny
        model, trained from scratch; a LoRA is merged), or for a run on an SD 1.5 ``base`` UNet
        ``"delta"`` / ``"lora"`` (:func:`.flowdiffusion_files.save_flowdiffusion`)."""
        from .flowdiffusion_files import FILE_NAME, codec_spec_of, save_flowdiffusion

        return save_flowdiffusion(path or self.out / FILE_NAME, self.model, codec_spec_of(self.codec),
                                  self.config.size, kind, base)


def _check_same_base(saved: str | None, given: str | None, path: Path) -> None:
    if saved and not given:
        raise ValueError(f"{path}: a run on the SD 1.5 base {saved}; resume it on that base (motionnft train-drag "
                         f"--base {saved} again)")
    if given and not saved:
        raise ValueError(f"{path}: a run without an SD 1.5 base (the tiny model); it cannot continue on {given}: "
                         "use another --out")
    if saved and Path(saved).name != Path(given).name:
        warnings.warn(f"{path}: the run started on the base {saved}, this one is {given}; a resumed run must use "
                      "the same SD 1.5 weights")


def load_trainable_state(model: FlowDiffusion, state: dict[str, torch.Tensor], where: Path | str = "state") -> None:
    """Load what :func:`trainable_state` saved; every saved tensor must find its place."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    lora = any("lora_" in name for name in state)
    missing = [name for name in missing if "lora_" in name] if lora else missing
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); was it trained with another size or LoRA rank?")


def load_flowdiffusion(checkpoint: str | os.PathLike) -> FlowDiffusion:
    """The tiny (full fine-tune) model of a checkpoint folder (or a run folder: its latest), in eval mode."""
    from diffusers import UNet2DConditionModel

    checkpoints = Checkpoints(checkpoint, keep=1)
    path = checkpoints.find(checkpoint)
    state = checkpoints.load(path, STATE_KEYS | {"unet_config"}, "a FlowDiffusion trainer state")
    if state.get("base"):
        raise ValueError(f"{path}: a run on the SD 1.5 base {state['base']}; use its flowdiffusion.safetensors with "
                         "that checkpoint (the FlowDiffusion Edit node), or load_sd15 + from_sd_unet + "
                         "load_trainable_state")
    if int(state["config"]["lora_rank"]):
        raise ValueError(f"{path}: a LoRA checkpoint; load its base model and apply it with load_trainable_state")
    model = FlowDiffusion(UNet2DConditionModel.from_config(state["unet_config"]),
                          prediction_type=state["config"].get("prediction_type", "epsilon"))
    load_trainable_state(model, state["model"], path)
    return model.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m motionnft.drag.train_flowdiffusion",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics.csv)")
    parser.add_argument("--data", help="dataset folder with images/<id>_flow.flo; default: synthetic figure scenes")
    parser.add_argument("--scenes", type=int, default=3000, help="synthetic scenes (without --data)")
    parser.add_argument("--style", default="plain", help="synthetic scene style: plain or textured")
    parser.add_argument("--no-composite", action="store_true", help="train on the raw targets")
    parser.add_argument("--resume", default="auto", help="'auto', 'none', a run folder or a checkpoint folder")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_setting_flags(parser, FlowDiffusionTrainConfig)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> FlowDiffusionTrainResult:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = settings_from_flags(FlowDiffusionTrainConfig, args, composite=not args.no_composite)
    data = (EditPairFolder(args.data, (config.size, config.size)) if args.data
            else figure_pairs(args.scenes, config.size, seed=config.seed, style=args.style))
    resume = None if args.resume == "none" else args.resume
    trainer = FlowDiffusionTrainer(config, data, args.out)
    result = trainer.run(resume)
    if not result.interrupted:
        print(f"{trainer.export()}: FlowDiffusion weights (full, {config.size} px, step {result.step})")
    return result


if __name__ == "__main__":
    main()
