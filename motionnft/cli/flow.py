"""``motionnft flow`` (optical flow between two images) and ``motionnft backends`` (the flow estimators)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .options import estimator, flow_arguments


def add_flow(commands) -> None:
    flow = commands.add_parser("flow", help="optical flow between two images, saved as .flo")
    flow.add_argument("image_a", type=Path, help="first image (frame A)")
    flow.add_argument("image_b", type=Path, help="second image (frame B); resized to A's size if it differs")
    flow.add_argument("--out", type=Path, required=True, help="output .flo file (flow A -> B in pixels)")
    flow.add_argument("--viz", type=Path, default=None, help="also write the colour-coded flow (PNG)")
    flow.add_argument("--legend", action="store_true", help="inset the colour-wheel legend into --viz")
    flow_arguments(flow)
    flow.set_defaults(handler=command_flow, output_files=("out", "viz"), input_files=("image_a", "image_b"))


def add_backends(commands) -> None:
    backends = commands.add_parser(
        "backends", help="list the flow backends, their presets and weight files, and where weights are looked for"
    )
    backends.set_defaults(handler=command_backends)


def command_flow(args) -> int:
    from ..flow import flow_legend, flow_to_color, write_flo
    from ..image import load_image, resize_image, save_image

    image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    if image_a.shape[-2:] != image_b.shape[-2:]:
        print(
            f"note: {args.image_b} is {image_b.shape[-1]}x{image_b.shape[-2]}, resized to "
            f"{image_a.shape[-1]}x{image_a.shape[-2]} ({args.image_a})",
            file=sys.stderr,
        )
        image_b = resize_image(image_b, tuple(image_a.shape[-2:]))
    flow_estimator = estimator(args)
    start = time.perf_counter()
    flow = flow_estimator(image_a, image_b)
    elapsed = time.perf_counter() - start
    write_flo(args.out, flow[0])
    magnitude = flow[0].norm(dim=0)
    print(
        f"{args.out}: {flow.shape[-1]}x{flow.shape[-2]} flow by {flow_estimator!r} in {elapsed * 1000:.1f} ms; "
        f"mean {magnitude.mean():.3f} px, max {magnitude.max():.3f} px"
    )
    if args.viz:
        picture = flow_to_color(flow)[0]
        if args.legend:
            legend = flow_legend(min(160, picture.shape[-1] // 3), float(magnitude.max()))
            legend = legend[:, : picture.shape[-2], :]
            picture = picture.clone()
            picture[:, : legend.shape[-2], -legend.shape[-1] :] = legend
        save_image(picture, args.viz)
        print(f"{args.viz}: colour-coded flow")
    return 0


def command_backends(args) -> int:
    from ..flow import WeightsNotFoundError, available_backends, find_weights, weight_folders

    folders = weight_folders()
    print("flow backends (--backend NAME --preset PRESET [--weights FILE]):")
    for name, info in available_backends().items():
        presets = ", ".join(p + (" (default)" if p == info.default_preset else "") for p in info.presets)
        print(f"\n{name}: {info.description}\n  presets: {presets}")
        if not info.needs_weights:
            print("  weights: none needed")
            continue
        try:
            found = f"found {find_weights(name, info.weight_files, folders=folders)}"
        except WeightsNotFoundError:
            found = "MISSING: put one of these files in a folder below"
        print(f"  weights: {found}\n  accepted file names (preferred first):")
        for file_name in info.weight_files:
            print(f"    {file_name}")
    print("\nweight folders searched, in order ($MOTIONNFT_FLOW_WEIGHTS, registered folders, torch hub):")
    for folder in folders:
        print(f"  {folder}{'' if folder.is_dir() else ' (does not exist)'}")
    return 0
