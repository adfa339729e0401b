"""FlowGen (tiny) vs the thin-plate spline vs zero flow: dense flow from 1-5 drags, on held-out scenes.

Training data: ``--train-scenes`` synthetic figure scenes (:func:`motionnft.drag.flow_data.figure_scenes`,
64², textured background and parts) whose figure moves articulately (torso only, arm only,
or both) with its exact flow. Held-out: ``--heldout-scenes`` scenes of another seed (other
backgrounds, textures, poses and motions). For each drag count 1..5 the same drags (drawn
uniformly in the moving region, flow at the point = the drag) go to every method:

- ``zero``: no motion at all (the floor any method must beat in the static region);
- ``spline``: the Drag to Flow node (thin-plate spline, 8 pinned points per border);
- ``spline + true mask``: the spline multiplied by the ground-truth moving region (an
  oracle: the user drew a perfect mask);
- ``FlowGen``: the trained tiny generator, which sees the image.

Prints the end-point-error table (pixels; overall, moving region, static region) and the
training time; ``--write docs/drag.md`` puts it into that page between markers.

    OMP_NUM_THREADS=1 python bench/flowgen_benchmark.py --threads 1 --write docs/drag.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from motionnft.drag.evaluation import evaluate_methods, flowgen_flow, format_table, spline_flow, zero_flow  # noqa: E402
from motionnft.drag.flow_data import figure_scenes  # noqa: E402
from motionnft.drag.flowgen import parameter_count  # noqa: E402
from motionnft.drag.pseudo_drags import moving_mask  # noqa: E402
from motionnft.drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer, load_generator  # noqa: E402

BEGIN, END = "<!-- flowgen-benchmark:begin -->", "<!-- flowgen-benchmark:end -->"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one run each (default 0)")
    parser.add_argument("--heldout-seed", type=int, default=1000, help="seed of the held-out scenes and their drags")
    parser.add_argument("--train-scenes", type=int, default=3000)
    parser.add_argument("--heldout-scenes", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--adversarial-weight", type=float, default=0.1,
                        help="GAN weight beside 100 x L1 (pix2pix: 1; at 1 the tiny model's L1 stalled, see docs/drag.md)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam, both networks (pix2pix: 2e-4)")
    parser.add_argument("--out", default="runs/flowgen-benchmark", help="run folders: OUT/seed-N")
    parser.add_argument("--checkpoint", help="evaluate this checkpoint (or run folder) instead of training")
    parser.add_argument("--write", help="Markdown file to put the table into (between the benchmark markers)")
    return parser.parse_args(argv)


def train(args, seed: int):
    data = figure_scenes(args.train_scenes, 64, seed=seed)
    config = FlowGenTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=seed,
                                adversarial_weight=args.adversarial_weight, learning_rate=args.learning_rate,
                                save_every=500)
    trainer = FlowGenTrainer(config, data, Path(args.out) / f"seed-{seed}")
    result = trainer.run("auto")
    return trainer.generator, result.seconds, config


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
    heldout = figure_scenes(args.heldout_scenes, 64, seed=args.heldout_seed)
    images, flows = heldout.images.float() / 255, heldout.flows
    sections = []
    for seed in ([None] if args.checkpoint else args.seeds):
        if args.checkpoint:
            generator, seconds, config = load_generator(args.checkpoint), float("nan"), None
        else:
            generator, seconds, config = train(args, seed)
        methods = {
            "zero": zero_flow,
            "spline": spline_flow,
            "spline + true mask": lambda i, d: spline_flow(i, d, masks=moving_mask(flows[d.source])),
            "FlowGen (tiny)": flowgen_flow(generator),
        }
        started = time.perf_counter()
        results = evaluate_methods(images, flows, methods, seed=args.heldout_seed)
        evaluated = time.perf_counter() - started
        how = (f"checkpoint {args.checkpoint}" if config is None else
               f"seed {seed}: {config.steps} steps x {config.batch_size} pairs x {config.maps_per_target} drag maps, "
               f"{args.train_scenes} training scenes, adversarial weight {config.adversarial_weight:g}, learning rate "
               f"{config.learning_rate:g}, "
               f"trained in {seconds / 60:.1f} min on {args.threads} thread(s)")
        sections.append(f"**{how}**; generator {parameter_count(generator) / 1e6:.2f} M parameters; "
                        f"{args.heldout_scenes} held-out scenes (seed {args.heldout_seed}); evaluation "
                        f"{evaluated:.0f} s.\n\n{format_table(results)}")
    text = "\n\n".join(sections)
    print(text)
    if args.write:
        write_section(Path(args.write), text)
        print(f"written to {args.write}")
    return text


if __name__ == "__main__":
    main()
