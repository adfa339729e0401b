"""``motionnft mine``: (input, target) training pairs mined from videos into a dataset folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import FLOW_OPTIONS, flow_arguments, judge_arguments, judge_cache, make_judge


def add_mine(commands) -> None:
    mine = commands.add_parser(
        "mine", help="mine (input, target) training pairs from videos into a dataset folder",
        description="Cut videos into windows, score each window's first/last frame pair with automatic "
        "filters (shot cut, camera motion, subject motion, moving area, sharpness, exposure, lighting, "
        "occlusion, near duplicates) and append the kept pairs to a dataset folder (resumable).",
    )
    mine.add_argument("videos", type=Path, nargs="+", metavar="VIDEO", help="video files (mp4, mov, mkv, webm, ...)")
    mine.add_argument("--out", type=Path, required=True, help="dataset folder (created; a rerun resumes it)")
    mine.add_argument("--contact-sheet", type=Path, default=None, help="also write a contact sheet PNG of the pairs")
    mine.add_argument("--contact-sheet-rows", type=int, default=48, help="most pairs on the contact sheet (kept first) [48]")
    mine.add_argument("--json", action="store_true", help="also print the summary as JSON")
    flow_arguments(mine)
    mining_arguments(mine)
    judge_arguments(mine, cache=True)
    mine.set_defaults(handler=command_mine, output_folders=("out",), output_files=("contact_sheet",),
                      input_files=("videos",))


def mining_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per MiningConfig setting (``--max-camera-motion`` ...), defaults from the dataclass."""
    import dataclasses

    from ..mining import MiningConfig

    group = parser.add_argument_group("sampling and thresholds (defaults in brackets)")
    for spec in dataclasses.fields(MiningConfig):
        if spec.name in FLOW_OPTIONS:
            continue  # from flow_arguments
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.metadata['help']} [{spec.default}]"
        if isinstance(spec.default, bool):
            group.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "choices" in spec.metadata:
            group.add_argument(flag, dest=spec.name, choices=spec.metadata["choices"], default=None, help=help_text)
        else:
            kind = int if isinstance(spec.default, int) else float
            group.add_argument(flag, dest=spec.name, type=kind, default=None, metavar="N", help=help_text)


def mining_config(args):
    import dataclasses

    from ..mining import MiningConfig

    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(MiningConfig)
                 if spec.name not in FLOW_OPTIONS and getattr(args, spec.name) is not None}
    return MiningConfig(**{name: getattr(args, name) for name in FLOW_OPTIONS}, **overrides)


def command_mine(args) -> int:
    from tqdm import tqdm

    from ..mining import MiningSummary, mine, video_source

    config = mining_config(args)
    judge = None
    if args.judge_url:
        # The judge checks the paper's three criteria and drafts each kept pair's instruction.
        judge = make_judge(args, judge_cache(args))
    sources = [video_source(path) for path in args.videos]
    summary = MiningSummary()
    sheet_rows = args.contact_sheet_rows if args.contact_sheet else 0
    shown_kept, shown_rejected = [], []
    bar = tqdm(total=1, desc="mining", unit="frame", dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix(kept=summary.kept + summary.existing, rejected=summary.rejected, refresh=False)
        bar.refresh()

    print(f"mining {len(sources)} video(s) into {args.out}/: {config.window_seconds:g} s windows, "
          f"{config.pairing}, {config.sample_fps:g} analysed frames/s at {config.analysis_size} px, "
          f"flow {config.backend}" + (f" {config.preset}" if config.preset else "")
          + (f", judge {args.judge_url}" if judge else ", no judge (prompts left empty)"))
    try:
        for result in mine(sources, config, out=args.out, judge=judge, progress=progress, summary=summary,
                           keep_images=False, previews=bool(sheet_rows)):
            shown = shown_kept if result.kept else shown_rejected
            if len(shown) < sheet_rows:
                shown.append(result)
            else:
                result.preview = None
    finally:
        bar.close()
    print(summary.format())
    _report_outputs(args, sources, shown_kept, shown_rejected, sheet_rows)
    if args.json:
        print(json.dumps({"out": str(args.out), "config": config.as_dict(), **summary.as_dict()}, indent=2))
    return 0


def _report_outputs(args, sources, shown_kept: list, shown_rejected: list, sheet_rows: int) -> None:
    """Print what the dataset folder holds now and write the contact sheet of the pairs kept for it."""
    from ..data import open_dataset
    from ..image import save_image
    from ..report import render_contact_sheet

    dataset = open_dataset(args.out) if (Path(args.out) / "metadata.jsonl").is_file() else None
    print(f"dataset: {args.out}/ holds {len(dataset) if dataset else 0} pairs (metadata.jsonl, images/); "
          f"rejections with their reasons: {args.out}/rejected.jsonl")
    if sheet_rows:
        rows = shown_kept + shown_rejected[: max(0, sheet_rows - len(shown_kept))]
        order = {source.name: index for index, source in enumerate(sources)}
        rows.sort(key=lambda r: (order.get(r.video, 0), r.time_input))
        if rows:
            save_image(render_contact_sheet(rows), args.contact_sheet)
            print(f"contact sheet: {args.contact_sheet} ({len(rows)} pairs)")
