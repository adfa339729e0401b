"""Scene fine-tuning of FlowGen (``train-drag --init``): does a few steps on one scene help there?

InstantDrag's general-scene setting fine-tunes its networks on a short video of the scene.
The stand-in here, at CPU scale:

1. **Pre-train** the tiny FlowGen on ``--pretrain-scenes`` synthetic figure scenes (seed 0,
   each its own background and textures) for ``--pretrain-steps``.
2. **The user's clip**: one new scene (``--scene``, never in the pre-training set, textured) with
   ``--clip-pairs`` random articulated motions of the figure: what ``motionnft mine`` gives from a
   clip of one scene (one background, many motions).
3. **Fine-tune** from the pre-trained weights for ``--steps`` on the clip: every weight
   (``--init``), and a LoRA of rank 8 on the Conv2d layers (``--init --lora-rank 8``); and for
   comparison train from scratch on the clip for the same steps.
4. **Held-out**: ``--heldout-pairs`` other motions of the same scene (another motion seed), drags
   drawn in the moving region as in ``bench/flowgen_benchmark.py``; end-point error in pixels.

    OMP_NUM_THREADS=1 nice -n 19 python bench/drag_finetune.py --write docs/drag.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.docs_section import write_section  # noqa: E402
from motionnft.drag.evaluation import evaluate_methods, flowgen_flow, spline_flow  # noqa: E402
from motionnft.drag.finetune import InitRecord, state_signature  # noqa: E402
from motionnft.drag.flow_data import FlowScenes, figure_scenes, random_motion  # noqa: E402
from motionnft.drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer  # noqa: E402
from motionnft.synthetic import render_scene, scene_flow  # noqa: E402
from motionnft.training.seeding import derived_generator  # noqa: E402

NAME = "drag-finetune"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pretrain-scenes", type=int, default=1000)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--scenes", type=int, nargs="+", default=[777_001, 777_002],
                        help="the clips' scene numbers (background, textures), one table each")
    parser.add_argument("--clip-pairs", type=int, default=48)
    parser.add_argument("--heldout-pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning / from-scratch steps on the clip")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, every run (as the FlowGen benchmark)")
    parser.add_argument("--write", help="Markdown file for the table (between the drag-finetune markers)")
    return parser.parse_args(argv)


def one_scene(count: int, scene: int, motion_seed: int, size: int = 64) -> FlowScenes:
    """``count`` random motions of the figure in one scene (a clip's pairs), exact flows."""
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    flows = torch.empty(count, 2, size, size)
    kinds = []
    for index in range(count):
        start, end, kind = random_motion(derived_generator(motion_seed, "figure-motion", index))
        images[index] = (render_scene(start, (size, size), scene, "textured") * 255).round().to(torch.uint8)
        flows[index] = scene_flow(start, end, (size, size))
        kinds.append(kind)
    return FlowScenes(images, flows, tuple(kinds))


def train(config: FlowGenTrainConfig, data, out: Path, start=None):
    init = InitRecord("pretrained", state_signature(start.state_dict())) if start is not None else None
    trainer = FlowGenTrainer(config, data, out, show_progress=False,
                             generator=copy.deepcopy(start) if start is not None else None, init=init)
    seconds = trainer.run(None).seconds
    return trainer.generator.eval(), seconds


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    settings = dict(batch_size=args.batch_size, learning_rate=args.learning_rate, adversarial_weight=0.1, seed=0,
                    log_every=50)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        pretrained, pre_seconds = train(FlowGenTrainConfig(steps=args.pretrain_steps, save_every=0, **settings),
                                        figure_scenes(args.pretrain_scenes, 64, seed=0), folder / "pretrain")
        tables = [scene_table(args, scene, pretrained, settings, folder / str(scene)) for scene in args.scenes]
    text = (f"Pre-trained {args.pretrain_steps} steps x {args.batch_size} pairs on {args.pretrain_scenes} "
            f"figure scenes ({pre_seconds:.0f} s). Each clip: {args.clip_pairs} motions of one scene never seen in pre-training; "
            f"held-out: {args.heldout_pairs} other motions of that scene, 1-5 drags each (all counts pooled; pixels "
            f"at 64²). Adam {args.learning_rate:g}, adversarial weight 0.1, {args.steps} steps x {args.batch_size} "
            f"pairs on the clip for every run, {args.threads} thread(s); whole script "
            f"{(time.perf_counter() - started) / 60:.1f} min.\n\n" + "\n\n".join(tables))
    print(text)
    if args.write:
        write_section(Path(args.write), NAME, f"<!-- {NAME}:start -->\n{text}\n<!-- {NAME}:end -->")
        print(f"written to {args.write}")
    return text


def scene_table(args, scene: int, pretrained, settings: dict, folder: Path) -> str:
    """Fine-tune (full, LoRA 8) and train from scratch on one scene's clip; its EPE table."""
    clip = one_scene(args.clip_pairs, scene, motion_seed=1)
    heldout = one_scene(args.heldout_pairs, scene, motion_seed=2)
    images, flows = heldout.images.float() / 255, heldout.flows
    runs, seconds = {}, {}
    for name, start, rank in (("scratch on the clip", None, 0), ("fine-tuned, full", pretrained, 0),
                              ("fine-tuned, LoRA rank 8", pretrained, 8)):
        config = FlowGenTrainConfig(steps=args.steps, save_every=0, lora_rank=rank, **settings)
        runs[name], seconds[name] = train(config, clip, folder / name.replace(" ", "-"), start)
    methods = {"spline": spline_flow, "pre-trained, not fine-tuned": flowgen_flow(pretrained),
               **{name: flowgen_flow(generator) for name, generator in runs.items()}}
    results = evaluate_methods(images, flows, methods, seed=2)
    lora = sum(p.numel() for n, p in runs["fine-tuned, LoRA rank 8"].named_parameters() if "lora_" in n)
    trained = {"scratch on the clip": "all", "fine-tuned, full": "all", "fine-tuned, LoRA rank 8": f"{lora:,}"}
    lines = [f"**Scene {scene}** (training: " + ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
             + ")", "", "| FlowGen | steps on the clip | trained parameters | EPE overall | EPE moving | EPE static |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, by_count in results.items():
        total = None
        for sums in by_count.values():
            total = sums if total is None else total + sums
        steps = {"spline": "-", "pre-trained, not fine-tuned": "0"}.get(name, str(args.steps))
        lines.append(f"| {name} | {steps} | {trained.get(name, '-')} | "
                     + " | ".join(f"{total.mean(region):.3f}" for region in ("overall", "moving", "static")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
