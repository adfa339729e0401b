"""``motionnft train``: the MotionNFT trainer (:mod:`motionnft.training`) behind presets, a TOML file and --set."""

from __future__ import annotations

import sys
from pathlib import Path


def add_train(commands) -> None:
    train = commands.add_parser(
        "train", help="post-train an editing model with MotionNFT (LoRA); --preset tiny runs on the CPU",
        description="MotionNFT trainer. Settings: motionnft/training/settings.py (every setting and its "
                    "default), motionnft/configs/train.toml (presets), --config FILE, then --set KEY=VALUE. "
                    "Multi-GPU: accelerate launch -m motionnft train ...",
    )
    train.add_argument("--preset", default="tiny",
                       help="starting configuration: tiny (default, the built-in CPU job), kontext, qwen, "
                            "or a [preset.NAME] of the --config file")
    train.add_argument("--config", type=Path, default=None, help="a TOML file of settings applied after the preset")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    train.add_argument("--output-dir", dest="output_dir", default=None, help="run folder (checkpoints, metrics, LoRA)")
    train.add_argument("--model-path", dest="model_path", default=None, help="local diffusers folder of the base model")
    train.add_argument("--model", default=None, help="model kind (flux_kontext, qwen_image_edit, qwen_image_edit_plus, ...)")
    train.add_argument("--data", default=None, help="dataset folder (metadata.jsonl or MotionEdit parquet/arrow) or 'synthetic'")
    train.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="optimiser steps")
    train.add_argument("--resume", default="auto",
                       help="'auto' (default: continue from OUTPUT_DIR's latest checkpoint), a checkpoint or run folder, or 'none'")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.set_defaults(handler=command_train, output_folders=("output_dir",))


def command_train(args) -> int:
    try:
        from ..training.loop import train
        from ..training.rewards import JudgeFailure
        from ..training.settings import config_to_toml, load_config
    except ImportError as error:
        raise ValueError(f"the trainer needs the train extra: pip install 'motionnft[train]' ({error})") from None

    overrides = list(args.set or [])
    for key in ("output_dir", "model_path", "data", "max_steps", "model"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value!s}" if isinstance(value, int) else f"{key}={str(value)!r}")
    config = load_config(args.preset, args.config, overrides)
    if args.print_config:
        print(config_to_toml(config), end="")
        return 0
    try:
        result = train(config, resume=None if args.resume == "none" else args.resume)
    except JudgeFailure as error:  # the state of the last completed step is saved: running again resumes
        print(f"motionnft train: stopped: {error}", file=sys.stderr)
        return 3
    return 130 if result.interrupted else 0
