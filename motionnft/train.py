"""The headless MotionNFT trainer: DiffusionNFT with the motion reward on a LoRA.

One optimiser step ("epoch" in DiffusionNFT's words):

1. **Rollouts.** ``prompts_per_epoch`` prompts (split over the processes) each get
   ``rollouts_per_prompt`` CFG-free samples from the *old* policy with the deterministic
   sampler (``dpm2`` or ``euler``). Text embeddings, reference latents and the target's
   flow are computed once per prompt and cached.
2. **Rewards.** The motion reward (:func:`motionnft.reward.motion_reward`, the same
   function as the Motion Reward node) of each rollout against the prompt's ground
   truth on the chosen flow backend, plus the judge's reward when a judge is configured
   (weights 0.5/0.5 by default; motion only without a judge).
3. **Optimality rewards** from the per-prompt mean and the global std, the group filters.
4. **Loss.** For each kept rollout, the sampler's timesteps (shuffled, a fraction kept):
   fresh noise, ``x_t``, the policy / old / reference velocities and the NFT loss
   (:func:`motionnft.nft.nft_loss`); AdamW on the LoRA, gradient clipping.
5. **Updates.** EMA of the LoRA (what is saved), old-policy soft update, data cursor.

Every random draw comes from a generator seeded by (seed, step, prompt, purpose), so a
run resumed from a checkpoint repeats the uninterrupted run exactly. Checkpoints are
written atomically every ``save_every`` steps, at the end, on Ctrl-C and on any error in
a step (the state of the last completed step; the error is raised again). A judge rating
that still fails after ``judge_retries`` retries skips its prompt for the step or stops the
run (``judge_failure``).

Multi-GPU: launch with ``accelerate launch`` (DDP or FSDP; configs in
``motionnft/configs/accelerate/``).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .files import atomic_write

CONFIG_FILE = Path(__file__).with_name("configs") / "train.toml"
PRESETS = ("tiny", "kontext", "qwen")
LORA_FILE = "motionnft_lora.safetensors"
STATE_FILE = "trainer_state.pt"
HELDOUT_FILE = "heldout.json"
LOSS_AVERAGES = ("micro_batch", "all")
JUDGE_FAILURES = ("stop", "skip")


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Every trainer setting; documented in ``motionnft/configs/train.toml``."""

    model: str = "flux_kontext"
    model_path: str = ""
    transformer_file: str = ""
    base_weights: str = ""
    tiny_size: str = "demo"
    tiny_codec: str = "patch"
    guidance: float = -1.0
    max_sequence_length: int = 0
    data: str = "synthetic"
    synthetic_samples: int = 64
    resolution: int = 512
    prompt_cache_size: int = 256
    prompts_per_epoch: int = 24
    rollouts_per_prompt: int = 8
    sampler: str = "dpm2"
    sampling_steps: int = 6
    rollout_batch_size: int = 8
    flow_backend: str = "dis"
    flow_preset: str = ""
    flow_weights: str = ""
    flow_precision: str = ""
    reward_variant: str = "code"
    judge_url: str = ""
    judge_model: str = ""
    judge_api_key_env: str = "MOTIONNFT_JUDGE_API_KEY"
    judge_timeout: float = 120.0
    judge_retries: int = 3
    judge_backoff: float = 1.0
    judge_failure: str = "stop"
    judge_concurrency: int = 8
    motion_weight: float = -1.0
    judge_weight: float = -1.0
    beta: float = 1.0
    loss_scale: float = 5.0
    kl_weight: float = 0.0001
    advantage_clip: float = 5.0
    group_std_min: float = 0.05
    group_mean_max: float = 0.9
    timestep_fraction: float = 0.99
    old_rate: float = 0.001
    old_max: float = 0.5
    ema_max_decay: float = 0.9
    learning_rate: float = 0.0003
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0001
    grad_clip: float = 1.0
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_targets: list = field(default_factory=list)
    train_batch_size: int = 4
    optimizer_steps_per_epoch: int = 1
    loss_average: str = "micro_batch"
    max_steps: int = 300
    save_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    output_dir: str = "motionnft-run"
    sample_grid_every: int = 10
    heldout_data: str = ""
    heldout_samples: int = 16
    heldout_rollouts: int = 4

    def validate(self) -> "TrainConfig":
        from .flow import PRECISIONS
        from .models import MODEL_KINDS
        from .sampling import SAMPLERS

        def need(condition: bool, message: str):
            if not condition:
                raise ValueError(f"train config: {message}")

        need(self.model in MODEL_KINDS, f"model {self.model!r}: expected one of {', '.join(MODEL_KINDS)}")
        need(self.sampler in SAMPLERS, f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        need(self.mixed_precision in ("bf16", "no"), f"mixed_precision {self.mixed_precision!r}: expected bf16 or no")
        for name in ("prompts_per_epoch", "rollouts_per_prompt", "sampling_steps", "rollout_batch_size",
                     "train_batch_size", "max_steps", "lora_rank", "optimizer_steps_per_epoch", "resolution"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.rollouts_per_prompt >= 2, "rollouts_per_prompt must be >= 2 (advantages compare rollouts)")
        need(self.heldout_samples >= 1 and self.heldout_rollouts >= 1,
             f"heldout_samples and heldout_rollouts must be >= 1, got {self.heldout_samples}, {self.heldout_rollouts}")
        need(self.save_every >= 0 and self.keep_checkpoints >= 1, "save_every >= 0 and keep_checkpoints >= 1")
        need(self.reward_variant in ("code", "paper"), f"reward_variant {self.reward_variant!r}: expected code or paper")
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
        from .nft import NFTConfig

        return NFTConfig(beta=self.beta, loss_scale=self.loss_scale, kl_weight=self.kl_weight,
                         advantage_clip=self.advantage_clip, group_std_min=self.group_std_min,
                         group_mean_max=self.group_mean_max, timestep_fraction=self.timestep_fraction,
                         old_rate=self.old_rate, old_max=self.old_max, ema_max_decay=self.ema_max_decay)

    def reward_weights(self, has_judge: bool) -> tuple[float, float]:
        """(motion, judge) weights of the raw reward."""
        motion = self.motion_weight if self.motion_weight >= 0 else (0.5 if has_judge else 1.0)
        judge = self.judge_weight if self.judge_weight >= 0 else (0.5 if has_judge else 0.0)
        if not has_judge and judge > 0:
            raise ValueError("train config: judge_weight > 0 but no judge is configured (judge_url)")
        return motion, judge


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


_EXPECTED = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
             list: 'a list (a TOML array, e.g. ["to_q", "to_k"])', str: "a string"}


