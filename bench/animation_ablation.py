"""The feature-decoupling paper's ablation at CPU scale: TPSMM, the full model, and the full
model without each part, trained the same way on one video; held-out reconstruction L1.

Every variant: the tiny configuration (:meth:`motionnft.animation.paper_model.AnimationModelConfig.preset`
``"tiny"``), the same seed, steps, batch, data and losses (TPSMM's, the perceptual loss being
the weight-free ``l1_pyramid`` stand-in; the decoupling loss where the decoupling part is on;
``--adversarial`` adds a row with the PatchGAN on). Frames: ``talking_head.mp4`` centre-cropped
to ``--size``², the last ``--holdout`` never trained on. Evaluation: the video-reconstruction
protocol on the held-out frames (the first is the source, each later one drives, standard
mode, background on), mean absolute error in [0, 1] pixels, beside the static source.
One training job at a time; run folders are resumed, so an interrupted ablation continues.

    OMP_NUM_THREADS=1 nice -n 19 python bench/animation_ablation.py --threads 1 --steps 500 --adversarial \
        --write docs/animation.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.docs_section import write_section  # noqa: E402
from motionnft.animation.train import (ADVERSARIAL_WEIGHT, FEATURE_MATCHING_WEIGHT, AnimationTrainConfig,  # noqa: E402
                                       AnimationTrainer, VideoFrames, load_model, reconstruction_l1)

NAME = "animation-ablation"
VIDEO = "/work/shared/data/video/talking_head.mp4"
VARIANTS = {
    "TPSMM": dict(motion_optimization=False, decoupling=False),
    "paper model (full)": dict(),
    "w/o decoupling": dict(decoupling=False),
    "w/o motion optimisation": dict(motion_optimization=False),
}
ADVERSARIAL = {"paper model (full) + adversarial": dict(adversarial_weight=ADVERSARIAL_WEIGHT,
                                                       feature_matching_weight=FEATURE_MATCHING_WEIGHT)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--video", default=VIDEO)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adversarial", action="store_true", help="also train the full model with the PatchGAN")
    parser.add_argument("--out", default="runs/animation-ablation", help="parent of the variants' run folders")
    parser.add_argument("--write", help="Markdown file to put the table into (between the ablation markers)")
    return parser.parse_args(argv)


def run_variant(name: str, switches: dict, args, data: VideoFrames) -> dict:
    config = AnimationTrainConfig(model="tiny", size=args.size, steps=args.steps, batch_size=args.batch_size,
                                  holdout=args.holdout, seed=args.seed, perceptual="l1_pyramid",
                                  save_every=max(args.steps // 4, 1), log_every=max(args.steps // 10, 1), **switches)
    folder = Path(args.out) / name.replace(" ", "_").replace("/", "").replace("(", "").replace(")", "")
    timing = folder / "seconds.json"
    result = AnimationTrainer(config, data, folder, show_progress=False).run("auto")
    # A resumed variant adds its new seconds to those of the earlier sessions.
    seconds = result.seconds + (json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0)
    timing.write_text(json.dumps({"seconds": seconds}))
    model = load_model(folder)
    scores = reconstruction_l1(model, data.held_out(0))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{name}: held-out L1 {scores['model']:.4f} (static {scores['static']:.4f}), {seconds / 60:.1f} min, "
          f"{parameters} parameters", file=sys.stderr, flush=True)
    return {"name": name, "l1": scores["model"], "static": scores["static"], "frames": scores["frames"],
            "seconds": seconds, "parameters": parameters}


def table(rows: list[dict], args, data: VideoFrames) -> str:
    base = rows[0]
    frames = len(data.videos[0])
    lines = [
        f"<!-- {NAME}:start -->",
        f"`{Path(args.video).name}` ({frames} frames, {args.size}² centre crop; trained on the first "
        f"{data.train_counts[0]}, evaluated on the last {frames - data.train_counts[0]}: the first of them is the "
        f"source, the {base['frames']} later ones drive). Tiny configuration, {args.steps} steps of batch "
        f"{args.batch_size}, seed {args.seed}, perceptual loss `l1_pyramid` (stand-in, not VGG), "
        f"{args.threads} thread(s), one job at a time. Static source (nothing moves): L1 {base['static']:.4f}.",
        "",
        "| variant | parameters | held-out L1 ↓ | vs TPSMM | vs static source | training time | time vs TPSMM |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['name']} | {row['parameters']:,} | {row['l1']:.4f} | {row['l1'] / base['l1']:.3f}× | "
                     f"{row['l1'] / row['static']:.2f}× | {row['seconds'] / 60:.1f} min | "
                     f"{row['seconds'] / base['seconds']:.2f}× |")
    lines += ["", f"Command: `OMP_NUM_THREADS=1 nice -n 19 python bench/animation_ablation.py --threads "
              f"{args.threads} --steps {args.steps}{' --adversarial' if args.adversarial else ''} "
              f"--write docs/animation.md`", f"<!-- {NAME}:end -->"]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = VideoFrames.read(args.video, args.size, args.holdout)
    variants = {**VARIANTS, **(ADVERSARIAL if args.adversarial else {})}
    rows = [run_variant(name, switches, args, data) for name, switches in variants.items()]
    text = table(rows, args, data)
    print(text)
    if args.write:
        write_section(Path(args.write), NAME, text, "Image animation")
    return rows


if __name__ == "__main__":
    main()
