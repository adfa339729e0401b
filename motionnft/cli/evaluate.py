"""``motionnft eval`` (MotionEdit-Bench style scoring of folders of edits) and ``motionnft judge`` (one edit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .options import (FLOW_OPTIONS, flow_arguments, judge_arguments, judge_cache, make_judge, reward_arguments,
                      reward_configs)


def add_eval(commands) -> None:
    evaluation = commands.add_parser(
        "eval", help="MotionEdit-Bench style evaluation of edited images: MAS, judge ratings, win rate",
        description="Score folders of edited images (<sample id>.png/.jpg/.jpeg/.webp) against a dataset's "
        "ground truth: MAS per sample, per category and overall, the judge's Fidelity/Preservation/Coherence "
        "if --judge-url is given, and pairwise win rates between systems. Resumable: rerun to continue.",
    )
    evaluation.add_argument("dataset", type=Path, help="dataset folder (metadata.jsonl) or Hugging Face parquet/arrow files")
    evaluation.add_argument("--edits", action="append", required=True, metavar="[NAME=]FOLDER",
                            help="a system's edited images; repeat to compare systems (name: the folder's by default)")
    evaluation.add_argument("--out", type=Path, required=True, help="output folder (CSV, JSON, table.md, resumable log)")
    evaluation.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    evaluation.add_argument("--win-by", default="auto", choices=("auto", "judge", "mas"),
                            help="win-rate metric: auto = judge Overall with a judge, else MAS")
    evaluation.add_argument("--tie-tolerance", type=float, default=0.0, help="scores this close are a tie (default 0)")
    evaluation.add_argument("--strict", action="store_true", help="fail if any sample has no edit")
    evaluation.add_argument("--restart", action="store_true", help="discard earlier results in --out instead of resuming")
    evaluation.add_argument("--quiet", action="store_true", help="no progress bar")
    flow_arguments(evaluation)
    reward_arguments(evaluation)
    judge_arguments(evaluation, cache=True)
    evaluation.set_defaults(handler=command_eval, output_folders=("out",))


def add_judge(commands) -> None:
    judge = commands.add_parser("judge", help="rate one edit with an MLLM judge (or list the server's models)")
    judge.add_argument("input", type=Path, nargs="?", help="the original image")
    judge.add_argument("edited", type=Path, nargs="?", help="the edited image")
    judge.add_argument("--instruction", default=None, help="the editing instruction")
    judge.add_argument("--list-models", action="store_true", help="list the models the server serves and exit")
    judge.add_argument("--json", action="store_true", help="print JSON")
    judge_arguments(judge, cache=False)
    judge.set_defaults(handler=command_judge)


def edit_folders(values: list[str]):
    """``NAME=FOLDER`` or ``FOLDER`` (named after the folder) -> EditFolder sources."""
    from ..evaluate import EditFolder

    systems = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or "/" in name or "\\" in name:
            name, folder = Path(value).expanduser().resolve().name, value
        systems.append(EditFolder(name, folder))
    return systems


def command_eval(args) -> int:
    from ..data import open_dataset
    from ..evaluate import EvaluationConfig, evaluate
    from ..judge import JudgeError

    config, mas = reward_configs(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    dataset = open_dataset(args.dataset)
    systems = edit_folders(args.edits)
    evaluation = EvaluationConfig(**{name: getattr(args, name) for name in FLOW_OPTIONS}, reward=config, mas=mas,
                                  win_by=args.win_by, tie_tolerance=args.tie_tolerance)
    samples = list(dataset)[: args.limit]
    print(f"dataset: {dataset.root} ({dataset.layout} layout), evaluating {len(samples)} of {len(dataset)} samples")
    if _report_coverage(systems, samples, dataset) and args.strict:
        raise ValueError("edits are missing (see above) and --strict was given; expected <id>.png/.jpg/.jpeg/.webp per sample")
    judge = None
    if args.judge_url:
        cache = judge_cache(args)
        judge = make_judge(args, cache)
        model = judge.model or "(the server's only model)"
        print(f"judge: {judge.base_url} model {model}" + (f", cache {cache}" if cache else ""))
    try:
        result = evaluate(dataset, systems, args.out, evaluation, judge=judge, limit=args.limit,
                          restart=args.restart, show_progress=not args.quiet)
    except JudgeError as error:
        print(f"motionnft eval: judge error: {error}\n(results so far are kept in {args.out}; rerun to resume)",
              file=sys.stderr)
        return 1
    print()
    print(result.files["table"].read_text())
    print("written: " + ", ".join(str(path) for path in result.files.values()))
    return 0


def _report_coverage(systems, samples, dataset) -> bool:
    """Print each system's folder with the samples it has no edit for; True if any edit is missing."""
    any_missing = False
    for system in systems:
        missing = [s.id for s in samples if system.find(s) is None]
        unmatched = system.unmatched(s.id for s in dataset)
        note = ""
        if missing:
            any_missing = True
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            note += f"; {len(missing)} sample(s) have no edit ({shown})"
        if unmatched:
            note += f"; {len(unmatched)} file(s) match no sample id ({', '.join(unmatched[:3])}{' ...' if len(unmatched) > 3 else ''})"
        print(f"system {system.name!r}: {system.folder}{note}", file=sys.stderr if note else sys.stdout)
    return any_missing


def command_judge(args) -> int:
    from ..image import load_image
    from ..judge import BENCHMARK_METRICS, JudgeError

    if not args.judge_url:
        raise ValueError("--judge-url is required (e.g. http://127.0.0.1:8000/v1)")
    judge = make_judge(args)
    try:
        if args.list_models:
            for name in judge.list_models():
                print(name)
            return 0
        if args.input is None or args.edited is None or not args.instruction:
            raise ValueError("give INPUT and EDITED images and --instruction (or --list-models)")
        input_image, edited = load_image(args.input), load_image(args.edited)
        metrics = judge.rate_benchmark_metrics(input_image, edited, args.instruction)
        reward = judge.rate_training_reward(input_image, edited, args.instruction)
    except JudgeError as error:
        print(f"motionnft judge: error: {error}", file=sys.stderr)
        return 1
    ratings = {name: 5.0 * metrics[name] for name in BENCHMARK_METRICS}
    ratings["overall"] = sum(ratings.values()) / len(BENCHMARK_METRICS)
    if args.json:
        print(json.dumps({"input": str(args.input), "edited": str(args.edited), "instruction": args.instruction,
                          "judge": judge.describe(), "ratings_0_5": ratings, "training_reward": reward}, indent=2))
    else:
        for name, value in ratings.items():
            print(f"{name:<14}{value:6.2f} / 5")
        print(f"{'reward':<14}{reward:6.3f}   (MotionNFT MLLM reward, 0-1)")
        print(f"judge: {judge.model} at {judge.base_url}")
    return 0
