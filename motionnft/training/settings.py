"""Every MotionNFT trainer setting, its default and its meaning: :class:`TrainConfig`.

This dataclass is the only place a setting is declared. ``motionnft/configs/train.toml``
holds the presets (``[preset.NAME]`` tables of the settings a preset changes), checked
against it. The objective's constants are declared once, with the maths, in
:class:`~motionnft.nft.NFTConfig`: their settings here take its defaults, and
:meth:`TrainConfig.nft` hands a run's values back to it.

``motionnft train --preset NAME`` starts from these defaults (the released MotionNFT
training setup: DiffusionNFT with the motion reward), applies ``[preset.NAME]``, then an
optional ``--config FILE`` (a flat table of the same keys, or one with its own
``[preset.*]`` tables), then ``--set KEY=VALUE`` overrides (TOML values: numbers,
true/false, "strings", [lists]). The resolved configuration is written to
``OUTPUT_DIR/config.toml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..nft import NFTConfig
from . import presets

CONFIG_FILE = Path(__file__).parent.parent / "configs" / "train.toml"
PRESETS = ("tiny", "kontext", "qwen")
LOSS_AVERAGES = ("micro_batch", "all")
JUDGE_FAILURES = ("stop", "skip")


@dataclass
class TrainConfig:
    """Every trainer setting, with the value of MotionNFT's released training setup.

    Each setting is documented by the ``#:`` comment on its line or above it.
    """

    # --- model -----------------------------------------------------------------------
    #: flux_kontext | qwen_image_edit | qwen_image_edit_plus | tiny_flux_kontext | tiny_qwen_image_edit |
    #: tiny_qwen_image_edit_plus. qwen_image_edit: the Qwen-Image-Edit release model_path holds (its
    #: model_index.json); qwen_image_edit_plus: Qwen-Image-Edit-2509 only (a folder of the first release is refused)
    model: str = "flux_kontext"
    model_path: str = ""                #: local diffusers folder of the base model (nothing is downloaded)
    transformer_file: str = ""          #: optional single-file transformer checkpoint replacing model_path/transformer
    base_weights: str = ""              #: optional safetensors state dict loaded into the transformer before the LoRA
    tiny_size: str = "demo"             #: tiny_* models: "test" (smallest), "demo" or "base" (the tiny preset's)
    #: tiny_* models: "patch" (exact 4×4 pixel patches), "lowres" (2×2 patches of the half-resolution image,
    #: the tiny preset's) or "vae" (tiny random VAE)
    tiny_codec: str = "patch"
    #: embedded guidance of the rollouts; -1 = the model's own (Kontext 2.5, Qwen none)
    guidance: float = -1.0
    max_sequence_length: int = 0        #: text tokens (T5 for Kontext); 0 = the model's default

    # --- data ------------------------------------------------------------------------
    #: a dataset folder (metadata.jsonl), a MotionEdit parquet/arrow folder, or "synthetic"
    data: str = "synthetic"
    synthetic_samples: int = 64         #: size of the built-in synthetic motion dataset
    resolution: int = 512               #: training size: images are centre-cropped to square, resized to it (Lanczos)
    prompt_cache_size: int = 256        #: prompts whose text embeddings / reference latents / target flow stay cached

    # --- rollouts (old policy, CFG-free) ------------------------------------------------
    prompts_per_epoch: int = 24         #: prompts per optimiser step, over all processes
    rollouts_per_prompt: int = 8        #: K images per prompt
    sampler: str = "dpm2"               #: dpm2 (2nd-order multistep on x0, first/last step 1st order) | euler
    sampling_steps: int = 6
    rollout_batch_size: int = 8         #: rollouts per transformer call

    # --- reward ----------------------------------------------------------------------
    flow_backend: str = "dis"           #: any registered flow backend (motionnft.flow.available_backends())
    flow_preset: str = ""               #: "" = the backend's default preset
    #: learned backends (raft_large, raft_small, unimatch): a weight file's path or name in the weight folders;
    #: "" = the backend's preferred file found there
    flow_weights: str = ""
    flow_precision: str = ""            #: learned backends: "fp32" (""), "bf16" or "fp16"
    reward_variant: str = "code"        #: code (released MotionNFT code) | paper
    #: OpenAI-compatible endpoint of the MLLM judge; "" = no judge (motion reward only)
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key_env: str = "MOTIONNFT_JUDGE_API_KEY"  #: environment variable holding the judge's API key, if any
    judge_timeout: float = 120.0        #: seconds per judge request
    #: a failed rating (unreachable, timeout, HTTP error, malformed answer) is asked again up to N times
    judge_retries: int = 3
    #: seconds before the first retry of a rating, doubled for each further one (at most 60)
    judge_backoff: float = 1.0
    #: a rollout still unrated after the retries: "stop" = save the last completed step as a checkpoint and stop
    #: with the reason (run again to resume) | "skip" = leave that prompt's group out of this step (its reason goes
    #: to the console, the count to metrics.csv)
    judge_failure: str = "stop"
    judge_concurrency: int = 8          #: judge requests in flight at once (a prompt's rollouts are rated together)
    motion_weight: float = -1.0         #: -1 = automatic: 0.5 with a judge, 1.0 without
    judge_weight: float = -1.0          #: -1 = automatic: 0.5 with a judge, 0 without

    # --- DiffusionNFT objective (defaults: motionnft.nft.NFTConfig's, the release's) -------
    beta: float = NFTConfig.beta                #: how far the implicit policies step from the old policy
    loss_scale: float = NFTConfig.loss_scale    #: multiplier of the policy loss
    #: weight of mean |v_theta - v_ref|^2 (v_ref: the base model, adapters off)
    kl_weight: float = NFTConfig.kl_weight
    #: A is clipped to +-advantage_clip; r = clip(A / (2 * advantage_clip) + 0.5, 0, 1)
    advantage_clip: float = NFTConfig.advantage_clip
    #: a prompt trains only if its rollouts' reward std exceeds this ...
    group_std_min: float = NFTConfig.group_std_min
    #: ... and their mean is below this (std below and mean above: retired, solved)
    group_mean_max: float = NFTConfig.group_mean_max
    #: of the sampler's N timesteps, int(N * fraction) (>= 1) train each sample
    timestep_fraction: float = NFTConfig.timestep_fraction
    #: old <- eta*old + (1-eta)*theta, eta = min(old_rate*step, old_max)
    old_rate: float = NFTConfig.old_rate
    old_max: float = NFTConfig.old_max
    #: EMA decay min((1+s)/(10+s), ema_max_decay); the EMA is what gets saved
    ema_max_decay: float = NFTConfig.ema_max_decay

    # --- optimiser and LoRA ----------------------------------------------------------------
    learning_rate: float = 0.0003
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0001
    grad_clip: float = 1.0
    lora_rank: int = 32
    lora_alpha: float = 64.0
    #: module-name suffixes; [] = the model's default (attention q/k/v/out, text-stream projections)
    lora_targets: list = field(default_factory=list)
    train_batch_size: int = 4           #: sample-timesteps per forward/backward
    optimizer_steps_per_epoch: int = 1  #: the epoch's samples are split into this many optimiser steps
    #: micro_batch (the release): the mean over each micro-batch's sample-timesteps, every micro-batch of an
    #: optimiser step (over all processes) weighted equally | all: every sample-timestep weighted equally
    #: (independent of batch size and process count)
    loss_average: str = "micro_batch"

    # --- run -------------------------------------------------------------------------------
    max_steps: int = 300                #: optimiser steps (published: Kontext 300, Qwen 210)
    save_every: int = 10                #: checkpoint every N optimiser steps (and at the end, and on Ctrl-C)
    keep_checkpoints: int = 3           #: older checkpoints are deleted
    seed: int = 0
    mixed_precision: str = "bf16"       #: bf16 | no (float32)
    gradient_checkpointing: bool = True
    output_dir: str = "motionnft-run"
    sample_grid_every: int = 10         #: write samples/step-N.png (input, target, rollouts) every N steps; 0 = never

    # --- held-out evaluation (before the first step and after the last) ---------------------
    #: "" = none; "synthetic" = a fresh draw of the built-in task (scenes never trained on); or a dataset folder
    #: (metadata.jsonl) / MotionEdit parquet-arrow folder
    heldout_data: str = ""
    heldout_samples: int = 16           #: held-out prompts (the first N samples of heldout_data)
    heldout_rollouts: int = 4           #: rollouts per held-out prompt, the same noise before and after

    def validate(self) -> "TrainConfig":
        from ..flow import PRECISIONS
        from ..models import MODEL_KINDS
        from ..sampling import SAMPLERS

        def need(condition: bool, message: str):
            if not condition:
                raise ValueError(f"train config: {message}")

        need(self.model in MODEL_KINDS, f"model {self.model!r}: expected one of {', '.join(MODEL_KINDS)}")
        need(self.sampler in SAMPLERS, f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        need(self.mixed_precision in ("bf16", "no"), f"mixed_precision {self.mixed_precision!r}: expected bf16 or no")
        for name in ("prompts_per_epoch", "rollouts_per_prompt", "sampling_steps", "rollout_batch_size",
                     "train_batch_size", "max_steps", "lora_rank", "optimizer_steps_per_epoch"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.resolution >= 32 and self.resolution % 16 == 0,
             f"resolution must be a multiple of 16 and at least 32 (pixels; the models' latent patches), "
             f"got {self.resolution}")
        need(self.rollouts_per_prompt >= 2, "rollouts_per_prompt must be >= 2 (advantages compare rollouts)")
        need(self.heldout_samples >= 1 and self.heldout_rollouts >= 1,
             f"heldout_samples and heldout_rollouts must be >= 1, got {self.heldout_samples}, {self.heldout_rollouts}")
        need(self.save_every >= 0 and self.keep_checkpoints >= 1, "save_every >= 0 and keep_checkpoints >= 1")
        need(self.reward_variant in ("code", "paper"),
             f"reward_variant {self.reward_variant!r}: expected code or paper")
        need(self.loss_average in LOSS_AVERAGES,
             f"loss_average {self.loss_average!r}: expected one of {', '.join(LOSS_AVERAGES)}")
        need(self.judge_failure in JUDGE_FAILURES,
             f"judge_failure {self.judge_failure!r}: expected one of {', '.join(JUDGE_FAILURES)}")
        need(self.judge_retries >= 0, f"judge_retries must be >= 0, got {self.judge_retries}")
        need(self.judge_concurrency >= 1, f"judge_concurrency must be >= 1, got {self.judge_concurrency}")
        need(self.judge_timeout > 0, f"judge_timeout must be positive, got {self.judge_timeout}")
        need(self.judge_backoff >= 0, f"judge_backoff must be >= 0, got {self.judge_backoff}")
        need(self.flow_precision in ("", *PRECISIONS),
             f"flow_precision {self.flow_precision!r}: expected one of {', '.join(PRECISIONS)} (or \"\" for fp32)")
        return self

    def nft(self):
        """The DiffusionNFT constants of these settings (:class:`~motionnft.nft.NFTConfig`)."""
        return NFTConfig.from_settings(self)

    def reward_weights(self, has_judge: bool) -> tuple[float, float]:
        """(motion, judge) weights of the raw reward."""
        motion = self.motion_weight if self.motion_weight >= 0 else (0.5 if has_judge else 1.0)
        judge = self.judge_weight if self.judge_weight >= 0 else (0.5 if has_judge else 0.0)
        if not has_judge and judge > 0:
            raise ValueError("train config: judge_weight > 0 but no judge is configured (judge_url)")
        return motion, judge


def parse_override(text: str):
    """``"KEY=VALUE"`` -> (key, value) for a :class:`TrainConfig` setting (:func:`presets.parse_override`)."""
    return presets.parse_override(TrainConfig, text)


def load_config(preset: str | None = "tiny", config_file: str | os.PathLike | None = None,
                overrides: list[str] | dict | None = None) -> TrainConfig:
    """The resolved configuration: defaults, the preset, the user's file, then overrides."""
    return presets.load_settings(TrainConfig, CONFIG_FILE, preset, config_file, overrides).validate()


def config_to_toml(config: TrainConfig) -> str:
    return presets.settings_to_toml(config, "resolved MotionNFT trainer configuration")
