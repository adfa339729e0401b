"""Does MotionNFT raise the motion reward? The tiny preset's base, MotionNFT against a control, several seeds.

    python bench/learning_experiment.py [--seeds 0 1 2] [--steps N] [--write docs/learning.md]

For each seed and each arm, one run of ``motionnft train --preset tiny`` (the shipped
pre-trained base, ``tools/pretrain_tiny_base.py``, which performs the instructed motion in
a few of its rollouts, depending on the noise):

- **motionnft**: the trainer as shipped (motion reward only: there is no judge here);
- **control**: the same run (same prompts, rollout noise and steps) with each prompt
  group's rewards randomly permuted before the update, so the reward keeps its values and
  spread but no longer says which rollout moved as asked.

Every run measures its held-out prompts (the seed's own draw of scenes never trained on)
before the first step and after the last, K rollouts each with fixed noise; the two arms
of a seed share prompts and noise, so every comparison is paired per prompt. The
measures: the share of rollouts that performed the instructed motion
(:func:`motionnft.heldout.performed_motion`), MAS and the motion reward.

Runs anywhere (the trainer uses a GPU when there is one); ``--set KEY=VALUE`` for any trainer setting
(e.g. a real model: ``--set model='flux_kontext' --set model_path='/models/kontext'``).
``--write`` replaces the ``learning-experiment`` section of a Markdown file and writes
the curve and the sample sheet beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402
from motionnft.heldout import LABELS, image_grid, mean_and_error  # noqa: E402
from motionnft.image import save_image  # noqa: E402
from motionnft.plot import render_curves  # noqa: E402
from motionnft.train import Trainer, derived_generator, load_config  # noqa: E402

ARMS = ("motionnft", "control")
SHOWN = ("performed", "mas", "reward")
DIGITS = {"performed": 3, "mas": 2, "reward": 3, "reward_continuous": 3}


class ShuffledRewardTrainer(Trainer):
    """The control: each prompt group's rewards randomly permuted before the NFT update.

    Rewards keep their values, spread and group statistics, but no longer say which
    rollout earned them; the logged motion reward / MAS stay the true ones.
    """

    def rewards(self, entry, images, prompt):
        rows = super().rewards(entry, images, prompt)
        order = torch.randperm(rows["raw"].shape[0], generator=derived_generator(self.config.seed, "control", self.step,
                                                                                  prompt, float(rows["raw"].sum())))
        return rows | {"raw": rows["raw"][order]}


TRAINERS = {"motionnft": Trainer, "control": ShuffledRewardTrainer}


def run_arm(arm: str, seed: int, args, work: Path) -> dict:
    """One training run; its held-out scores before/after, its reward curve and its trainer."""
    overrides = {"seed": seed, "output_dir": str(work / f"{arm}-seed{seed}"), "save_every": 0,
                 "sample_grid_every": 0}
    if args.steps:
        overrides["max_steps"] = args.steps
    sets = [f"{key}={json.dumps(value)}" for key, value in overrides.items()] + list(args.set)
    config = load_config(args.preset, overrides=sets)
    trainer = TRAINERS[arm](config, show_progress=not args.quiet)
    began = time.perf_counter()
    result = trainer.run(resume=None)
    return {"config": config, "before": result.heldout_before, "after": result.heldout_after,
            "curve": [(int(row["step"]), float(row["motion_reward_mean"])) for row in result.metrics],
            "seconds": time.perf_counter() - began, "trainer": trainer}


def pooled(runs: list[dict], metric: str, which: str) -> list[float]:
    """Per-prompt means of ``metric`` over every seed's held-out prompts."""
    return [value for run in runs for value in run[which].per_prompt(metric)]


def changes(runs: list[dict], metric: str) -> list[float]:
    """Per-prompt ``after − before`` over every seed's held-out prompts."""
    return [a - b for a, b in zip(pooled(runs, metric, "after"), pooled(runs, metric, "before"))]


def fmt(pair: tuple[float, float], digits: int, sign: bool = False) -> str:
    return f"{pair[0]:{'+' if sign else ''}.{digits}f} ± {pair[1]:.{digits}f}"


def analyse(results: dict[str, list[dict]]) -> dict:
    """Tables: per arm before/after/change (pooled over seeds), per seed, and the paired difference of arms."""
    table = {}
    for arm, runs in results.items():
        table[arm] = {metric: {"before": mean_and_error(pooled(runs, metric, "before")),
                               "after": mean_and_error(pooled(runs, metric, "after")),
                               "change": mean_and_error(changes(runs, metric)),
                               "per_seed": [mean_and_error([a - b for a, b in zip(run["after"].per_prompt(metric),
                                                                                  run["before"].per_prompt(metric))])
                                            for run in runs]}
                      for metric in SHOWN}
    difference = {}
    if {"motionnft", "control"} <= set(results):
        for metric in SHOWN:
            ours, theirs = pooled(results["motionnft"], metric, "after"), pooled(results["control"], metric, "after")
            difference[metric] = mean_and_error([a - b for a, b in zip(ours, theirs)])
    return {"table": table, "difference": difference}


def conclusion(numbers: dict) -> str:
    """A sentence per measure, claiming a difference only beyond three standard errors."""
    lines = []
    for metric in SHOWN:
        if metric not in numbers["difference"]:
            continue
        mean, error = numbers["difference"][metric]
        d = DIGITS[metric]
        if abs(mean) > 3 * error:
            verdict = "higher" if mean > 0 else "lower"
            lines.append(f"- {LABELS[metric]}: after MotionNFT {verdict} than after the control by "
                         f"{mean:+.{d}f} ± {error:.{d}f} ({abs(mean) / max(error, 1e-12):.1f} standard errors).")
        else:
            lines.append(f"- {LABELS[metric]}: no difference beyond the noise ({mean:+.{d}f} ± {error:.{d}f}).")
    return "\n".join(lines)


