"""FlowDiffusion (tiny) vs returning the source vs warping it: does the edit follow the flow?

Training: ``--train-scenes`` synthetic figure pairs (:func:`motionnft.drag.flowdiffusion_data.figure_pairs`,
64², ``--style`` plain by default) whose figure moves articulately (torso, arm or both); the
tiny FlowDiffusion (1.4 M parameters, the weight-free 4-channel ``PooledRGBCodec`` at 32²)
learns to produce the moved frame from the source and the exact flow. Held-out:
``--heldout-scenes`` scenes of another seed (other colours, poses and motions). Every method
gets the source and the true flow:

- ``source``: the image unchanged (follows no flow);
- ``forward warp``: the source splatted along the flow (``flow.splat_forward``), holes filled
  with the source: what moving pixels without any model gives;
- ``FlowDiffusion``: the tiny model (v-prediction by default, ``--prediction-type``), 20 DDIM steps, s_img = s_flow = 1.5 (the paper's defaults);
  also with no guidance (1/1) and with a zero flow (does it use the flow at all?);
- oracles: the true target, and the true target through the codec (the best a model on
  this codec can reach).

Scores: L1 to the true target (all pixels, and the edit region: where the figure was or
lands), and flow alignment (``guidance.alignment.flow_alignment`` with DIS, which does not
guide): the end-point error between the flow source -> result and the true flow, on the moved
pixels and on the static ones (pixels of the 64 px image).

    OMP_NUM_THREADS=1 python bench/flowdiffusion_benchmark.py --threads 1 --write docs/drag.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motionnft.drag.flowdiffusion import parameter_count  # noqa: E402
from motionnft.drag.flowdiffusion_conditioning import PooledRGBCodec  # noqa: E402
from motionnft.drag.flowdiffusion_data import edit_region, figure_pairs  # noqa: E402
from motionnft.drag.flowdiffusion_sampling import flowdiffusion_edit, make_scheduler  # noqa: E402
from motionnft.drag.train_flowdiffusion import (FlowDiffusionTrainConfig, FlowDiffusionTrainer,  # noqa: E402
                                                load_flowdiffusion)
from motionnft.flow import create_estimator, splat_forward  # noqa: E402
from motionnft.guidance.alignment import flow_alignment  # noqa: E402

BEGIN, END = "<!-- flowdiffusion-benchmark:begin -->", "<!-- flowdiffusion-benchmark:end -->"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--heldout-seed", type=int, default=1000)
    parser.add_argument("--train-scenes", type=int, default=3000)
    parser.add_argument("--heldout-scenes", type=int, default=100)
    parser.add_argument("--style", default="plain", help="scene style: plain or textured")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--prediction-type", default="v_prediction", choices=("epsilon", "v_prediction"),
                        help="the tiny model's output (default v_prediction: ε-prediction does not learn at this "
                             "scale, see docs/drag.md)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--out", default="runs/flowdiffusion-benchmark")
    parser.add_argument("--checkpoint", help="evaluate this checkpoint (or run folder) instead of training")
    parser.add_argument("--write", help="Markdown file to put the table into (between the benchmark markers)")
    return parser.parse_args(argv)


def forward_warp(sources: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
    """The source splatted along the flow, with the source where nothing lands."""
    warped, covered = splat_forward(sources, flows)
    return torch.where(covered, warped, sources)


def score(name: str, results: torch.Tensor, pairs, region: torch.Tensor, estimator) -> dict:
    """Mean L1 (all, edit region) in [0, 1] units and DIS EPE (moved, static, all) in pixels."""
    l1 = (results - pairs.targets).abs().mean(1)
    inside = region.float()
    alignment = flow_alignment(pairs.sources, results, pairs.flows, estimator)
    errors = alignment.errors
    return {"method": name, "l1": float(l1.mean()), "l1_region": float((l1 * inside).sum() / inside.sum()),
            "epe_moved": float(errors.moved.nanmean()), "epe_static": float(errors.static.nanmean()),
            "epe_all": float(errors.all.nanmean()), "mas": float(alignment.reward.mas.score.mean())}


def edit_all(model, codec, pairs, flows, steps, s_img, s_flow, seed, batch=25) -> torch.Tensor:
    outputs = []
    for start in range(0, pairs.sources.shape[0], batch):
        part = slice(start, start + batch)
        generator = torch.Generator().manual_seed(seed + start)
        outputs.append(flowdiffusion_edit(model, make_scheduler("ddim"), pairs.sources[part], flows[part], codec=codec,
                                          steps=steps, s_img=s_img, s_flow=s_flow, generator=generator))
    return torch.cat(outputs)


def format_table(rows: list[dict]) -> str:
    lines = ["| method | L1 all | L1 edit region | EPE moved (px) | EPE static (px) | EPE all (px) | MAS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['l1']:.4f} | {row['l1_region']:.4f} | {row['epe_moved']:.3f} | "
                     f"{row['epe_static']:.3f} | {row['epe_all']:.3f} | {row['mas']:.1f} |")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    page = path.read_text() if path.is_file() else "# Drag editing\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in page and END in page:
        page = page[:page.index(BEGIN)] + block + page[page.index(END) + len(END):]
    else:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(page)


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    config = FlowDiffusionTrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                      prediction_type=args.prediction_type, seed=args.seed, save_every=500)
    codec = PooledRGBCodec(config.codec_factor, config.codec_scale)
    if args.checkpoint:
        model, seconds, trained = load_flowdiffusion(args.checkpoint), None, None
    else:
        data = figure_pairs(args.train_scenes, config.size, seed=args.seed, style=args.style)
        trainer = FlowDiffusionTrainer(config, data, Path(args.out) / f"seed-{args.seed}", codec=codec)
        result = trainer.run("auto")
        model, seconds, trained = trainer.model.eval(), result.seconds, result.step
        final = float(result.rows[-1]["loss"]) if result.rows else float("nan")
    heldout = figure_pairs(args.heldout_scenes, config.size, seed=args.heldout_seed, style=args.style)
    pairs = heldout.batch(torch.arange(len(heldout)))
    region = edit_region(pairs.flows, None, config.motion_threshold, 0)
    estimator = create_estimator("dis", "medium")
    started = time.perf_counter()
    steps = args.sample_steps
    rows = [score("source (unchanged)", pairs.sources, pairs, region, estimator),
            score("forward warp of the source", forward_warp(pairs.sources, pairs.flows), pairs, region, estimator)]
    edit_started = time.perf_counter()
    edits = edit_all(model, codec, pairs, pairs.flows, steps, 1.5, 1.5, args.heldout_seed)
    per_edit = (time.perf_counter() - edit_started) / len(heldout)
    name = f"**FlowDiffusion (tiny), {steps} steps, s_img = s_flow = 1.5**"
    rows.append(score(name, edits, pairs, region, estimator))
    rows.append(score("FlowDiffusion (tiny), no guidance (1 / 1)",
                      edit_all(model, codec, pairs, pairs.flows, steps, 1.0, 1.0, args.heldout_seed), pairs, region,
                      estimator))
    rows.append(score("FlowDiffusion (tiny), zero flow", edit_all(model, codec, pairs, torch.zeros_like(pairs.flows),
                                                                  steps, 1.5, 1.5, args.heldout_seed),
                      pairs, region, estimator))
    rows.append(score("oracle: the true target", pairs.targets, pairs, region, estimator))
    rows.append(score("oracle: the true target through the codec", codec.decode(codec.encode(pairs.targets)), pairs,
                      region, estimator))
    evaluation = time.perf_counter() - started
    head = (f"**seed {args.seed}: {trained} steps x {config.batch_size} pairs, {args.train_scenes} {args.style} "
            f"training scenes, AdamW {config.learning_rate}, trained in {seconds / 60:.1f} min on {args.threads} "
            f"thread(s)**, final loss {final:.4f}; " if seconds is not None else f"checkpoint {args.checkpoint}; ")
    text = (head + f"model {parameter_count(model) / 1e6:.2f} M parameters, codec `PooledRGBCodec(2, {config.codec_scale})` (64 px -> 32²); "
            f"{model.prediction_type}; {len(heldout)} held-out scenes (seed {args.heldout_seed}); {per_edit:.2f} s per edit on the CPU; "
            f"evaluation {evaluation:.0f} s.\n\n" + format_table(rows))
    print(text)
    if args.write:
        write_section(Path(args.write), text)
        print(f"written to {args.write}")
    return text


if __name__ == "__main__":
    main()
