"""The MotionNFT trainer: :class:`Trainer` builds a run from a
:class:`~motionnft.training.settings.TrainConfig` and runs it (:meth:`Trainer.run`);
:func:`train` does both.

The run loop: resume from the latest checkpoint, measure the held-out prompts, then one
optimiser step after another (:mod:`~motionnft.training.step`) with metrics, sample grids
and checkpoints every ``save_every`` steps. Ctrl-C or an error in a step rolls back the
step in progress and saves the last completed one (an error is raised again).

The methods :meth:`Trainer.rollouts`, :meth:`Trainer.rewards`, :meth:`Trainer.loss_phase`
and :meth:`Trainer.train_step` are the hooks a variant overrides (e.g. a control arm that
shuffles rewards).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import evaluation, figures, step
from .checkpoints import Checkpoints, write_run_config
from .data import PromptCache, PromptCursor, PromptEntry, open_training_data, prepare_prompt
from .distributed import is_fsdp, keep_whole_under_fsdp, make_accelerator
from .metrics import MetricsLog
from .policies import LoraPolicies
from .progress import progress_bar
from .rewards import JudgeFailure, configured_judge, judge_scores, report_judge_failures, rollout_rewards
from .rollouts import sample_rollouts
from .seeding import rng_state, set_rng_state
from .settings import TrainConfig, config_to_toml

LORA_FILE = "motionnft_lora.safetensors"
STATE_KEYS = {"names", "policy", "old", "ema", "optimizer", "cursor", "rng", "step"}


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    lora_path: Path | None
    interrupted: bool
    metrics: list[dict]
    heldout_before: Any = None
    """:class:`~motionnft.heldout.HeldoutScores` at the run's start (None without ``heldout_data``)."""
    heldout_after: Any = None
    """... and of the saved LoRA at its end (None when interrupted)."""


