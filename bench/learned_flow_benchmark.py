"""Speed of the learned flow backends, in ms per image pair, against torchvision's RAFT.

    python bench/learned_flow_benchmark.py [--device cuda] [--sizes 512 1024] [--batches 1 8]
        [--raft-iterations 12] [--precisions fp32 bf16] [--repeats 5] [--write docs/benchmarks.md]

For every size (square images), batch and precision it times, after one warm-up, the
median of ``--repeats`` calls of

- this project's ``raft_large`` and ``raft_small`` estimators (padding, [0, 1] -> [-1, 1],
  ``--raft-iterations`` updates, final flow only) and torchvision's ``raft_large`` /
  ``raft_small`` (the same number of updates on the same images) when torchvision imports —
  the ratio column is ours / torchvision's, measured in the same run;
- this project's ``unimatch`` estimator with MotionEdit's settings (2 scales, 6 refinements),
  and the official UniMatch code when ``--unimatch-repo`` names a clone (ratio against it;
  else against torchvision's RAFT large).

The measured calls take turns (ours, baseline, ours, ...), so a change in the machine's
load affects both sides of a ratio alike. Speed does not depend on the weights' values: the networks are randomly initialised, so no
weight file is needed. ``--write`` replaces the benchmark's section of a Markdown file.
Run it with a Python that has torchvision (e.g. a ComfyUI venv) to get the baseline. CPU
and GPU runs write separate sections.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402
from motionnft.flow.raft import RAFT, RAFT_CONFIGS, RAFTFlow  # noqa: E402
from motionnft.flow.unimatch import GMFlow, GMFlowConfig, GMFlowSettings, UniMatchFlow  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

MOTIONEDIT_CONFIG = GMFlowConfig(num_scales=2, upsample_factor=4, reg_refine=True)
MOTIONEDIT_SETTINGS = GMFlowSettings.official(MOTIONEDIT_CONFIG, 6)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(calls: list, device: torch.device, repeats: int, clock=time.perf_counter) -> list[float]:
    """Median seconds of each call, after one warm-up each; the calls take turns, so a change
    in the machine's load hits them alike."""
    with torch.no_grad():
        for call in calls:
            call()
        synchronize(device)
        times = [[] for _ in calls]
        for _ in range(repeats):
            for index, call in enumerate(calls):
                start = clock()
                call()
                synchronize(device)
                times[index].append(clock() - start)
    return [statistics.median(t) for t in times]


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def torchvision_models():
    try:
        from torchvision.models.optical_flow import raft_large, raft_small
    except Exception:  # not installed, or built for another torch
        return None
    return {"large": raft_large, "small": raft_small}


def official_unimatch(repo: Path | None):
    if repo is None:
        return None
    sys.path.insert(0, str(repo))
    from unimatch.unimatch import UniMatch

    return UniMatch(num_scales=2, feature_channels=128, upsample_factor=4, num_head=1, ffn_dim_expansion=4,
                    num_transformer_layers=6, reg_refine=True, task="flow")


def measure(args) -> list[dict]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    torchvision = torchvision_models()
    unimatch_reference = official_unimatch(args.unimatch_repo)
    if unimatch_reference is not None:
        unimatch_reference = unimatch_reference.eval().to(device)
    rows = []
    cases = args.cases or [(size, batch) for size in args.sizes for batch in args.batches]
    for precision in args.precisions:
        for size, batch in cases:
            image1 = torch.rand(batch, 3, size, size, device=device)
            image2 = torch.rand(batch, 3, size, size, device=device)
            group = []
            for variant in ("large", "small"):
                ours = RAFTFlow(RAFT(RAFT_CONFIGS[variant]).state_dict(), iterations=args.raft_iterations,
                                precision=precision, device=device, max_batch=batch)
                calls = [lambda: ours(image1, image2)]
                if torchvision is not None:
                    reference = torchvision[variant](weights=None).eval().to(device)

                    def run_reference():
                        with autocast(device, precision):
                            return reference(image1 * 2 - 1, image2 * 2 - 1, num_flow_updates=args.raft_iterations)

                    calls.append(run_reference)
                seconds = time_calls(calls, device, args.repeats, CLOCKS[args.clock])
                group.append({"method": f"raft_{variant}", "baseline_name": f"torchvision raft_{variant}",
                              "ms": seconds[0] * 1000 / batch,
                              "baseline_ms": seconds[1] * 1000 / batch if len(seconds) > 1 else None})
            ours = UniMatchFlow(GMFlow(MOTIONEDIT_CONFIG).state_dict(), settings=MOTIONEDIT_SETTINGS,
                                precision=precision, device=device, max_batch=batch)
            calls = [lambda: ours(image1, image2)]
            if unimatch_reference is not None:

                def run_official():
                    with autocast(device, precision):
                        pads = (0, (-size) % 32, 0, (-size) % 32)
                        return unimatch_reference(
                            F.pad(image1 * 255, pads), F.pad(image2 * 255, pads), attn_type="swin",
                            attn_splits_list=[2, 8], corr_radius_list=[-1, 4], prop_radius_list=[-1, 1],
                            num_reg_refine=6, pred_bidir_flow=False, task="flow")

                calls.append(run_official)
            seconds = time_calls(calls, device, args.repeats, CLOCKS[args.clock])
            if unimatch_reference is not None:
                group.append({"method": "unimatch", "baseline_name": "official UniMatch",
                              "ms": seconds[0] * 1000 / batch, "baseline_ms": seconds[1] * 1000 / batch})
            else:
                group.append({"method": "unimatch", "baseline_name": "torchvision raft_large",
                              "ms": seconds[0] * 1000 / batch, "baseline_ms": group[0]["baseline_ms"]})
            for row in group:
                row.update(size=f"{size}x{size}", batch=batch, precision=precision)
                print(format_row(row), flush=True)
            rows.extend(group)
    return rows


