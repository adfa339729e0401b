"""Optical-flow accuracy and speed on real frame pairs with ground truth.

    python bench/flow_benchmark.py [--data ../shared/data/flow] [--repeats 5] [--write docs/benchmarks.md]

For every backend/preset: end-point error (EPE, px, over pixels with known ground truth)
and the median wall time per pair (after one warm-up), on the Middlebury pairs
(RubberWhale, Dimetrodon; frame10 -> frame11) and the FlyingChairs examples. Time is
also given as a ratio to OpenCV Farneback measured in the same run, the baseline, since
absolute times move with the machine's load. ``--write`` replaces the flow section of a
Markdown file with the table and the command that produced it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402
from motionnft.flow import (  # noqa: E402
    WeightsNotFoundError,
    available_backends,
    create_estimator,
    read_flo,
    valid_flow_mask,
)
from motionnft.image import load_image  # noqa: E402

BASELINE = ("farneback", "default")


def find_pairs(root: Path) -> list[tuple[str, Path, Path, Path]]:
    """(name, frame A, frame B, ground-truth .flo) for every pair found under ``root``."""
    pairs = []
    for scene in sorted((root / "middlebury").glob("*")):
        if (scene / "flow10.flo").exists():
            pairs.append((f"Middlebury {scene.name}", scene / "frame10_color.png", scene / "frame11_color.png", scene / "flow10.flo"))
    for gt in sorted((root / "chairs").glob("*-gt.flo")):
        stem = gt.name[: -len("-gt.flo")]
        pairs.append((f"FlyingChairs {stem}", gt.with_name(f"{stem}-img0.ppm"), gt.with_name(f"{stem}-img1.ppm"), gt))
    return pairs


def end_point_error(flow: torch.Tensor, truth: torch.Tensor) -> float:
    known = valid_flow_mask(truth)
    return float((flow - truth).norm(dim=0)[known].mean())


def measure(pairs, repeats: int, skipped: list[str] | None = None) -> list[dict]:
    """Rows for every backend/preset; learned backends whose weights are not found here are
    left out and named in ``skipped``."""
    methods = [(name, preset) for name, backend in available_backends().items() for preset in backend.presets]
    loaded = [(name, load_image(a), load_image(b), read_flo(gt)) for name, a, b, gt in pairs]
    rows = []
    for backend, preset in methods:
        try:
            estimator = create_estimator(backend, preset)
        except WeightsNotFoundError:
            if skipped is not None and backend not in skipped:
                skipped.append(backend)
            continue
        for name, image_a, image_b, truth in loaded:
            flow = estimator(image_a, image_b)[0]
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                estimator(image_a, image_b)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "pair": name,
                    "size": f"{image_a.shape[-1]}x{image_a.shape[-2]}",
                    "method": backend if preset == "default" else f"{backend} {preset}",
                    "key": (backend, preset),
                    "epe": end_point_error(flow, truth),
                    "ms": 1000 * statistics.median(times),
                }
            )
    baseline = {row["pair"]: row["ms"] for row in rows if row["key"] == BASELINE}
    for row in rows:
        row["ratio"] = row["ms"] / baseline[row["pair"]]
    return rows


def markdown(rows: list[dict], command: str, repeats: int, skipped: list[str] = ()) -> str:
    lines = [
        "<!-- flow-benchmark:start -->",
        "## Optical flow: accuracy and time per pair (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}. Time: median of {repeats} runs after a "
        "warm-up, including the float -> 8-bit grey conversion; ratio = time / Farneback time on the "
        "same pair in the same run.",
        "",
        "| pair | size | method | EPE (px) | ms / pair | time ratio vs Farneback |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["pair"], r["method"])):
        lines.append(
            f"| {row['pair']} | {row['size']} | {row['method']} | {row['epe']:.3f} | {row['ms']:.1f} | {row['ratio']:.2f} |"
        )
    if skipped:
        lines += ["", f"Not measured (no weight file on this machine, see `motionnft backends`): {', '.join(skipped)}."]
    lines += ["<!-- flow-benchmark:end -->"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data" / "flow"
    parser.add_argument("--data", type=Path, default=default_data, help=f"folder with middlebury/ and chairs/ (default {default_data})")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose flow section is replaced")
    args = parser.parse_args(argv)
    pairs = find_pairs(args.data)
    if not pairs:
        parser.error(f"no frame pairs with ground truth found under {args.data} (looked in middlebury/*/ and chairs/)")
    skipped: list[str] = []
    rows = measure(pairs, args.repeats, skipped)
    command = "python bench/flow_benchmark.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
    table = markdown(rows, command + (f" --write {args.write}" if args.write else ""), args.repeats, skipped)
    print(table)
    if args.write:
        write_section(args.write, "flow-benchmark", table)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
