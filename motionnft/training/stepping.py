"""The step loop of the small trainers (FlowGen, FlowDiffusion, TPSMM): resume, steps, logs, checkpoints.

A trainer that uses it has ``out`` (its run folder), ``config`` (with ``steps``, ``log_every``
and ``save_every``), ``step``, ``checkpoints`` (:class:`~.checkpoints.Checkpoints`),
``show_progress``, ``train_step() -> dict`` of losses, ``load_checkpoint(path)`` and
``save_checkpoint(interrupted=False)``. :func:`run_steps` is then its whole ``run``: Ctrl-C stops
after the step in progress (each step is atomic, see ``interrupt.DeferInterrupt``) and the state
is saved, so a rerun resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import write_run_config
from .metrics import MetricsLog
from .progress import progress_bar


@dataclass
class StepRunResult:
    """What a run of :func:`run_steps` did: the last step, whether Ctrl-C stopped it, the logged
    rows (step-averaged losses) and the wall time in seconds."""

    out: Path
    step: int
    interrupted: bool
    rows: list[dict]
    seconds: float


def run_steps(trainer, name: str, shown: tuple[str, ...], resume: str | os.PathLike | None = "auto") -> StepRunResult:
    """Train ``trainer`` to ``trainer.config.steps`` (see the module docstring).

    Args:
        trainer: the trainer.
        name: its name in the progress bar and the final line.
        shown: the losses shown on the progress bar.
        resume: a checkpoint or run folder; ``"auto"``: this run's latest; None: start over.
    """
    config = trainer.config
    checkpoint = trainer.checkpoints.find(resume)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
    write_run_config(trainer.out, json.dumps(dataclasses.asdict(config), indent=1), "config.json")
    log = MetricsLog(trainer.out, trainer.step, True)
    bar = progress_bar(config.steps, name, trainer.show_progress, leave=True, unit="step", initial=trainer.step)
    started, interrupted, sums = time.perf_counter(), False, {}
    try:
        while trainer.step < config.steps:
            losses = trainer.train_step()
            sums = {k: sums.get(k, 0.0) + v for k, v in losses.items()}
            bar.update(1)
            bar.set_postfix({key: f"{losses[key]:.4f}" for key in shown if key in losses})
            if trainer.step % config.log_every == 0 or trainer.step == config.steps:
                count = trainer.step % config.log_every or config.log_every
                log.add({"step": trainer.step, **{k: v / count for k, v in sums.items()}})
                sums = {}
            if config.save_every and trainer.step % config.save_every == 0:  # 0: only the final save
                trainer.save_checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: saving the state after step {trainer.step} ...", file=sys.stderr)
    finally:
        bar.close()
    saved = trainer.save_checkpoint(interrupted=interrupted)
    log.close()
    seconds = time.perf_counter() - started
    if trainer.show_progress:
        print(f"{name}: {'stopped' if interrupted else 'done'} at step {trainer.step} in {seconds:.0f} s; "
              f"checkpoint {saved}", file=sys.stderr)
    return StepRunResult(Path(trainer.out), trainer.step, interrupted, log.rows, seconds)


_FLAG_TYPES = {"int": int, "float": float, "str": str}  # annotations are strings (from __future__ import annotations)


def add_setting_flags(parser, settings_class, dest_prefix: str = "") -> None:
    """One ``--name`` flag per int / float / str field of the dataclass ``settings_class``,
    defaulting to the field's default (tuple and other fields keep their defaults)."""
    import dataclasses

    for field in dataclasses.fields(settings_class):
        if field.type in _FLAG_TYPES:
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=dest_prefix + field.name,
                                type=_FLAG_TYPES[field.type], default=field.default,
                                help=f"(default {field.default})")


def settings_from_flags(settings_class, args, dest_prefix: str = "", **given):
    """The ``settings_class`` the flags of :func:`add_setting_flags` describe, with ``given`` on top."""
    import dataclasses

    values = {f.name: getattr(args, dest_prefix + f.name) for f in dataclasses.fields(settings_class)
              if hasattr(args, dest_prefix + f.name)}
    return settings_class(**{**values, **given})