def _setting_type(value) -> type:
    """The type a setting takes, from its default value (bool before int: True is an int)."""
    return next((kind for kind in (bool, int, float, list) if isinstance(value, kind)), str)


def _fits(value, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _apply(config: TrainConfig, values: dict, where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"{where}: unknown setting {key!r} (see motionnft/configs/train.toml)")
        kind = _setting_type(getattr(config, key))
        if not _fits(value, kind):
            raise ValueError(f"{where}: {key} = {value!r}: expected {_EXPECTED[kind]}")
        setattr(config, key, float(value) if kind is float else value)


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (key, value), VALUE read as the type of the setting KEY.

    VALUE is TOML: numbers, ``true``/``false``, ``"strings"``, ``[lists]``. A string
    setting also takes a bare word (``model=tiny_flux_kontext``,
    ``judge_url=http://127.0.0.1:8000/v1``); an integer is a valid number.

    Raises:
        ValueError naming the setting, the value and the type expected: an unknown setting,
        or a value that is not valid TOML of the setting's type (e.g. ``max_steps=1O``,
        ``beta=.5``, ``lora_targets=[to_q``, ``model_path="/unterminated``).
    """
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE")
    key, raw = (part.strip() for part in text.split("=", 1))
    defaults = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if key not in defaults:
        raise ValueError(f"--set {key}={raw}: unknown setting {key!r} (see motionnft/configs/train.toml)")
    kind = _setting_type(getattr(TrainConfig(), key))
    try:
        value, valid = _toml().loads(f"v = {raw}")["v"], True
    except Exception:
        value, valid = None, False
    if kind is str:
        if valid and isinstance(value, str):
            return key, value
        if raw and raw[0] not in "\"'[{" and "\n" not in raw:  # a bare word
            return key, raw
        raise ValueError(f"--set {key}={raw}: {key} expects a string: \"...\" (TOML) or a bare word")
    if valid and _fits(value, kind):
        return key, float(value) if kind is float else value
    why = f"{raw!r} is not valid TOML" if not valid else f"got {type(value).__name__} {value!r}"
    raise ValueError(f"--set {key}={raw}: {key} expects {_EXPECTED[kind]}; {why}")


def load_config(preset: str | None = "tiny", config_file: str | os.PathLike | None = None,
                overrides: list[str] | dict | None = None) -> TrainConfig:
    """The resolved configuration: defaults, the preset, the user's file, then overrides."""
    tomllib = _toml()
    shipped = tomllib.loads(CONFIG_FILE.read_text())
    config = TrainConfig()
    _apply(config, shipped["defaults"], str(CONFIG_FILE))
    presets = dict(shipped.get("preset", {}))
    user = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        user = tomllib.loads(path.read_text())
        presets.update(user.pop("preset", {}))
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}: expected one of {', '.join(sorted(presets))}")
        _apply(config, presets[preset], f"preset {preset}")
    _apply(config, user.get("defaults", {}), str(config_file))
    _apply(config, {k: v for k, v in user.items() if k != "defaults"}, str(config_file))
    if isinstance(overrides, dict):
        _apply(config, overrides, "overrides")
    else:
        _apply(config, dict(parse_override(o) for o in overrides or []), "--set")
    return config.validate()


def config_to_toml(config: TrainConfig) -> str:
    lines = ["# resolved MotionNFT trainer configuration"]
    for f in dataclasses.fields(config):
        lines.append(f"{f.name} = {json.dumps(getattr(config, f.name))}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# determinism helpers
# ----------------------------------------------------------------------------------------
def derived_generator(seed: int, *keys) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``keys`` (stable across runs and processes)."""
    digest = hashlib.sha256(repr((seed,) + keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def rng_state() -> dict:
    """The global RNG states as tensors and plain containers (loadable with ``weights_only``):
    numpy's ``("MT19937", keys, pos, has_gauss, cached_gaussian)`` with its key array as a tensor."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _DeferInterrupt:
    """Holds Ctrl-C back while state is being committed, then raises it."""

    def __enter__(self):
        self.pending = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._hold)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _hold(self, *_):
        self.pending = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.pending and exc[0] is None:
            raise KeyboardInterrupt
        return False


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------
class PromptCursor:
    """Which prompts each step samples: a seeded permutation per pass, retired ids skipped."""

    def __init__(self, ids: list[str], seed: int):
        self.ids = ids
        self.seed = seed
        self.pass_index = 0
        self.position = 0
        self.retired: set[str] = set()

    def _order(self) -> list[int]:
        generator = derived_generator(self.seed, "data", self.pass_index)
        return torch.randperm(len(self.ids), generator=generator).tolist()

    def take(self, count: int) -> list[int]:
        """The next ``count`` sample indices (passes wrap; fewer live prompts than
        ``count`` repeat within a step)."""
        live = [i for i, sid in enumerate(self.ids) if sid not in self.retired]
        if not live:
            raise RuntimeError("every prompt of the dataset is retired (solved): nothing left to train on")
        chosen = []
        order = self._order()
        while len(chosen) < count:
            if self.position >= len(order):
                self.pass_index += 1
                self.position = 0
                order = self._order()
            index = order[self.position]
            self.position += 1
            if self.ids[index] not in self.retired:
                chosen.append(index)
        return chosen

    def state(self) -> dict:
        return {"pass_index": self.pass_index, "position": self.position, "retired": sorted(self.retired)}

    def load(self, state: dict) -> None:
        self.pass_index, self.position = state["pass_index"], state["position"]
        self.retired = set(state["retired"])


HELDOUT_SEED_OFFSET = 1_000_003
"""The synthetic held-out draw uses ``seed + HELDOUT_SEED_OFFSET``: other scenes than training's."""


def _usable(dataset, where: str):
    usable = [s for s in dataset if s.prompt.strip()]
    if not usable:
        raise ValueError(f"dataset {where}: no sample has an instruction (prompt)")
    dataset.samples = usable
    return dataset


def open_training_data(config: TrainConfig):
    from .data import open_dataset
    from .synthetic import motion_edit_dataset

    if config.data == "synthetic":
        return motion_edit_dataset(config.synthetic_samples, size=config.resolution, seed=config.seed)
    return _usable(open_dataset(config.data), config.data)


def open_heldout_data(config: TrainConfig):
    """The first ``heldout_samples`` prompts of ``heldout_data`` (None when it is empty)."""
    from .data import open_dataset
    from .synthetic import motion_edit_dataset

    if not config.heldout_data:
        return None
    if config.heldout_data == "synthetic":
        return motion_edit_dataset(config.heldout_samples, size=config.resolution,
                                   seed=config.seed + HELDOUT_SEED_OFFSET)
    dataset = _usable(open_dataset(config.heldout_data), config.heldout_data)
    dataset.samples = dataset.samples[:config.heldout_samples]
    return dataset


@dataclass
class PromptEntry:
    condition: Any
    input_image: torch.Tensor
    target_image: torch.Tensor
    flow_target: torch.Tensor


# ----------------------------------------------------------------------------------------
# LoRA policies on one transformer
# ----------------------------------------------------------------------------------------
class LoraPolicies:
    """The trained policy (adapter ``default``) and the old policy (adapter ``old``).

    :meth:`use` selects which one the transformer runs: ``"policy"``, ``"old"`` or
    ``"base"`` (adapters disabled: the reference model of the KL term).
    """

    def __init__(self, transformer, rank: int, alpha: float, targets: list[str], exclude: list[str]):
        from peft import LoraConfig

        self.transformer = transformer
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets),
                            exclude_modules=list(exclude) or None)
        transformer.requires_grad_(False)
        transformer.add_adapter(config, adapter_name="default")
        with warnings.catch_warnings():  # two adapters on one model is the point here
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            transformer.add_adapter(config, adapter_name="old")
        self.rank, self.alpha, self.targets = rank, alpha, list(targets)
        named = dict(transformer.named_parameters())
        self.policy = {n: p for n, p in named.items() if ".lora_" in n and ".default." in n}
        self.old = {n.replace(".default.", ".old."): named[n.replace(".default.", ".old.")] for n in self.policy}
        if not self.policy:
            raise ValueError(f"LoRA targets {targets} matched no module of the transformer")
        with torch.no_grad():
            for name, param in self.policy.items():
                self.old[name.replace(".default.", ".old.")].copy_(param)
        self.mode = None
        self.use("policy")

    def use(self, which: str) -> None:
        if which == self.mode:
            return
        transformer = self.transformer
        if which == "base":
            transformer.disable_adapters()
        else:
            transformer.enable_adapters()
            transformer.set_adapter("default" if which == "policy" else "old")
        # peft flips requires_grad when switching adapters: only the policy trains.
        for param in self.policy.values():
            param.requires_grad_(True)
        for param in self.old.values():
            param.requires_grad_(False)
        self.mode = which

    def policy_tensors(self) -> list[torch.Tensor]:
        return list(self.policy.values())

    def old_tensors(self) -> list[torch.Tensor]:
        return [self.old[n.replace(".default.", ".old.")] for n in self.policy]