class Trainer:
    """Build with a :class:`TrainConfig`, call :meth:`run`. ``judge``: any object with
    ``rate_training_reward(input_image, edited_image, instruction) -> float``; ``model``:
    an already built :class:`~motionnft.models.EditModel` instead of ``config.model``."""

    def __init__(self, config: TrainConfig, judge=None, accelerator=None, show_progress: bool = True, model=None):
        self.config = config.validate()
        self.accelerator = accelerator or make_accelerator(config.mixed_precision)
        self.show_progress = show_progress and self.accelerator.is_main_process
        self.out = Path(config.output_dir)
        self.judge = judge if judge is not None else configured_judge(config)
        self.weights = config.reward_weights(self.judge is not None)
        self.nft = config.nft()
        world = self.accelerator.num_processes
        if config.prompts_per_epoch % world:
            raise ValueError(f"train config: prompts_per_epoch {config.prompts_per_epoch} must be a multiple of "
                             f"the number of processes ({world})")
        self._build(model)

    # -- setup ------------------------------------------------------------------------
    def _build(self, model=None) -> None:
        from ..flow import WeightsNotFoundError, create_estimator
        from ..models import build_from_config
        from ..models.configured import load_base_weights
        from ..reward import MotionRewardConfig

        config = self.config
        dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32
        if model is None:
            self.model = build_from_config(config, dtype)
        else:
            self.model = load_base_weights(model, config.base_weights)
        self.model.to(self.accelerator.device, dtype)
        targets = config.lora_targets or list(self.model.lora_target_modules)
        torch.manual_seed(config.seed)  # the LoRA's gaussian init
        self.policies = LoraPolicies(self.model.transformer, config.lora_rank, config.lora_alpha, targets,
                                     self.model.lora_exclusions())
        if config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.optimizer = torch.optim.AdamW(self.policies.policy_tensors(), lr=config.learning_rate,
                                           betas=(config.adam_beta1, config.adam_beta2),
                                           weight_decay=config.weight_decay)
        self.unwrapped = self.model.transformer
        self.fsdp = is_fsdp(self.accelerator)
        if self.fsdp:
            # FSDP shards the frozen base weights; the LoRA matrices stay whole on every rank.
            keep_whole_under_fsdp(self.accelerator, [m for n, m in self.unwrapped.named_modules()
                                                     if n.split(".")[-1] in ("lora_A", "lora_B")])
        self.model.transformer, self.optimizer = self.accelerator.prepare(self.model.transformer, self.optimizer)
        self.data = open_training_data(config)
        self.cursor = PromptCursor([s.id for s in self.data], config.seed)
        self.committed_cursor = self.cursor.state()  # what a checkpoint saves until a step completes
        self.epoch_snapshot = None  # (policy weights, optimiser state) at the start of a multi-step epoch
        self.cache = PromptCache(config.prompt_cache_size)
        try:
            self.estimator = create_estimator(
                config.flow_backend, config.flow_preset or None, weights=config.flow_weights or None,
                precision=config.flow_precision or None,
                # A learned flow network runs where the policy does; the OpenCV backends ignore it.
                device=self.accelerator.device,
            )
        except WeightsNotFoundError as error:
            raise error.with_hint("the setting flow_weights: --set flow_weights=PATH, or flow_weights in a "
                                  "--config file") from None
        self.reward_config = MotionRewardConfig(variant=config.reward_variant)
        self.size = (config.resolution, config.resolution)
        self.sigmas = self.model.sigmas(config.sampling_steps, self.size)
        self.checkpoints = Checkpoints(self.out, config.keep_checkpoints)
        self.step = 0
        self.heldout_prompts = None  # (sample id, entry) of the held-out prompts, once built
        self.heldout_results: list = []  # HeldoutScores measured so far (before, after)
        self.last_samples: list = []  # the last step's first prompt: (index, entry, x0, images)

    @property
    def ema(self) -> list[torch.Tensor]:
        """The EMA of the LoRA (float32): what gets saved."""
        return self.policies.ema

    # -- prompts, rollouts, rewards (hooks) ---------------------------------------------
    def prompt(self, index: int) -> PromptEntry:
        """The entry of training sample ``index`` (cached)."""
        return self.cache.get_or_make(index, lambda: self.prepare(self.data[index]))

    def prepare(self, sample) -> PromptEntry:
        """A sample's images at the training size, its condition and its ground-truth flow."""
        return prepare_prompt(sample, self.model, self.estimator, self.size)

    def rollouts(self, entry: PromptEntry, generator: torch.Generator, policy: str = "old") -> torch.Tensor:
        """K samples of one prompt from ``policy`` (the old one while training): packed latents
        ``(K, N, C)`` float32 (CPU)."""
        config = self.config
        self.policies.use(policy)
        noise = self.model.noise(config.rollouts_per_prompt if policy == "old" else config.heldout_rollouts,
                                 self.size, generator)
        return sample_rollouts(self.model, self.accelerator, entry.condition, noise, self.sigmas, config.sampler,
                               config.rollout_batch_size)

    def rewards(self, entry: PromptEntry, images: torch.Tensor, prompt: str) -> dict:
        """The rewards of one prompt's rollouts ``(K, 3, H, W)`` (:func:`~.rewards.rollout_rewards`)."""
        scores = self.judge_scores if self.judge is not None else None
        return rollout_rewards(entry, images, prompt, self.estimator, self.reward_config, self.weights, scores)

    def judge_scores(self, input_image: torch.Tensor, images: torch.Tensor, prompt: str) -> tuple[list, dict]:
        """The judge's reward of each rollout (:func:`~.rewards.judge_scores`)."""
        return judge_scores(self.judge, input_image, images, prompt, self.config)

    def loss_phase(self, items: list[tuple], global_count: int, batches: int, bar=None,
                   global_batches: int | None = None) -> dict:
        """Forward/backward over the items in micro-batches (:func:`~.step.loss_phase`)."""
        return step.loss_phase(self, items, global_count, batches, bar, global_batches)

    def train_step(self) -> dict:
        """One optimiser step (:func:`~.step.train_step`); returns its metrics row."""
        return step.train_step(self)

    def judge_failed(self, step_index: int, local: list[int], reward_rows: list[dict]) -> None:
        """Report this process's prompts the judge could not rate; raise :class:`JudgeFailure`
        under ``judge_failure = "stop"``."""
        failures = [(self.data[index].id, row["judge_failure"]) for index, row in zip(local, reward_rows)
                    if row["judge_failure"] is not None]
        report_judge_failures(step_index, failures, self.config.judge_failure)

    def progress(self, total: int, description: str):
        """A transient progress bar, shown on the main process when progress is shown."""
        return progress_bar(total, description, self.show_progress)

    # -- held-out evaluation --------------------------------------------------------------
    def heldout_entries(self) -> list[tuple[str, PromptEntry]]:
        return evaluation.heldout_entries(self)

    def evaluate_heldout(self, keep_images: int = 4):
        return evaluation.evaluate_heldout(self, keep_images)

    # -- checkpoints ----------------------------------------------------------------------
    def _metadata(self) -> dict:
        config = self.config
        return {
            "motionnft.trainer": "MotionNFT (DiffusionNFT + motion reward)",
            "motionnft.base_model": self.model.name,
            "motionnft.model_kind": config.model,
            "motionnft.step": str(self.step),
            "motionnft.rank": str(config.lora_rank),
            "motionnft.alpha": str(config.lora_alpha),
            "motionnft.target_modules": ",".join(self.policies.targets),
            "motionnft.weights": "ema",
            "motionnft.reward": f"motion {self.weights[0]:g} ({config.flow_backend}, {config.reward_variant})"
                                + (f" + judge {self.weights[1]:g}" if self.weights[1] else ""),
            "motionnft.config": json.dumps(dataclasses.asdict(config)),
        }

    def lora(self, which: str = "ema"):
        """The LoRA as :class:`~motionnft.lora.LoraWeights` (``"ema"``, ``"policy"`` or ``"old"``)."""
        metadata = dict(self._metadata(), **{"motionnft.weights": which})
        return self.policies.lora_weights(which, self.model.base, metadata)

    def save_checkpoint(self, interrupted: bool = False, wait: bool = True) -> Path | None:
        """Write ``checkpoints/step-N/`` atomically (the EMA LoRA and the trainer state) and
        prune old ones. The main process writes (the LoRA, its EMA and optimiser state are
        whole on every process); ``wait=False`` skips the barrier, for a failure other
        processes may not share."""
        from ..lora import save_lora

        if wait:
            self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        state = {"step": self.step, **self.policies.state(), "optimizer": self.optimizer.state_dict(),
                 "cursor": self.committed_cursor, "rng": rng_state(),
                 "config": dataclasses.asdict(self.config), "interrupted": interrupted}
        return self.checkpoints.save(self.step, state, {LORA_FILE: lambda path: save_lora(path, self.lora("ema"))})

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state saved by :meth:`save_checkpoint` (read with ``weights_only``: a
        file that would run code when unpickled is refused, never executed)."""
        state = self.checkpoints.load(path, STATE_KEYS, "a MotionNFT trainer state (expected a dict with the LoRA, "
                                      "optimiser, data cursor and RNG states)")
        self.policies.load_state(state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.cursor.load(state["cursor"])
        self.committed_cursor = self.cursor.state()
        set_rng_state(state["rng"])
        self.step = state["step"]

    def find_checkpoint(self, resume: str | os.PathLike | None) -> Path | None:
        return self.checkpoints.find(resume)

    # -- the loop -------------------------------------------------------------------------
    def run(self, resume: str | os.PathLike | None = "auto") -> TrainResult:
        """Train to ``max_steps`` (from the checkpoint ``resume`` names, if any)."""
        config, main = self.config, self.accelerator.is_main_process
        checkpoint = self.find_checkpoint(resume)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        if main:
            write_run_config(self.out, config_to_toml(config))
        log = MetricsLog(self.out, self.step, main)
        if main:
            self._announce(checkpoint)
        heldout_before = evaluation.heldout_before(self, main)
        self.heldout_results = [heldout_before] if heldout_before is not None else []
        interrupted, failure = self._steps(log)
        if failure is not None:
            self._save_after_failure(failure, log)
            raise failure
        checkpoint_dir = self.save_checkpoint(interrupted=interrupted)
        heldout_after = None
        if heldout_before is not None and not interrupted:
            heldout_after = evaluation.heldout_after(self, heldout_before, main)
        lora_path = self._finish(log, checkpoint_dir, interrupted, heldout_before, heldout_after) if main else None
        log.close()
        return TrainResult(self.out, self.step, lora_path, interrupted, log.rows, heldout_before, heldout_after)

    def _steps(self, log: MetricsLog) -> tuple[bool, Exception | None]:
        """Steps until ``max_steps``; returns (interrupted by Ctrl-C, the error a step raised)."""
        config, main = self.config, self.accelerator.is_main_process
        interrupted, failure = False, None
        bar = progress_bar(config.max_steps, "MotionNFT", self.show_progress, leave=True, unit="step",
                           initial=self.step)
        try:
            while self.step < config.max_steps:
                row = self.train_step()
                log.add(row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", mas=f"{row['mas_mean']:.1f}",
                                loss=f"{row['loss']:.4f}")
                if main and config.sample_grid_every and self.step % config.sample_grid_every == 0:
                    figures.sample_grid(self.last_samples,
                                        self.out / "samples" / f"step-{self.step:06d}.png")
                if config.save_every and self.step % config.save_every == 0:
                    self.save_checkpoint()
                    if main:
                        self._write_curve(log)
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            self._roll_back_partial_epoch()
            print(f"\ninterrupted: saving the state after step {self.step} ...", file=sys.stderr)
        except Exception as error:  # a judge that gave up, a full disk, a bug: keep the last completed step
            failure = error
            bar.close()
            self._roll_back_partial_epoch()
            print(f"\n{type(error).__name__} in step {self.step + 1}: saving the state after step {self.step} ...",
                  file=sys.stderr)
        finally:
            bar.close()
        return interrupted, failure

    def _announce(self, checkpoint: Path | None) -> None:
        config = self.config
        where = f"resumed from {checkpoint} at step {self.step}" if checkpoint else "from scratch"
        print(f"MotionNFT: {self.model.describe()}; LoRA r={config.lora_rank} alpha={config.lora_alpha:g} on "
              f"{len(self.policies.policy) // 2} modules; {len(self.data)} prompts ({self.data.layout}); "
              f"reward motion {self.weights[0]:g}" + (f" + judge {self.weights[1]:g}" if self.weights[1] else "")
              + f"; {self.accelerator.num_processes} process(es) on {self.accelerator.device}; {where}")

    def _finish(self, log: MetricsLog, checkpoint_dir: Path | None, interrupted: bool, before, after) -> Path:
        """The main process's end of a run: the final LoRA next to the run folder's metrics, the
        curve, the held-out table; returns the LoRA's path."""
        lora_path = self.out / LORA_FILE
        shutil.copyfile(checkpoint_dir / LORA_FILE, lora_path) if checkpoint_dir else None
        self._write_curve(log)
        if after is not None:
            from ..heldout import format_comparison

            print(format_comparison(before, after))
        print(f"{'stopped' if interrupted else 'done'} at step {self.step}: LoRA {lora_path}; checkpoint "
              f"{checkpoint_dir}; metrics {log.path}; curve {self.out / 'reward_curve.png'}")
        return lora_path

    def _write_curve(self, log: MetricsLog) -> None:
        figures.reward_curve(log, self.heldout_results, self.model.name,
                             self.out / "reward_curve.png")

    def _save_after_failure(self, failure: Exception, log: MetricsLog) -> None:
        try:
            # every process raises a JudgeFailure at the same point; another error may be one process's
            checkpoint = self.save_checkpoint(interrupted=True, wait=isinstance(failure, JudgeFailure))
        except Exception as error:  # noqa: BLE001 - the original failure is what gets raised
            print(f"could not save a checkpoint after the failure: {error}", file=sys.stderr)
            checkpoint = None
        finally:
            log.close()
        if checkpoint is not None:
            print(f"stopped after step {self.step}: checkpoint {checkpoint}; run the same command again to resume "
                  "from it", file=sys.stderr)

    def _roll_back_partial_epoch(self) -> None:
        """Undo the optimiser steps already taken in an epoch of several (Ctrl-C or an error)."""
        if self.epoch_snapshot is None:
            return
        weights, optimizer_state = self.epoch_snapshot
        self.policies.restore(weights)
        self.optimizer.load_state_dict(optimizer_state)
        self.epoch_snapshot = None


def train(config: TrainConfig, judge=None, resume: str | os.PathLike | None = "auto",
          show_progress: bool = True) -> TrainResult:
    """Train with ``config``; ``resume="auto"`` continues from ``output_dir``'s latest checkpoint."""
    return Trainer(config, judge=judge, show_progress=show_progress).run(resume=resume)
