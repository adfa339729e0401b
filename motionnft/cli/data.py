"""``motionnft data synthetic``: the built-in synthetic motion task written as a dataset folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SYNTHETIC_FILE = "synthetic.json"
"""How ``motionnft data synthetic`` made a dataset folder (count, size, seed), kept beside it."""


def add_data(commands) -> None:
    data = commands.add_parser("data", help="write datasets: 'data synthetic' writes the built-in motion task")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synthetic = data_commands.add_parser(
        "synthetic", help="write N samples of the built-in synthetic motion task as a dataset folder",
        description="Write COUNT samples of the built-in synthetic motion task (a figure that steps right, steps "
        "left or jumps as its instruction says) as a dataset folder: metadata.jsonl + images/. Every sample has "
        "its own scene, drawn from the seed and its index: another seed than a run's training seed gives scenes "
        "that run never trained on.",
    )
    synthetic.add_argument("--count", type=int, required=True, help="number of samples")
    synthetic.add_argument("--seed", type=int, required=True, help="scene seed (the tiny preset trains on seed 0)")
    synthetic.add_argument("--out", type=Path, required=True, help="dataset folder (created; a rerun resumes it)")
    synthetic.add_argument("--size", type=int, default=None, help="image size in pixels (default: the tiny preset's resolution)")
    synthetic.add_argument("--quiet", action="store_true", help="no progress bar")
    synthetic.set_defaults(handler=command_data, output_folders=("out",))


def command_data(args) -> int:
    from tqdm import tqdm

    from ..data import METADATA_FILE, DatasetWriter
    from ..files import atomic_write
    from ..generate import tiny_preset
    from ..synthetic import motion_edit_dataset

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    preset = tiny_preset()
    size = preset.resolution if args.size is None else args.size
    out = Path(args.out).expanduser()
    made_with = {"task": "synthetic motion edits (motionnft.synthetic.motion_edit_dataset)", "count": args.count,
                 "size": size, "seed": args.seed}
    record = out / SYNTHETIC_FILE
    _check_out(out, record, made_with, METADATA_FILE)
    if args.seed == preset.seed:
        print(f"note: seed {args.seed} is the tiny preset's training seed: these are its training scenes; "
              "another seed gives scenes not used in training", file=sys.stderr)
    dataset = motion_edit_dataset(count=args.count, size=size, seed=args.seed)
    with atomic_write(record, "w") as handle:
        json.dump(made_with, handle, indent=2)
    written = 0
    with DatasetWriter(out) as writer:
        for sample in tqdm(dataset, desc="writing samples", unit="sample", disable=args.quiet, dynamic_ncols=True):
            if sample.id in writer:
                continue
            fields = dict(sample.extra)
            if sample.category is not None:
                fields["category"] = sample.category
            writer.add(sample.id, sample.prompt, sample.input_image(), sample.target_image(), **fields)
            written += 1
    print(f"{out}: {len(dataset)} synthetic samples at {size}x{size}, seed {args.seed} ({written} written now, "
          f"{len(dataset) - written} already there): {METADATA_FILE}, images/")
    return 0


def _check_out(out: Path, record: Path, made_with: dict, metadata_file: str) -> None:
    """Refuse an --out folder holding another dataset: a rerun may only resume the same one."""
    if record.is_file():
        before = json.loads(record.read_text())
        if before != made_with:
            raise ValueError(f"{out} holds a synthetic dataset of count {before.get('count')}, size "
                             f"{before.get('size')}, seed {before.get('seed')}: choose another --out")
    elif (out / metadata_file).is_file():
        raise ValueError(f"{out} already holds a dataset ({metadata_file}) not made by 'motionnft data synthetic': "
                         "choose another --out")
