"""The ``motionnft`` command line: ``flow``, ``reward``, ``demo`` and ``backends``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from . import __version__


def _flow_arguments(parser: argparse.ArgumentParser) -> None:
    from .flow import PRECISIONS, available_backends

    parser.add_argument("--backend", default="dis", choices=sorted(available_backends()), help="flow estimator (default: dis)")
    parser.add_argument(
        "--preset", default=None,
        help="backend preset (dis: ultrafast, fast, medium; raft_*: fast, medium, accurate; default: the "
        "backend's own, see 'motionnft backends')",
    )
    parser.add_argument(
        "--weights", default=None,
        help="weight file of a learned backend (raft_large, raft_small, unimatch): a path, or a file name looked "
        "up in the weight folders (see 'motionnft backends'); default: the backend's preferred file found there",
    )
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="compute precision of a learned backend (default fp32)")
    parser.add_argument("--device", default=None, help="device of a learned backend, e.g. cuda or cuda:1 (default cpu)")


def _estimator(args):
    """The flow estimator the --backend/--preset/--weights/--precision/--device options describe."""
    from .flow import create_estimator

    return create_estimator(args.backend, args.preset, weights=args.weights, precision=args.precision, device=args.device)


def _reward_arguments(parser: argparse.ArgumentParser) -> None:
    from .reward import VARIANTS

    parser.add_argument(
        "--variant", default="code", choices=VARIANTS,
        help="reward form: 'code' = the released MotionNFT code (default), 'paper' = as printed in the paper",
    )
    parser.add_argument("--mas-alpha", type=float, default=0.7, help="MAS weight of D_mag (default 0.7)")
    parser.add_argument("--mas-d-min", type=float, default=None, help="MAS lower distance bound (default eps^q)")
    parser.add_argument("--mas-d-max", type=float, default=1.0, help="MAS upper distance bound (default 1)")


def _configs(args):
    from .reward import MASConfig, MotionRewardConfig

    config = MotionRewardConfig(variant=args.variant)
    mas = MASConfig(
        alpha=args.mas_alpha,
        d_min=config.distance_min if args.mas_d_min is None else args.mas_d_min,
        d_max=args.mas_d_max,
    )
    return config, mas


def _command_flow(args) -> int:
    from .flow import flow_legend, flow_to_color, write_flo
    from .image import load_image, resize_image, save_image

    image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    if image_a.shape[-2:] != image_b.shape[-2:]:
        print(
            f"note: {args.image_b} is {image_b.shape[-1]}x{image_b.shape[-2]}, resized to "
            f"{image_a.shape[-1]}x{image_a.shape[-2]} ({args.image_a})",
            file=sys.stderr,
        )
        image_b = resize_image(image_b, tuple(image_a.shape[-2:]))
    estimator = _estimator(args)
    start = time.perf_counter()
    flow = estimator(image_a, image_b)
    elapsed = time.perf_counter() - start
    write_flo(args.out, flow[0])
    magnitude = flow[0].norm(dim=0)
    print(
        f"{args.out}: {flow.shape[-1]}x{flow.shape[-2]} flow by {estimator!r} in {elapsed * 1000:.1f} ms; "
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


def _print_reward(record: dict, constants: dict, file=None) -> None:
    rows = [
        ("D_mag (magnitude term)", record["d_mag"]),
        ("D_dir (direction term)", record["d_dir"]),
        ("M_move (movement regulariser)", record["m_move"]),
        ("D (combined distance)", record["combined"]),
        ("reward, continuous", record["reward_continuous"]),
        ("reward, quantised", record["reward"]),
        ("MAS", record["mas"]),
    ]
    for label, value in rows:
        print(f"{label:<32}{value:10.4f}", file=file)
    if record["mas_hard_failure"]:
        print(f"{'':<32}(MAS hard failure: the edit moves < 1% of the ground truth)", file=file)
    mas = constants["mas"]
    reward = constants["reward"]
    print(
        f"constants: variant={reward['variant']} q={reward['q']} eps={reward['eps']} "
        f"tau_m={reward['direction_threshold']}; MAS alpha={mas['alpha']} d_min={mas['d_min']:.6g} d_max={mas['d_max']}",
        file=file,
    )


def _command_reward(args) -> int:
    from .image import load_image, save_image
    from .report import render_reward_breakdown
    from .reward import motion_reward

    config, mas = _configs(args)
    input_image, edited, target = (load_image(p) for p in (args.input, args.edited, args.target))
    estimator = _estimator(args)
    result = motion_reward(input_image, edited, target, estimator=estimator, config=config, mas_config=mas)
    record = result.records()[0]
    if args.breakdown:
        save_image(render_reward_breakdown(input_image, edited, target, result), args.breakdown)
    if args.json:
        payload = {
            "input": str(args.input),
            "edited": str(args.edited),
            "target": str(args.target),
            "flow": {
                "backend": args.backend,
                "preset": getattr(estimator, "preset", args.preset),
                "weights": str(getattr(estimator, "weights", None) or "") or None,
                "precision": getattr(estimator, "precision", "fp32"),
            },
            **record,
            "constants": result.constants(),
        }
        print(json.dumps(payload, indent=2))
    else:
        _print_reward(record, result.constants())
        if args.breakdown:
            print(f"breakdown figure: {args.breakdown}")
    return 0


def _command_demo(args) -> int:
    from tqdm import tqdm

    from .flow import flow_to_color
    from .image import save_image
    from .report import render_reward_breakdown
    from .reward import motion_reward
    from .synthetic import demo_sample

    if args.size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {args.size}")
    config, mas = _configs(args)
    out = Path(args.out)
    sample = demo_sample(size=args.size, seed=args.seed)
    estimator = _estimator(args)
    save_image(sample.input, out / "input.png")
    save_image(sample.target, out / "target.png")
    print(f"built-in sample: {args.size}x{args.size}, instruction: {sample.instruction!r}")
    print(f"flow: {estimator!r}; writing to {out}/")
    results = {}
    for name, edit in tqdm(sample.edits.items(), desc="scoring edits", unit="edit"):
        result = motion_reward(sample.input, edit, sample.target, estimator=estimator, config=config, mas_config=mas)
        results[name] = result.records()[0]
        save_image(edit, out / f"edit_{name}.png")
        save_image(flow_to_color(result.flow_edit)[0], out / f"flow_{name}.png")
        save_image(render_reward_breakdown(sample.input, edit, sample.target, result), out / f"breakdown_{name}.png")
    header = f"{'edit':<12}{'D_mag':>8}{'D_dir':>8}{'M_move':>8}{'D':>8}{'r_cont':>8}{'reward':>8}{'MAS':>8}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<12}{r['d_mag']:8.4f}{r['d_dir']:8.4f}{r['m_move']:8.4f}{r['combined']:8.4f}"
            f"{r['reward_continuous']:8.4f}{r['reward']:8.1f}{r['mas']:8.2f}"
        )
    print(mas.describe())
    (out / "rewards.json").write_text(json.dumps({"constants": result.constants(), "edits": results}, indent=2))
    print(f"breakdown figures: {out}/breakdown_*.png; numbers: {out}/rewards.json")
    return 0


def _command_backends(args) -> int:
    from .flow import WeightsNotFoundError, available_backends, find_weights, weight_folders

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motionnft",
        description="Motion-centric image editing tools: optical flow and the MotionNFT motion reward.",
    )
    parser.add_argument("--version", action="version", version=f"motionnft {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flow = commands.add_parser("flow", help="optical flow between two images, saved as .flo")
    flow.add_argument("image_a", type=Path, help="first image (frame A)")
    flow.add_argument("image_b", type=Path, help="second image (frame B); resized to A's size if it differs")
    flow.add_argument("--out", type=Path, required=True, help="output .flo file (flow A -> B in pixels)")
    flow.add_argument("--viz", type=Path, default=None, help="also write the colour-coded flow (PNG)")
    flow.add_argument("--legend", action="store_true", help="inset the colour-wheel legend into --viz")
    _flow_arguments(flow)
    flow.set_defaults(handler=_command_flow)

    reward = commands.add_parser("reward", help="motion reward and MAS of an edit against its ground truth")
    reward.add_argument("input", type=Path, help="the original image")
    reward.add_argument("edited", type=Path, help="the edited image to score")
    reward.add_argument("target", type=Path, help="the ground-truth target image")
    reward.add_argument("--json", action="store_true", help="print JSON (every term and the constants)")
    reward.add_argument("--breakdown", type=Path, default=None, help="write the reward-breakdown figure (PNG)")
    _flow_arguments(reward)
    _reward_arguments(reward)
    reward.set_defaults(handler=_command_reward)

    demo = commands.add_parser("demo", help="score the built-in sample's edits and write the figures")
    demo.add_argument("--out", type=Path, default=Path("motionnft-demo"), help="output folder (default ./motionnft-demo)")
    demo.add_argument("--size", type=int, default=256, help="sample size in pixels (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    _flow_arguments(demo)
    _reward_arguments(demo)
    demo.set_defaults(handler=_command_demo)

    backends = commands.add_parser(
        "backends", help="list the flow backends, their presets and weight files, and where weights are looked for"
    )
    backends.set_defaults(handler=_command_backends)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, IndexError) as error:
        print(f"motionnft {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"motionnft {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
