"""Animation speed at 256²: frames per second of TPSMM and of the feature-decoupling paper's model
(full, and without each part), measured in one run on the same device.

Per frame, what :func:`motionnft.animation.animate` does: keypoints of the driving frame, the
dense motion (refined by the motion optimiser when it is on), the generator (with motion
attention when decoupling is on); the source's keypoints are computed once. The official
``vox`` sizes (without the AVD network) and the paper
parts' default sizes (Swin: width 64, depth 2 per window size 8 and 4, 64 x 64 tokens;
bases 20 + 20 of 512-d); random weights (speed does not depend on them). Batch 1, no
gradients, float32; ``--warmup`` frames are not timed; the models are timed in interleaved
rounds and each one's fastest round counts.

    OMP_NUM_THREADS=1 python bench/animation_speed.py --threads 1 --frames 2 --rounds 3 --write docs/animation.md
    python bench/animation_speed.py --device cuda --frames 200      # on a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.docs_section import write_section  # noqa: E402
from motionnft.animation.paper_model import AnimationModelConfig, build_model  # noqa: E402

NAME = "animation-speed"
VARIANTS = {"TPSMM": (False, False), "paper model (full)": (True, True), "w/o decoupling": (True, False),
            "w/o motion optimisation": (False, True)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=2, help="timed frames per model and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds over all models, interleaved; each model's fastest round counts")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--write", help="Markdown file to put the table into (between the speed markers)")
    return parser.parse_args(argv)


def frames_per_second(model, source: torch.Tensor, driving: torch.Tensor, frames: int, warmup: int) -> float:
    """Frames per second of the per-frame work of ``animate`` in standard mode."""
    synchronize = torch.cuda.synchronize if source.is_cuda else (lambda: None)
    with torch.no_grad():
        kp_source = model.kp_detector(source)
        for index in range(warmup + frames):
            if index == warmup:
                synchronize()
                started = time.perf_counter()
            model(source, kp_source, model.kp_detector(driving[index % len(driving)][None]))
        synchronize()
    return frames / (time.perf_counter() - started)


def flops_per_frame(model, source: torch.Tensor, driving: torch.Tensor) -> int:
    """Floating-point operations of one frame's work (convolutions, matmuls, attention: what
    ``torch.utils.flop_counter`` counts; grid sampling is not), independent of machine load."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        kp_source = model.kp_detector(source)
        with FlopCounterMode(display=False) as counter:
            model(source, kp_source, model.kp_detector(driving[:1]))
    return counter.get_total_flops()


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(1, 3, args.size, args.size, generator=generator).to(device)
    driving = torch.rand(4, 3, args.size, args.size, generator=generator).to(device)
    models = {}
    for name, switches in VARIANTS.items():
        torch.manual_seed(0)
        models[name] = build_model(AnimationModelConfig.preset("vox", *switches)).to(device).eval()
    best = {name: 0.0 for name in models}
    # Interleaved rounds: a slow spell of a shared machine hits every model, not one.
    for _ in range(args.rounds):
        for name, model in models.items():
            best[name] = max(best[name], frames_per_second(model, source, driving, args.frames, args.warmup))
    rows = {name: (best[name], sum(p.numel() for p in model.parameters()), flops_per_frame(model, source, driving))
            for name, model in models.items()}
    for name, (fps, parameters, flops) in rows.items():
        print(f"{name}: {fps:.3f} fps, {parameters:,} parameters, {flops / 1e9:.2f} GFLOP", file=sys.stderr, flush=True)
    base, base_flops = rows["TPSMM"][0], rows["TPSMM"][2]
    where = f"{args.device}, {args.threads} thread(s)" if device.type == "cpu" else args.device
    lines = [f"<!-- {NAME}:start -->",
             f"{args.size}², batch 1, float32, no gradients; {args.rounds} interleaved rounds of {args.frames} "
             f"timed frames (after {args.warmup} warm-up) per model, the fastest round counted; `vox` sizes with the paper parts' default sizes; {where}; one run.", "",
             "| model | parameters | GFLOP / frame | FLOPs vs TPSMM | frames / s | time per frame vs TPSMM |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {parameters:,} | {flops / 1e9:.2f} | {flops / base_flops:.3f}× | {fps:.3f} | {base / fps:.2f}× |"
              for name, (fps, parameters, flops) in rows.items()]
    if device.type == "cpu":
        target = ("GPU (target ≥ 25 fps at 256²): not yet measured (no device lent to this task); run "
                  "`python bench/animation_speed.py --device cuda --frames 200 --write docs/animation.md`.")
        command = f"OMP_NUM_THREADS=1 python bench/animation_speed.py --threads {args.threads} "
    else:
        slowest = min(fps for fps, _, _ in rows.values())
        target = f"Target ≥ 25 fps at 256²: {'met' if slowest >= 25 else 'not met'} (slowest model {slowest:.1f} fps)."
        command = f"python bench/animation_speed.py --device {args.device} "
    lines += ["", target, f"Command: `{command}--frames {args.frames} --rounds {args.rounds} --write docs/animation.md`",
              f"<!-- {NAME}:end -->"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(Path(args.write), NAME, text, "Image animation")
    return rows


if __name__ == "__main__":
    main()