def _lora_weights(named: dict[str, torch.Tensor], config: TrainConfig, base: str, metadata: dict):
    from .lora import lora_from_peft_state_dict

    return lora_from_peft_state_dict({k: v.detach().float().cpu() for k, v in named.items()},
                                     alpha=config.lora_alpha, base=base, metadata=metadata)


def moving_average(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing mean of the last ``window`` ``(x, y)`` points at each x."""
    values = [y for _, y in points]
    return [(x, sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)))
            for i, (x, _) in enumerate(points)]


# ----------------------------------------------------------------------------------------
# metrics and figures
# ----------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.csv`` (one row per step; rows past a resumed step are dropped) + TensorBoard."""

    def __init__(self, out: Path, resumed_step: int, enabled: bool):
        self.path = out / "metrics.csv"
        self.rows: list[dict] = []
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resumed_step]
            self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_step + 1)
        except ImportError:
            print("note: tensorboard is not installed; metrics go to metrics.csv only", file=sys.stderr)

    def _rewrite(self) -> None:
        if not self.rows:
            return
        keys = list(self.rows[-1].keys())
        with atomic_write(self.path, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._rewrite()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def series(self, key: str) -> list[tuple[float, float]]:
        return [(float(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "", "nan")]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------
class JudgeFailure(RuntimeError):
    """The judge could not rate a rollout after ``judge_retries`` retries and
    ``judge_failure = "stop"``: the run saved its last completed step and stops."""


def optimality_of_rated(raw: torch.Tensor, rated: torch.Tensor, config):
    """:func:`~motionnft.nft.optimality_rewards` over the prompts (rows of ``raw``, ``(P, K)``)
    whose rollouts were all rated (``rated``, ``(P,)`` bool); the others neither train nor
    retire (reward ½, advantage 0, NaN statistics)."""
    from .nft import OptimalityRewards, optimality_rewards

    prompts, rollouts = raw.shape
    result = OptimalityRewards(
        reward=torch.full((prompts, rollouts), 0.5), advantage=torch.zeros(prompts, rollouts),
        prompt_mean=torch.full((prompts,), float("nan")), prompt_std=torch.full((prompts,), float("nan")),
        global_std=float("nan"), train=torch.zeros(prompts, dtype=torch.bool),
        retire=torch.zeros(prompts, dtype=torch.bool))
    if bool(rated.any()):
        kept = optimality_rewards(raw[rated], config)
        for name in ("reward", "advantage", "prompt_mean", "prompt_std", "train", "retire"):
            getattr(result, name)[rated] = getattr(kept, name)
        result.global_std = kept.global_std
    return result


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
        from accelerate import Accelerator

        self.config = config.validate()
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision if torch.cuda.is_available() else "no", cpu=not torch.cuda.is_available())
        self.show_progress = show_progress and self.accelerator.is_main_process
        self.out = Path(config.output_dir)
        self.judge = judge if judge is not None else self._configured_judge()
        self.weights = config.reward_weights(self.judge is not None)
        self.nft = config.nft()
        world = self.accelerator.num_processes
        if config.prompts_per_epoch % world:
            raise ValueError(f"train config: prompts_per_epoch {config.prompts_per_epoch} must be a multiple of "
                             f"the number of processes ({world})")
        self._build(model)

    # -- setup ------------------------------------------------------------------------
    def _configured_judge(self):
        if not self.config.judge_url:
            return None
        try:
            from .judge import JudgeClient  # only when a judge is configured
        except ImportError as error:
            raise ValueError(f"judge_url is set but the judge client (motionnft.judge) cannot be imported: {error}") \
                from None

        # The trainer retries a failed rating itself (judge_retries, any error), so the
        # client makes one attempt per call; judge_concurrency requests may be in flight.
        config = self.config
        return JudgeClient(config.judge_url, config.judge_model,
                           api_key=os.environ.get(config.judge_api_key_env) or None, timeout=config.judge_timeout,
                           max_retries=0, max_concurrency=config.judge_concurrency)

    def _build(self, model=None) -> None:
        from .flow import create_estimator
        from .models import build_from_config
        from .models.configured import load_base_weights
        from .reward import MotionRewardConfig

        config = self.config
        dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32
        self.model = build_from_config(config, dtype) if model is None else load_base_weights(model, config.base_weights)
        self.model.to(self.accelerator.device, dtype)
        targets = config.lora_targets or list(self.model.lora_target_modules)
        exclude = self.model.lora_exclusions() if hasattr(self.model, "lora_exclusions") else []
        torch.manual_seed(config.seed)  # the LoRA's gaussian init
        self.policies = LoraPolicies(self.model.transformer, config.lora_rank, config.lora_alpha, targets, exclude)
        if config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.ema = [p.detach().clone().float() for p in self.policies.policy_tensors()]
        self.optimizer = torch.optim.AdamW(self.policies.policy_tensors(), lr=config.learning_rate,
                                           betas=(config.adam_beta1, config.adam_beta2),
                                           weight_decay=config.weight_decay)
        self.unwrapped = self.model.transformer
        self.fsdp = self.accelerator.distributed_type.value == "FSDP"
        if self.fsdp:
            # FSDP shards the frozen base weights; the LoRA matrices stay whole on every
            # rank (ignored by FSDP), so EMA, old policy and checkpoints work as on one
            # device, and the trainer all-reduces their gradients itself.
            lora_modules = [m for n, m in self.unwrapped.named_modules() if n.split(".")[-1] in ("lora_A", "lora_B")]
            self.accelerator.state.fsdp_plugin.ignored_modules = lora_modules
        self.model.transformer, self.optimizer = self.accelerator.prepare(self.model.transformer, self.optimizer)
        self.data = open_training_data(config)
        self.cursor = PromptCursor([s.id for s in self.data], config.seed)
        self._committed_cursor = self.cursor.state()  # what a checkpoint saves until a step completes
        self.cache: OrderedDict[int, PromptEntry] = OrderedDict()
        self.estimator = create_estimator(
            config.flow_backend, config.flow_preset or None, weights=config.flow_weights or None,
            precision=config.flow_precision or None,
            # A learned flow network runs where the policy does; the OpenCV backends ignore it.
            device=self.accelerator.device,
        )
        self.reward_config = MotionRewardConfig(variant=config.reward_variant)
        self.size = (config.resolution, config.resolution)
        self.sigmas = self.model.sigmas(config.sampling_steps, self.size)
        self.step = 0
        self._heldout = None

    # -- per-prompt cache ---------------------------------------------------------------
    def prompt(self, index: int) -> PromptEntry:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        entry = self.prepare(self.data[index])
        self.cache[index] = entry
        while len(self.cache) > self.config.prompt_cache_size:
            self.cache.popitem(last=False)
        return entry

    def prepare(self, sample) -> PromptEntry:
        """A sample's images at the training size, its condition and its ground-truth flow."""
        from .image import center_crop_resize

        input_image = center_crop_resize(sample.input_image(), self.size)
        target_image = center_crop_resize(sample.target_image(), self.size)
        condition = self.model.encode_condition(sample.prompt, input_image, self.size)
        flow_target = self.estimator(input_image, target_image)
        return PromptEntry(condition, input_image, target_image, flow_target)

    # -- phases ---------------------------------------------------------------------------
    @torch.no_grad()
    def rollouts(self, entry: PromptEntry, generator: torch.Generator, policy: str = "old") -> torch.Tensor:
        """K samples of one prompt from ``policy`` (the old one while training): packed latents
        ``(K, N, C)`` float32 (CPU)."""
        from .sampling import sample

        config = self.config
        self.policies.use(policy)
        noise = self.model.noise(config.rollouts_per_prompt if policy == "old" else config.heldout_rollouts,
                                 self.size, generator)
        out = []
        for start in range(0, noise.shape[0], config.rollout_batch_size):
            chunk = noise[start:start + config.rollout_batch_size].to(self.accelerator.device)
            condition = entry.condition.repeat(chunk.shape[0])
            with self.accelerator.autocast():
                x0 = sample(lambda x, t: self.model.velocity(x, t, condition), chunk, self.sigmas, config.sampler)
            out.append(x0.float().cpu())
        return torch.cat(out)

    def rewards(self, entry: PromptEntry, images: torch.Tensor, prompt: str) -> dict:
        from .reward import motion_reward

        motion = motion_reward(entry.input_image, images, entry.target_image, estimator=self.estimator,
                               config=self.reward_config, flow_target=entry.flow_target)
        raw = self.weights[0] * motion.reward.float()
        judge_scores = torch.full_like(raw, float("nan"))
        failure = None
        if self.judge is not None and self.weights[1] > 0:
            scores, failures = self.judge_scores(entry.input_image, images, prompt)
            judge_scores = torch.tensor(scores, dtype=raw.dtype)
            raw = raw + self.weights[1] * judge_scores
            if failures:
                first = min(failures)
                failure = (f"the judge could not rate {len(failures)} of {len(scores)} rollouts; rollout {first + 1}: "
                           f"{failures[first]}")
        return {"raw": raw, "motion": motion.reward.float(), "motion_continuous": motion.reward_continuous.float(),
                "mas": motion.mas.score.float(), "judge": judge_scores, "judge_failure": failure}

    def judge_scores(self, input_image: torch.Tensor, images: torch.Tensor, prompt: str) -> tuple[list, dict]:
        """The judge's reward of each rollout ``(K, 3, H, W)``: ``(scores, failures)``.

        Up to ``judge_concurrency`` ratings run at once. A rating that raises (unreachable
        server, timeout, HTTP error, malformed answer) or is not a number in [0, 1] is asked
        again up to ``judge_retries`` times, ``judge_backoff`` seconds after the first failure
        and twice as long after each further one (at most 60 s). ``scores[k]`` is NaN and
        ``failures[k]`` the last error's text for a rollout still unrated then.
        """
        config = self.config

        def rate(k: int) -> float:
            attempts = config.judge_retries + 1
            for attempt in range(attempts):
                try:
                    score = float(self.judge.rate_training_reward(input_image, images[k:k + 1], prompt))
                    if not 0.0 <= score <= 1.0:  # NaN included
                        raise ValueError(f"the judge returned {score!r}, expected a reward in [0, 1]")
                    return score
                except Exception:  # noqa: BLE001 - any judge failure is reported, not fatal here
                    if attempt + 1 == attempts:
                        raise
                    time.sleep(min(config.judge_backoff * 2**attempt, 60.0))
            raise AssertionError("unreachable")

        scores, failures = [float("nan")] * images.shape[0], {}
        workers = min(config.judge_concurrency, images.shape[0])
        if workers <= 1:
            results = []
            for k in range(images.shape[0]):
                try:
                    results.append((k, rate(k), None))
                except Exception as error:  # noqa: BLE001
                    results.append((k, None, error))
        else:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="motionnft-judge")
            futures = [(k, pool.submit(rate, k)) for k in range(images.shape[0])]
            results = []
            try:
                for k, future in futures:
                    try:
                        results.append((k, future.result(), None))
                    except Exception as error:  # noqa: BLE001
                        results.append((k, None, error))
            except BaseException:  # Ctrl-C: drop the ratings not started, do not wait for those in flight
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        attempts = config.judge_retries + 1
        for k, score, error in results:
            if error is None:
                scores[k] = score
            else:
                text = str(error).strip() or type(error).__name__
                failures[k] = f"{type(error).__name__}: {text} ({attempts} attempt{'s' if attempts > 1 else ''})"
        return scores, failures

    def loss_phase(self, items: list[tuple], global_count: int, batches: int, bar=None,
                   global_batches: int | None = None) -> dict:
        """Forward/backward over (x0, t, r, condition) items in micro-batches.

        ``batches`` is the same on every process (padded with zero-weight batches) so that
        DDP/FSDP collectives line up; DDP averages the processes' gradients, so a weight of
        ``world / n`` makes a term count ``1 / n`` of the step's gradient:

        - ``loss_average = "all"``: each term weighs ``world / global_count``: the gradient
          is the mean over all ``global_count`` sample-timesteps of the step;
        - ``"micro_batch"`` (the release): a micro-batch's terms weigh
          ``world / (global_batches · len(micro-batch))``: the gradient is the mean over the
          step's ``global_batches`` real micro-batches (all processes) of each micro-batch's
          mean over its sample-timesteps.

        The returned loss terms are the mean over all sample-timesteps either way.
        """
        from .models import Condition
        from .nft import nft_loss

        config = self.config
        device = self.accelerator.device
        world = self.accelerator.num_processes
        size = config.train_batch_size
        totals = {"loss": 0.0, "policy_loss": 0.0, "kl": 0.0, "positive": 0.0, "negative": 0.0}
        model = self.model
        per_batch = config.loss_average == "micro_batch"
        for b in range(batches):
            chunk = items[b * size:(b + 1) * size]
            if per_batch:
                weight = world / max(global_batches or 1, 1) / max(len(chunk), 1)
            else:
                weight = world / max(global_count, 1)
            if not chunk:  # padding batch: a real item, zero weight
                chunk, weight = (items[:1] if items else self._padding_item()), 0.0
            x0 = torch.stack([c[0] for c in chunk]).to(device)
            t = torch.tensor([c[1] for c in chunk], dtype=torch.float32, device=device)
            reward = torch.tensor([c[2] for c in chunk], dtype=torch.float32, device=device)
            noise = torch.stack([c[4] for c in chunk]).to(device)
            condition = Condition.cat([c[3] for c in chunk])
            x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
            with torch.no_grad(), self.accelerator.autocast():
                self.policies.use("old")
                v_old = model.velocity(x_t, t, condition)
                v_ref = None
                if config.kl_weight > 0:
                    self.policies.use("base")
                    v_ref = model.velocity(x_t, t, condition)
            self.policies.use("policy")
            sync = contextlib.nullcontext() if b == batches - 1 else self.accelerator.no_sync(model.transformer)
            with sync:
                with self.accelerator.autocast():
                    v_theta = model.velocity(x_t, t, condition)
                    loss = nft_loss(v_theta, v_old, x_t, x0, t, reward, v_ref, self.nft)
                self.accelerator.backward(loss.per_sample.sum() * weight)
            if weight > 0:
                share = world / max(global_count, 1)
                totals["loss"] += float(loss.per_sample.detach().sum()) * share
                totals["policy_loss"] += float(loss.policy.detach().sum()) * share
                totals["kl"] += float(loss.kl.detach().sum()) * share
                totals["positive"] += float(loss.positive.detach().sum()) * share
                totals["negative"] += float(loss.negative.detach().sum()) * share
            if bar is not None:
                bar.update(1)
        return totals

    def _padding_item(self):
        entry = self.prompt(0)
        tokens = self.model.token_count(self.size)
        zeros = torch.zeros(tokens, self.model.token_channels())
        return [(zeros, float(self.sigmas[0]), 0.5, entry.condition, zeros)]

    # -- held-out evaluation --------------------------------------------------------------
    def heldout_entries(self) -> list[tuple[str, PromptEntry]]:
        """``(sample id, entry)`` of every held-out prompt (empty without ``heldout_data``), built once."""
        if self._heldout is None:
            data = open_heldout_data(self.config)
            self._heldout = [(s.id, self.prepare(s)) for s in data] if data is not None else []
        return self._heldout

    @contextlib.contextmanager
    def _ema_as_policy(self):
        """The policy adapter holds the EMA weights (what is saved) inside the block."""
        tensors = self.policies.policy_tensors()
        saved = [p.detach().clone() for p in tensors]
        with torch.no_grad():
            for target, source in zip(tensors, self.ema):
                target.copy_(source)
        try:
            yield
        finally:
            with torch.no_grad():
                for target, source in zip(tensors, saved):
                    target.copy_(source)

    @torch.no_grad()
    def evaluate_heldout(self, keep_images: int = 4):
        """Held-out scores of the EMA LoRA: ``heldout_rollouts`` rollouts per prompt, each prompt's
        noise drawn from ``(seed, "heldout", sample id)`` so every evaluation sees the same noise.

        Returns a :class:`~motionnft.heldout.HeldoutScores`, or None without held-out data.
        """
        from .heldout import performed_motion, score_heldout
        from .reward import motion_reward

        entries = self.heldout_entries()
        if not entries:
            return None
        device = self.accelerator.device

        def rollouts(index: int) -> torch.Tensor:
            sample_id, entry = entries[index]
            x0 = self.rollouts(entry, derived_generator(self.config.seed, "heldout", sample_id), policy="policy")
            return self.model.decode_tokens(x0.to(device), self.size).float().cpu()

        def score(index: int, edits: torch.Tensor) -> dict:
            entry = entries[index][1]
            result = motion_reward(entry.input_image, edits, entry.target_image, estimator=self.estimator,
                                   config=self.reward_config, flow_target=entry.flow_target)
            return {"reward": result.reward, "reward_continuous": result.reward_continuous, "mas": result.mas.score,
                    "performed": performed_motion(result.flow_edit, result.flow_target)}

        bar = self._bar(len(entries), f"held-out evaluation (step {self.step})")
        with self._ema_as_policy():
            scores = score_heldout([sample_id for sample_id, _ in entries], rollouts, score, self.step,
                                   keep_images=keep_images, progress=lambda: bar.update(1))
        bar.close()
        self.policies.use("policy")
        return scores

    # -- one optimiser step ------------------------------------------------------------
    def train_step(self) -> dict:
        from .nft import ema_decay, lerp_, loss_timesteps, old_policy_rate, optimality_rewards

        config = self.config
        accelerator = self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        step = self.step
        chosen = self.cursor.take(config.prompts_per_epoch)
        local = chosen[rank::world]
        timings = {"rollout_s": 0.0, "reward_s": 0.0, "loss_s": 0.0}

        start = time.perf_counter()
        entries = [self.prompt(i) for i in local]
        timings["prepare_s"] = time.perf_counter() - start
        samples, reward_rows = [], []
        bar = self._bar(len(local), f"step {step + 1} rollouts")
        for position, (index, entry) in enumerate(zip(local, entries)):
            t0 = time.perf_counter()
            x0 = self.rollouts(entry, derived_generator(config.seed, "rollout", step, index, rank + position * world))
            images = self.model.decode_tokens(x0.to(accelerator.device), self.size).float().cpu()
            self._sync()
            t1 = time.perf_counter()
            reward_rows.append(self.rewards(entry, images, self.data[index].prompt))
            t2 = time.perf_counter()
            timings["rollout_s"] += t1 - t0
            timings["reward_s"] += t2 - t1
            samples.append((index, entry, x0, images))
            bar.update(1)
        bar.close()

        raw_local = torch.stack([r["raw"] for r in reward_rows]).to(accelerator.device)
        raw_all = accelerator.gather(raw_local).cpu() if world > 1 else raw_local.cpu()
        # gather orders by process; rows of process p are prompts chosen[p::world]
        order = [i for p in range(world) for i in chosen[p::world]]
        failed_local = torch.tensor([r["judge_failure"] is not None for r in reward_rows], dtype=torch.int32)
        failed_all = (accelerator.gather(failed_local.to(accelerator.device)).cpu() if world > 1 else failed_local) > 0
        rated = ~failed_all
        if bool(failed_all.any()):  # every process sees it, so they stop (or skip) together
            self._judge_failed(step, local, reward_rows)
            optimality = optimality_of_rated(raw_all, rated, self.nft)
        else:
            optimality = optimality_rewards(raw_all, self.nft)
        my_rows = slice(rank * len(local), (rank + 1) * len(local))
        train_local = optimality.train[my_rows]
        reward_local = optimality.reward[my_rows]

        items = []
        for position, (index, entry, x0, _) in enumerate(samples):
            if not bool(train_local[position]):
                continue
            generator = derived_generator(config.seed, "loss", step, index, rank + position * world)
            times = loss_timesteps(self.sigmas, x0.shape[0], self.nft.timestep_fraction, generator)
            for k in range(x0.shape[0]):
                for t in times[k].tolist():
                    noise = torch.randn(x0.shape[1:], generator=generator)
                    items.append((x0[k], t, float(reward_local[position, k]), entry.condition, noise))
        # the same shuffle on every run: micro-batches mix prompts and timesteps
        permutation = torch.randperm(len(items), generator=derived_generator(config.seed, "batches", step, rank))
        items = [items[i] for i in permutation.tolist()]
        counts = torch.tensor([len(items)], device=accelerator.device)
        all_counts = accelerator.gather(counts).cpu() if world > 1 else counts.cpu()
        global_count = int(all_counts.sum())

        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        losses = {"loss": float("nan"), "policy_loss": float("nan"), "kl": float("nan"), "positive": float("nan"),
                  "negative": float("nan")}
        grad_norm = float("nan")
        splits = config.optimizer_steps_per_epoch
        per_split = math.ceil(int(all_counts.max()) / splits) if global_count else 0
        split_items = [items[s * per_split:(s + 1) * per_split] for s in range(splits)] if global_count else []
        if len(split_items) > 1:  # a Ctrl-C between two optimiser steps of one epoch rolls back to its start
            self._epoch_snapshot = ([p.detach().clone() for p in self.policies.policy_tensors()],
                                    copy.deepcopy(self.optimizer.state_dict()))
        for part in split_items:
            part_counts = accelerator.gather(torch.tensor([len(part)], device=accelerator.device)).cpu() \
                if world > 1 else torch.tensor([len(part)])
            part_global = int(part_counts.sum())
            batches = math.ceil(int(part_counts.max()) / config.train_batch_size)
            if part_global == 0:
                continue
            # the real (not padding) micro-batches of this optimiser step, over all processes
            real_batches = sum(math.ceil(int(c) / config.train_batch_size) for c in part_counts.tolist())
            bar = self._bar(batches, f"step {step + 1} loss")
            part_losses = self.loss_phase(part, part_global, batches, bar, real_batches)
            bar.close()
            for key, value in part_losses.items():  # the epoch's mean over all its terms
                share = value * part_global / global_count
                losses[key] = share if math.isnan(losses[key]) else losses[key] + share
            if self.fsdp:
                for param in self.policies.policy_tensors():
                    if param.grad is not None:
                        torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.AVG)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policies.policy_tensors(), config.grad_clip))
            else:
                grad_norm = float(accelerator.clip_grad_norm_(self.policies.policy_tensors(), config.grad_clip))
            with _DeferInterrupt():
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        timings["loss_s"] = time.perf_counter() - t0

        with _DeferInterrupt():
            self.step = step + 1
            decay = ema_decay(self.step, self.nft)  # as the release: after the step count is incremented
            lerp_(self.ema, self.policies.policy_tensors(), decay)
            eta = old_policy_rate(self.step, self.nft)
            lerp_(self.policies.old_tensors(), self.policies.policy_tensors(), eta)
            retired_now = {self.data[order[p]].id for p in range(len(order)) if bool(optimality.retire[p])}
            self.cursor.retired |= retired_now
            self._committed_cursor = self.cursor.state()
            self._epoch_snapshot = None

        gathered = {key: torch.cat([r[key] for r in reward_rows]) for key in ("motion", "motion_continuous", "mas", "judge")}
        if world > 1:
            gathered = {k: accelerator.gather(v.to(accelerator.device)).cpu() for k, v in gathered.items()}
        judge = gathered["judge"]
        row = {
            "step": self.step,
            "reward_mean": float(raw_all[rated].mean()) if bool(rated.any()) else float("nan"),
            "reward_std": optimality.global_std,
            "motion_reward_mean": float(gathered["motion"].mean()),
            "motion_reward_continuous_mean": float(gathered["motion_continuous"].mean()),
            "mas_mean": float(gathered["mas"].mean()),
            "judge_mean": float(judge.nanmean()) if not torch.isnan(judge).all() else float("nan"),
            "trained_prompts": int(optimality.train.sum()),
            "trained_terms": global_count,
            "retired_prompts": len(self.cursor.retired),
            "judge_skipped_prompts": int(failed_all.sum()),
            **losses,
            "grad_norm": grad_norm,
            "old_eta": eta,
            "ema_decay": decay,
            **{k: v for k, v in timings.items()},
        }
        self.last_samples = samples[:1]
        return row

    def _judge_failed(self, step: int, local: list[int], reward_rows: list[dict]) -> None:
        """Report this process's prompts the judge could not rate; under ``judge_failure =
        "stop"`` raise :class:`JudgeFailure` (every process does, at the same point)."""
        stop = self.config.judge_failure == "stop"
        action = ("stopping (judge_failure = \"stop\")" if stop
                  else "prompt skipped this step (judge_failure = \"skip\")")
        reasons = []
        for index, row in zip(local, reward_rows):
            if row["judge_failure"] is not None:
                reasons.append(f"prompt {self.data[index].id!r}: {row['judge_failure']}")
                print(f"step {step + 1}: {reasons[-1]}; {action}", file=sys.stderr)
        if stop:
            what = reasons[0] if reasons else "the judge failed in another process (see its log)"
            raise JudgeFailure(f"step {step + 1}: {what}. judge_failure = \"stop\": the run stops at the last "
                               "completed step; run it again to resume (or set judge_failure = \"skip\")")

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _bar(self, total: int, description: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=description, leave=False, disable=not self.show_progress, unit="it")

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
        names = list(self.policies.policy)
        tensors = {"ema": self.ema, "policy": self.policies.policy_tensors(), "old": self.policies.old_tensors()}[which]
        metadata = dict(self._metadata(), **{"motionnft.weights": which})
        return _lora_weights(dict(zip(names, tensors)), self.config, self.model.base, metadata)

    def save_checkpoint(self, interrupted: bool = False, wait: bool = True) -> Path | None:
        """Write ``checkpoints/step-N/`` atomically (temp folder + rename) and prune old ones.

        The main process writes (the LoRA, its EMA and optimiser state are whole on every
        process); ``wait=False`` skips the barrier, for a failure other processes may not share.
        """
        from .lora import save_lora

        if wait:
            self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        root = self.out / "checkpoints"
        final = root / f"step-{self.step:06d}"
        if final.is_dir():
            return final
        temporary = root / f".step-{self.step:06d}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        save_lora(temporary / LORA_FILE, self.lora("ema"))
        state = {
            "step": self.step,
            "policy": [p.detach().cpu().clone() for p in self.policies.policy_tensors()],
            "old": [p.detach().cpu().clone() for p in self.policies.old_tensors()],
            "ema": [p.cpu().clone() for p in self.ema],
            "names": list(self.policies.policy),
            "optimizer": self.optimizer.state_dict(),
            "cursor": getattr(self, "_committed_cursor", self.cursor.state()),
            "rng": rng_state(),
            "config": dataclasses.asdict(self.config),
            "interrupted": interrupted,
        }
        with atomic_write(temporary / STATE_FILE) as handle:
            torch.save(state, handle)
        os.replace(temporary, final)
        with atomic_write(root / "latest", "w") as handle:
            handle.write(final.name + "\n")
        kept = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in kept[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state saved by :meth:`save_checkpoint`.

        The state file holds tensors and plain containers only and is read with
        ``torch.load(weights_only=True)``: a file that would run code when unpickled is
        refused, never executed.

        Raises:
            FileNotFoundError without the state file; ValueError naming the file when it is
            not a trainer state this version wrote.
        """
        state_file = path / STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(f"no trainer state in {path} (looked for {state_file})")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message ends with the unpickler's reason, e.g. "Unsupported global: GLOBAL os.system ..."
            found = re.search(r"Unsupported global: GLOBAL (\S+)|WeightsUnpickler error: ([^\n]+)", str(error))
            first = next((g for g in found.groups() if g), "") if found else type(error).__name__
            first = f"it names {first}" if found and found.group(1) else first
            raise ValueError(
                f"refusing to load {state_file}: it holds objects other than tensors and plain containers, which "
                f"unpickling could use to run code ({first}). A trainer_state.pt this version of motionnft wrote "
                "holds none: the file comes from elsewhere or from an older version (numpy RNG state as an "
                "array); start over (--resume none) or use a checkpoint you wrote") from None
        if not isinstance(state, dict) or not {"names", "policy", "old", "ema", "optimizer", "cursor", "rng",
                                               "step"} <= set(state):
            raise ValueError(f"{state_file} is not a MotionNFT trainer state (expected a dict with the LoRA, "
                             f"optimiser, data cursor and RNG states)")
        if state["names"] != list(self.policies.policy):
            raise ValueError(f"checkpoint {path} holds a LoRA on other modules than this configuration's")
        with torch.no_grad():
            for target, source in zip(self.policies.policy_tensors(), state["policy"]):
                target.copy_(source)
            for target, source in zip(self.policies.old_tensors(), state["old"]):
                target.copy_(source)
            for target, source in zip(self.ema, state["ema"]):
                target.copy_(source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.cursor.load(state["cursor"])
        self._committed_cursor = self.cursor.state()
        set_rng_state(state["rng"])
        self.step = state["step"]

    def find_checkpoint(self, resume: str | os.PathLike | None) -> Path | None:
        if resume in (None, "", False):
            return None
        if resume == "auto":
            latest = self.out / "checkpoints" / "latest"
            if not latest.is_file():
                return None
            return self.out / "checkpoints" / latest.read_text().strip()
        path = Path(resume)
        if (path / "checkpoints" / "latest").is_file():
            return path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path} (looked for {path / STATE_FILE} and "
                                    f"{path / 'checkpoints' / 'latest'})")
        return path

    # -- the loop -------------------------------------------------------------------------
    def run(self, resume: str | os.PathLike | None = "auto") -> TrainResult:
        from tqdm import tqdm

        from .plot import render_curves

        config = self.config
        main = self.accelerator.is_main_process
        checkpoint = self.find_checkpoint(resume)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.out / "config.toml", "w") as handle:
                handle.write(config_to_toml(config))
        log = MetricsLog(self.out, self.step, main)
        if main:
            where = f"resumed from {checkpoint} at step {self.step}" if checkpoint else "from scratch"
            print(f"MotionNFT: {self.model.describe()}; LoRA r={config.lora_rank} alpha={config.lora_alpha:g} on "
                  f"{len(self.policies.policy) // 2} modules; {len(self.data)} prompts ({self.data.layout}); "
                  f"reward motion {self.weights[0]:g}" + (f" + judge {self.weights[1]:g}" if self.weights[1] else "")
                  + f"; {self.accelerator.num_processes} process(es) on {self.accelerator.device}; {where}")
        heldout_before = self._heldout_before(main)
        self.heldout_results = [heldout_before] if heldout_before is not None else []
        interrupted, failure = False, None
        bar = tqdm(total=config.max_steps, initial=self.step, desc="MotionNFT", unit="step", disable=not self.show_progress)
        try:
            while self.step < config.max_steps:
                row = self.train_step()
                log.add(row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}", mas=f"{row['mas_mean']:.1f}",
                                loss=f"{row['loss']:.4f}")
                if main and config.sample_grid_every and self.step % config.sample_grid_every == 0:
                    self._write_sample_grid()
                if config.save_every and self.step % config.save_every == 0:
                    self.save_checkpoint()
                    if main:
                        self._write_curve(log, render_curves)
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
        if failure is not None:
            self._save_after_failure(failure, log)
            raise failure
        checkpoint_dir = self.save_checkpoint(interrupted=interrupted)
        heldout_after = None
        if heldout_before is not None and not interrupted:
            heldout_after = self._heldout_after(heldout_before, main)
        lora_path = None
        if main:
            lora_path = self.out / LORA_FILE
            shutil.copyfile(checkpoint_dir / LORA_FILE, lora_path) if checkpoint_dir else None
            self._write_curve(log, render_curves)
            if heldout_after is not None:
                from .heldout import format_comparison

                print(format_comparison(heldout_before, heldout_after))
            print(f"{'stopped' if interrupted else 'done'} at step {self.step}: LoRA {lora_path}; checkpoint "
                  f"{checkpoint_dir}; metrics {log.path}; curve {self.out / 'reward_curve.png'}")
        log.close()
        return TrainResult(self.out, self.step, lora_path, interrupted, log.rows, heldout_before, heldout_after)

    def _heldout_before(self, main: bool):
        """The held-out scores at the run's start: measured now on a fresh run (or when the run
        folder has none), read back from ``heldout.json`` on a resumed one."""
        from .heldout import HeldoutScores, image_grid

        if not self.config.heldout_data:
            return None
        path = self.out / HELDOUT_FILE
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded.get("before", {}).get("ids") == [i for i, _ in self.heldout_entries()]:
                return HeldoutScores.from_dict(recorded["before"])
        scores = self.evaluate_heldout()
        if main:
            with atomic_write(path, "w") as handle:
                json.dump({"before": scores.to_dict()}, handle)
            entries = self.heldout_entries()[:len(scores.images)]
            rows = [[entry.input_image[0], entry.target_image[0], images]
                    for (_, entry), images in zip(entries, scores.images)]
            self._save_image(image_grid(rows), self.out / "samples" / "heldout-before.png")
        return scores

    def _heldout_after(self, before, main: bool):
        """Held-out scores of the saved (EMA) LoRA; writes ``heldout.json`` and the
        before/after sheet ``samples/heldout.png`` (input, target, K before, K after)."""
        from .heldout import image_grid

        after = self.evaluate_heldout()
        if main:
            with atomic_write(self.out / HELDOUT_FILE, "w") as handle:
                json.dump({"before": before.to_dict(), "after": after.to_dict()}, handle)
            before_sheet = self.out / "samples" / "heldout-before.png"
            if before_sheet.is_file():
                from .image import load_image

                left = load_image(before_sheet)[0]
                right = image_grid([[images] for images in after.images])[:, :left.shape[-2]]
                self._save_image(torch.cat((left[:, :right.shape[-2]], right), dim=-1),
                                 self.out / "samples" / "heldout.png")
        self.heldout_results = [before, after]
        return after

    @staticmethod
    def _save_image(image: torch.Tensor, path: Path) -> None:
        from .image import save_image

        save_image(image, path)

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
        snapshot = getattr(self, "_epoch_snapshot", None)
        if snapshot is None:
            return
        weights, optimizer_state = snapshot
        with torch.no_grad():
            for target, source in zip(self.policies.policy_tensors(), weights):
                target.copy_(source)
        self.optimizer.load_state_dict(optimizer_state)
        self._epoch_snapshot = None

    def _write_curve(self, log: MetricsLog, render_curves) -> None:
        from .image import save_image

        if not log.rows:
            return
        series = {"motion reward (step mean)": log.series("motion_reward_mean"),
                  "motion reward, 5-step average": moving_average(log.series("motion_reward_mean"), 5),
                  "MAS / 100, 5-step average": [(x, y / 100) for x, y in moving_average(log.series("mas_mean"), 5)]}
        if log.series("judge_mean"):
            series["raw reward (step mean)"] = log.series("reward_mean")
        heldout = getattr(self, "heldout_results", [])
        if heldout:
            series["held-out: performed the motion"] = [(s.step, s.summary()["performed"][0]) for s in heldout]
            series["held-out: MAS / 100"] = [(s.step, s.summary()["mas"][0] / 100) for s in heldout]
        figure = render_curves(series, title=f"MotionNFT on {self.model.name}", x_label="optimiser step",
                               y_range=(0.0, 1.0))
        save_image(figure, self.out / "reward_curve.png")

    def _write_sample_grid(self) -> None:
        from .image import save_image

        if not getattr(self, "last_samples", None):
            return
        _, entry, _, images = self.last_samples[0]
        row = torch.cat([entry.input_image.cpu(), entry.target_image.cpu(), images], dim=0)
        grid = torch.cat(list(row), dim=-1)
        save_image(grid, self.out / "samples" / f"step-{self.step:06d}.png")


def train(config: TrainConfig, judge=None, resume: str | os.PathLike | None = "auto",
          show_progress: bool = True) -> TrainResult:
    """Train with ``config``; ``resume="auto"`` continues from ``output_dir``'s latest checkpoint."""
    return Trainer(config, judge=judge, show_progress=show_progress).run(resume=resume)
