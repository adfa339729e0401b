"""The headless MotionNFT trainer: the entry point and the names it has always exported.

The trainer lives in :mod:`motionnft.training` (one module per job; its docstring
describes a step). This module re-exports its public names, so ``from motionnft.train
import Trainer, load_config, train`` keeps working.
"""

from __future__ import annotations

from .training.checkpoints import STATE_FILE
from .training.data import (HELDOUT_SEED_OFFSET, PromptCursor, PromptEntry, open_heldout_data,
                            open_training_data)
from .training.evaluation import HELDOUT_FILE
from .training.interrupt import DeferInterrupt
from .training.loop import LORA_FILE, Trainer, TrainResult, train
from .training.metrics import MetricsLog, moving_average
from .training.policies import LoraPolicies
from .training.rewards import JudgeFailure, optimality_of_rated
from .training.seeding import derived_generator, rng_state, set_rng_state
from .training.settings import (CONFIG_FILE, JUDGE_FAILURES, LOSS_AVERAGES, PRESETS, TrainConfig, config_to_toml,
                                load_config, parse_override)

__all__ = [
    "CONFIG_FILE", "HELDOUT_FILE", "HELDOUT_SEED_OFFSET", "JUDGE_FAILURES", "LORA_FILE", "LOSS_AVERAGES", "PRESETS",
    "STATE_FILE", "DeferInterrupt", "JudgeFailure", "LoraPolicies", "MetricsLog", "PromptCursor", "PromptEntry",
    "TrainConfig", "TrainResult", "Trainer", "config_to_toml", "derived_generator", "load_config", "moving_average",
    "open_heldout_data", "open_training_data", "optimality_of_rated", "parse_override", "rng_state",
    "set_rng_state", "train",
]
