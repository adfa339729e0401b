"""``motionnft reward`` (one edit's motion reward and MAS) and ``motionnft demo`` (the built-in sample's edits)."""

from __future__ import annotations

import json
from pathlib import Path

from .options import estimator, flow_arguments, reward_arguments, reward_configs


def add_reward(commands) -> None:
    reward = commands.add_parser("reward", help="motion reward and MAS of an edit against its ground truth")
    reward.add_argument("input", type=Path, help="the original image")
    reward.add_argument("edited", type=Path, help="the edited image to score")
    reward.add_argument("target", type=Path, help="the ground-truth target image")
    reward.add_argument("--json", action="store_true", help="print JSON (every term and the constants)")
    reward.add_argument("--breakdown", type=Path, default=None, help="write the reward-breakdown figure (PNG)")
    flow_arguments(reward)
    reward_arguments(reward)
    reward.set_defaults(handler=command_reward, output_files=("breakdown",), input_files=("input", "edited", "target"))


def add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="score the built-in sample's edits and write the figures")
    demo.add_argument("--out", type=Path, default=Path("motionnft-demo"), help="output folder (default ./motionnft-demo)")
    demo.add_argument("--size", type=int, default=256, help="sample size in pixels (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    flow_arguments(demo)
    reward_arguments(demo)
    demo.set_defaults(handler=command_demo, output_folders=("out",))


def print_reward(record: dict, constants: dict, file=None) -> None:
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


def command_reward(args) -> int:
    from ..image import load_image, save_image
    from ..report import render_reward_breakdown
    from ..reward import motion_reward

    config, mas = reward_configs(args)
    input_image, edited, target = (load_image(p) for p in (args.input, args.edited, args.target))
    flow_estimator = estimator(args)
    result = motion_reward(input_image, edited, target, estimator=flow_estimator, config=config, mas_config=mas)
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
                "preset": getattr(flow_estimator, "preset", args.preset),
                "weights": str(getattr(flow_estimator, "weights", None) or "") or None,
                "precision": getattr(flow_estimator, "precision", "fp32"),
            },
            **record,
            "constants": result.constants(),
        }
        print(json.dumps(payload, indent=2))
    else:
        print_reward(record, result.constants())
        if args.breakdown:
            print(f"breakdown figure: {args.breakdown}")
    return 0


def command_demo(args) -> int:
    from tqdm import tqdm

    from ..flow import flow_to_color
    from ..image import save_image
    from ..report import render_reward_breakdown
    from ..reward import motion_reward
    from ..synthetic import demo_sample

    if args.size < 32:
        raise ValueError(f"--size must be at least 32 pixels, got {args.size}")
    config, mas = reward_configs(args)
    out = Path(args.out)
    sample = demo_sample(size=args.size, seed=args.seed)
    flow_estimator = estimator(args)
    save_image(sample.input, out / "input.png")
    save_image(sample.target, out / "target.png")
    print(f"built-in sample: {args.size}x{args.size}, instruction: {sample.instruction!r}")
    print(f"flow: {flow_estimator!r}; writing to {out}/")
    results = {}
    for name, edit in tqdm(sample.edits.items(), desc="scoring edits", unit="edit"):
        result = motion_reward(sample.input, edit, sample.target, estimator=flow_estimator, config=config, mas_config=mas)
        results[name] = result.records()[0]
        save_image(edit, out / f"edit_{name}.png")
        save_image(flow_to_color(result.flow_edit)[0], out / f"flow_{name}.png")
        save_image(render_reward_breakdown(sample.input, edit, sample.target, result), out / f"breakdown_{name}.png")
    _print_demo_table(results)
    print(mas.describe())
    (out / "rewards.json").write_text(json.dumps({"constants": result.constants(), "edits": results}, indent=2))
    print(f"breakdown figures: {out}/breakdown_*.png; numbers: {out}/rewards.json")
    return 0


def _print_demo_table(results: dict[str, dict]) -> None:
    header = f"{'edit':<12}{'D_mag':>8}{'D_dir':>8}{'M_move':>8}{'D':>8}{'r_cont':>8}{'reward':>8}{'MAS':>8}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<12}{r['d_mag']:8.4f}{r['d_dir']:8.4f}{r['m_move']:8.4f}{r['combined']:8.4f}"
            f"{r['reward_continuous']:8.4f}{r['reward']:8.1f}{r['mas']:8.2f}"
        )