def sample_sheet(results: dict[str, list[dict]], prompts: int = 4) -> torch.Tensor:
    """Seed 0's first held-out prompts: input, target, K before, then K after each arm (same noise)."""
    first = {arm: runs[0] for arm, runs in results.items()}
    trainer = next(iter(first.values()))["trainer"]
    entries = trainer.heldout_entries()[:prompts]
    rows = []
    for index, (_, entry) in enumerate(entries):
        row = [entry.input_image[0], entry.target_image[0], next(iter(first.values()))["before"].images[index]]
        row += [first[arm]["after"].images[index] for arm in first]
        rows.append(row)
    return image_grid(rows)


def markdown(numbers: dict, results: dict[str, list[dict]], command: str, total_s: float) -> str:
    config = next(iter(results.values()))[0]["config"]
    seeds = len(next(iter(results.values())))
    prompts, rollouts = next(iter(results.values()))[0]["before"].scores["mas"].shape
    minutes = {arm: sum(r["seconds"] for r in runs) / len(runs) / 60 for arm, runs in results.items()}
    rows = []
    for arm, table in numbers["table"].items():
        cells = []
        for metric in SHOWN:
            d = DIGITS[metric]
            cells += [fmt(table[metric]["before"], d), fmt(table[metric]["after"], d),
                      fmt(table[metric]["change"], d, sign=True)]
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    per_seed = []
    for arm, table in numbers["table"].items():
        for seed_index, (perf, mas) in enumerate(zip(table["performed"]["per_seed"], table["mas"]["per_seed"])):
            per_seed.append(f"| {arm} | {seed_index} | {fmt(perf, 3, True)} | {fmt(mas, 2, True)} |")
    difference = [f"| {LABELS[m]} | {fmt(numbers['difference'][m], DIGITS[m], True)} |" for m in numbers["difference"]]
    header = " | ".join(f"{LABELS[m]} {w}" for m in SHOWN for w in ("before", "after", "change"))
    return "\n".join([
        "<!-- learning-experiment:start -->",
        "## CPU-scale run: the tiny preset, MotionNFT against a shuffled-reward control",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {total_s / 60:.1f} min in "
        f"all ({', '.join(f'{arm} {m:.1f} min per run' for arm, m in minutes.items())}). Each run: `motionnft train "
        f"--preset tiny` with its seed: the shipped pre-trained base (1.85 M parameters, 64² images), "
        f"{config.max_steps} optimiser steps of {config.prompts_per_epoch} prompts × {config.rollouts_per_prompt} "
        f"rollouts, LoRA r={config.lora_rank}, lr {config.learning_rate:g}, motion reward only (flow: "
        f"{config.flow_backend} {config.flow_preset or 'default'}). {seeds} seeds × {len(results)} arms; each seed "
        f"draws its own training and held-out scenes. Held-out: {prompts} prompts per seed × {rollouts} rollouts, "
        f"the same noise before and after and for both arms; ± is the standard error over the "
        f"{seeds * prompts} held-out prompts of all seeds (changes and differences paired per prompt).",
        "",
        f"| arm | {header} |",
        "|---|" + "---:|" * (3 * len(SHOWN)),
        *rows,
        "",
        "Paired difference, MotionNFT after − control after (same prompts and noise):",
        "",
        "| measure | difference |",
        "|---|---:|",
        *difference,
        "",
        conclusion(numbers),
        "",
        "Change of each seed (its own held-out prompts):",
        "",
        "| arm | seed | performed change | MAS change |",
        "|---|---:|---:|---:|",
        *per_seed,
        "",
        "![motion reward of the training rollouts, mean over seeds](images/learning_curve.png)",
        "",
        "Seed 0, first held-out prompts. Columns: input, ground truth, "
        f"{rollouts} rollouts before, {rollouts} after " + ", then ".join(f"{arm}" for arm in results)
        + " (the same noise in each group of four).",
        "",
        "![held-out samples](images/learning_samples.png)",
        "<!-- learning-experiment:end -->",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="trainer preset of every run (tiny, kontext, qwen, ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps per run (0: the preset's)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE trainer setting for every run")
    parser.add_argument("--work", type=Path, default=Path("learning-experiment-runs"))
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to update (e.g. docs/learning.md)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            results[arm].append(run_arm(arm, seed, args, args.work))
    total = time.perf_counter() - began
    numbers = analyse(results)
    command = "python bench/learning_experiment.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = markdown(numbers, results, command.strip(), total)
    print(section)
    summary = {arm: {m: {k: v for k, v in t.items()} for m, t in table.items()} for arm, table in numbers["table"].items()}
    (args.work / "summary.json").write_text(json.dumps({"table": summary, "difference": numbers["difference"]}, indent=1))
    if args.write:
        images = args.write.parent / "images"
        images.mkdir(parents=True, exist_ok=True)
        curves = {}
        for arm, runs in results.items():
            steps = sorted({step for run in runs for step, _ in run["curve"]})
            curves[arm] = [(step, sum(dict(run["curve"]).get(step, 0.0) for run in runs) / len(runs)) for step in steps]
        save_image(render_curves(curves, title="training rollouts: motion reward (mean over seeds)",
                                 x_label="optimiser step"), images / "learning_curve.png")
        save_image(sample_sheet(results), images / "learning_samples.png")
        write_section(args.write, "learning-experiment", section, "Does MotionNFT learn?")
        print(f"wrote {args.write}, {images / 'learning_curve.png'}, {images / 'learning_samples.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