def format_row(row: dict) -> str:
    baseline = "not measured" if row["baseline_ms"] is None else f"{row['baseline_ms']:.1f}"
    ratio = "–" if row["baseline_ms"] is None else f"{row['ms'] / row['baseline_ms']:.2f}"
    return (f"| {row['size']} | {row['batch']} | {row['precision']} | {row['method']} | {row['ms']:.1f} | "
            f"{row['baseline_name']} | {baseline} | {ratio} |")


def markdown(rows: list[dict], command: str, args) -> str:
    device = torch.device(args.device)
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}"
    else:
        machine = f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    kind = "gpu" if device.type == "cuda" else "cpu"
    lines = [
        f"<!-- learned-flow-benchmark-{kind}:start -->",
        f"## Learned optical flow: time per pair ({'GPU' if device.type == 'cuda' else 'CPU'})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}, Python {platform.python_version()}, torch {torch.__version__}. RAFT with "
        f"{args.raft_iterations} updates; unimatch with MotionEdit's settings (2 scales, 6 refinements). Time "
        f"({'CPU time of the process' if args.clock == 'cpu' else 'wall time'}): "
        f"median of {args.repeats} runs after a warm-up, divided by the batch; ratio = ours / baseline, both "
        "measured in this run on the same random images (random weights: speed does not depend on them).",
        "",
        "| size | batch | precision | method | ms / pair | baseline | baseline ms / pair | ratio |",
        "|---|---:|---|---|---:|---|---:|---:|",
        *(format_row(row) for row in rows),
        f"<!-- learned-flow-benchmark-{kind}:end -->",
    ]
    return "\n".join(lines)


def _case(text: str) -> tuple[int, int]:
    try:
        size, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZExBATCH such as 512x8, got {text!r}") from None
    return size, batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--cases", type=_case, nargs="+", default=None, metavar="SIZExBATCH",
        help="explicit size/batch cases (e.g. 256x1 256x8 512x1) instead of every size with every batch",
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--raft-iterations", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unimatch-repo", type=Path, default=None, help="clone of autonomousvision/unimatch (baseline)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default=None,
        help="wall time, or the process's CPU time (steady on a shared machine; with --threads 1 it is the "
        "compute time); default: wall on a GPU, cpu on the CPU with --threads 1, else wall",
    )
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose learned-flow section is replaced")
    args = parser.parse_args(argv)
    if args.threads:
        # On a shared machine, several threads per op can spend most of their time waiting on
        # each other; one thread per op gives steadier figures.
        torch.set_num_threads(args.threads)
    if args.clock is None:
        args.clock = "cpu" if torch.device(args.device).type == "cpu" and args.threads == 1 else "wall"
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        parser.error("--clock cpu measures CPU work only: use --clock wall with a GPU")
    rows = measure(args)
    grid = (f"--cases {' '.join(f'{s}x{b}' for s, b in args.cases)}" if args.cases else
            f"--sizes {' '.join(map(str, args.sizes))} --batches {' '.join(map(str, args.batches))}")
    command = (
        f"python bench/learned_flow_benchmark.py --device {args.device} {grid} --precisions {' '.join(args.precisions)} "
        f"--raft-iterations {args.raft_iterations} --repeats {args.repeats}"
        + (f" --threads {args.threads}" if args.threads else "") + f" --clock {args.clock}"
        + (" --unimatch-repo <clone of autonomousvision/unimatch>" if args.unimatch_repo else "")
        + (f" --write {args.write}" if args.write else "")
    )
    table = markdown(rows, command, args)
    print(table)
    if args.write:
        # CPU and GPU runs each replace their own section.
        kind = "gpu" if torch.device(args.device).type == "cuda" else "cpu"
        write_section(args.write, f"learned-flow-benchmark-{kind}", table)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
