"""TPSMM (tiny) trained on one video vs the static source: held-out video reconstruction L1.

The video (default ``/work/shared/data/video/talking_head.mp4``) is read streamed, centre
cropped and resized to ``--size``² (64). The last ``--holdout`` (20 %) of its frames are never
trained on. Training: :mod:`motionnft.animation.train` with TPSMM's losses and weights, the
perceptual loss replaced by the weight-free ``l1_pyramid`` stand-in unless ``--vgg19 PATH``
is given. Evaluation, the video-reconstruction protocol: the first held-out frame is the
source, each later held-out frame drives (standard mode, background predictor on), and the
output is compared with it (mean absolute error, [0, 1] pixels). Baselines: the static
source ("nothing moves": L1 between the source and each driving frame) and the untrained
model (same seed, step 0).

    OMP_NUM_THREADS=1 python bench/animation_benchmark.py --threads 1 --write docs/animation.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.docs_section import write_section  # noqa: E402
from motionnft.animation.paper_model import build_model  # noqa: E402
from motionnft.animation.train import (AnimationTrainConfig, AnimationTrainer, VideoFrames, load_model,  # noqa: E402
                                       reconstruction_l1)

NAME = "animation-benchmark"
VIDEO = "/work/shared/data/video/talking_head.mp4"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--video", default=VIDEO)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--vgg19", help="torchvision vgg19-dcbb9e9d.pth: use the VGG-19 perceptual loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper", action="store_true",
                        help="train the paper model (motion optimisation + decoupling) instead of TPSMM")
    parser.add_argument("--out", default="runs/animation-benchmark", help="run folder (resumed if present)")
    parser.add_argument("--write", help="Markdown file to put the results into (between the benchmark markers)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = AnimationTrainConfig(model="tiny", size=args.size, steps=args.steps, batch_size=args.batch_size,
                                  learning_rate=args.learning_rate, holdout=args.holdout, seed=args.seed,
                                  perceptual="vgg19" if args.vgg19 else "l1_pyramid", vgg19=args.vgg19 or "",
                                  save_every=max(args.steps // 4, 1), log_every=max(args.steps // 20, 1),
                                  motion_optimization=args.paper, decoupling=args.paper)
    data = VideoFrames.read(args.video, args.size, args.holdout)
    held_out = data.held_out(0)
    torch.manual_seed(args.seed)
    untrained = reconstruction_l1(build_model(config.model_config()), held_out)
    result = AnimationTrainer(config, data, args.out).run("auto")
    trained = reconstruction_l1(load_model(args.out), held_out)
    frames = len(data.videos[0])
    lines = [
        f"<!-- {NAME}:start -->",
        f"Held-out video reconstruction on `{Path(args.video).name}` ({frames} frames, {args.size}² centre crop; "
        f"trained on the first {data.train_counts[0]}, evaluated on the last {frames - data.train_counts[0]}: "
        f"the first of them is the source, the {trained['frames']} later ones drive). Tiny "
        f"{'paper model' if args.paper else 'TPSMM'}, "
        f"{result.step} steps of batch {args.batch_size}, perceptual loss `{config.perceptual}`"
        f"{' (stand-in, not VGG)' if config.perceptual == 'l1_pyramid' else ''}, {args.threads} thread(s); "
        f"training time {result.seconds / 60:.1f} min (this session's run; steps done before a resume not counted).",
        "",
        "| method | held-out L1 ↓ |",
        "|---|---|",
        f"| static source (nothing moves) | {trained['static']:.4f} |",
        f"| untrained model (step 0) | {untrained['model']:.4f} |",
        f"| trained model (step {result.step}) | {trained['model']:.4f} |",
        "",
        f"Trained model {'beats' if trained['model'] < trained['static'] else 'does NOT beat'} the static source "
        f"({trained['model'] / trained['static']:.2f}× its L1).",
        f"<!-- {NAME}:end -->",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(Path(args.write), NAME, text, "Image animation")
    return {"static": trained["static"], "untrained": untrained["model"], "trained": trained["model"],
            "steps": result.step, "seconds": result.seconds}


if __name__ == "__main__":
    main()
