"""The ``motionnft`` command line: ``flow``, ``reward``, ``demo``, ``backends``, ``eval``, ``judge``, ``lora``,
``mine``, ``train``, ``data synthetic`` and ``edit``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from . import __version__


FLOW_OPTIONS = ("backend", "preset", "weights", "precision", "device")
"""The options :func:`_flow_arguments` adds, named as ``create_estimator``'s arguments."""


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
    given = {} if args.mas_d_min is None else {"d_min": args.mas_d_min}
    mas = MASConfig(alpha=args.mas_alpha, d_max=args.mas_d_max, **given).for_reward(config)  # default d_min: eps^q
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


def _judge_arguments(parser: argparse.ArgumentParser, cache: bool) -> None:
    group = parser.add_argument_group(
        "judge", "an MLLM behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama); "
        "the API key, if any, is read from $MOTIONNFT_JUDGE_API_KEY",
    )
    group.add_argument("--judge-url", default=None, help="server URL, e.g. http://127.0.0.1:8000/v1 (no judge if absent)")
    group.add_argument("--judge-model", default="", help="model name as the server knows it (default: its only model)")
    group.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    group.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request (default 120)")
    group.add_argument("--judge-retries", type=int, default=3, help="retries of a failed request (default 3)")
    group.add_argument("--judge-image-format", choices=("png", "jpeg"), default="png", help="how images are sent (default png)")
    group.add_argument("--judge-max-side", type=int, default=None, help="downscale images whose longer side exceeds this")
    if cache:
        group.add_argument("--judge-cache", type=Path, default=None, help="answer cache folder (default OUT/judge-cache)")
        group.add_argument("--no-judge-cache", action="store_true", help="do not cache the judge's answers")


def _make_judge(args, cache_dir: Path | None = None):
    from .judge import JudgeClient

    return JudgeClient(
        args.judge_url, args.judge_model,
        timeout=args.judge_timeout, max_retries=args.judge_retries, max_concurrency=args.judge_concurrency,
        cache_dir=cache_dir, image_format=args.judge_image_format, max_image_side=args.judge_max_side,
    )


def _edit_folders(values: list[str]):
    """``NAME=FOLDER`` or ``FOLDER`` (named after the folder) -> EditFolder sources."""
    from .evaluate import EditFolder

    systems = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or "/" in name or "\\" in name:
            name, folder = Path(value).expanduser().resolve().name, value
        systems.append(EditFolder(name, folder))
    return systems


def _command_eval(args) -> int:
    from .data import open_dataset
    from .evaluate import EvaluationConfig, evaluate
    from .judge import JudgeError

    config, mas = _configs(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    dataset = open_dataset(args.dataset)
    systems = _edit_folders(args.edits)
    evaluation = EvaluationConfig(**{name: getattr(args, name) for name in FLOW_OPTIONS}, reward=config, mas=mas,
                                  win_by=args.win_by, tie_tolerance=args.tie_tolerance)
    samples = list(dataset)[: args.limit]
    print(f"dataset: {dataset.root} ({dataset.layout} layout), evaluating {len(samples)} of {len(dataset)} samples")
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
    if any_missing and args.strict:
        raise ValueError("edits are missing (see above) and --strict was given; expected <id>.png/.jpg/.jpeg/.webp per sample")
    judge = None
    if args.judge_url:
        cache = None if args.no_judge_cache else (args.judge_cache or args.out / "judge-cache")
        judge = _make_judge(args, cache)
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


def _command_judge(args) -> int:
    from .image import load_image
    from .judge import BENCHMARK_METRICS, JudgeError

    if not args.judge_url:
        raise ValueError("--judge-url is required (e.g. http://127.0.0.1:8000/v1)")
    judge = _make_judge(args)
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


def _command_lora(args) -> int:
    from .lora import load_lora, save_lora

    lora = load_lora(args.path, alpha=args.alpha, base=args.base)
    if args.lora_command == "convert":
        lora.metadata["motionnft.converted_from"] = (
            f"{Path(args.path).name} ({lora.layout} layout, alpha source: {lora.alpha_source})"
        )
        save_lora(args.out, lora)
        print(f"wrote {args.out}: {len(lora.modules)} modules for {lora.base}, scale alpha/rank "
              f"{', '.join(f'{s:g}' for s in lora.scales)}")
        return 0
    if args.json:
        print(json.dumps({
            "path": str(args.path), "base": lora.base, "layout": lora.layout, "modules": len(lora.modules),
            "parameters": lora.parameter_count, "ranks": lora.ranks, "alphas": lora.alphas, "scales": lora.scales,
            "alpha_source": lora.alpha_source, "target_modules": lora.target_modules(),
            "ignored_keys": lora.ignored_keys, "metadata": lora.metadata,
        }, indent=2))
    else:
        print(f"{args.path}")
        print(lora.describe())
        for key in sorted(lora.metadata):
            value = " ".join(str(lora.metadata[key]).split())
            print(f"  {key}: {value[:200]}{'...' if len(value) > 200 else ''}")
    return 0


def _mining_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per MiningConfig setting (``--max-camera-motion`` ...), defaults from the dataclass."""
    import dataclasses

    from .mining import MiningConfig

    group = parser.add_argument_group("sampling and thresholds (defaults in brackets)")
    for spec in dataclasses.fields(MiningConfig):
        if spec.name in FLOW_OPTIONS:
            continue  # from _flow_arguments
        flag = "--" + spec.name.replace("_", "-")
        help_text = f"{spec.metadata['help']} [{spec.default}]"
        if isinstance(spec.default, bool):
            group.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "choices" in spec.metadata:
            group.add_argument(flag, dest=spec.name, choices=spec.metadata["choices"], default=None, help=help_text)
        else:
            kind = int if isinstance(spec.default, int) else float
            group.add_argument(flag, dest=spec.name, type=kind, default=None, metavar="N", help=help_text)


def _mining_config(args):
    import dataclasses

    from .mining import MiningConfig

    overrides = {spec.name: getattr(args, spec.name) for spec in dataclasses.fields(MiningConfig)
                 if spec.name not in FLOW_OPTIONS and getattr(args, spec.name) is not None}
    return MiningConfig(**{name: getattr(args, name) for name in FLOW_OPTIONS}, **overrides)


def _command_mine(args) -> int:
    from tqdm import tqdm

    from .image import save_image
    from .mining import MiningSummary, mine, video_source
    from .report import render_contact_sheet

    config = _mining_config(args)
    judge = None
    if args.judge_url:
        # The judge checks the paper's three criteria and drafts each kept pair's instruction.
        judge = _make_judge(args, None if args.no_judge_cache else (args.judge_cache or args.out / "judge-cache"))
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
    from .data import open_dataset

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
    if args.json:
        print(json.dumps({"out": str(args.out), "config": config.as_dict(), **summary.as_dict()}, indent=2))
    return 0


def _command_train(args) -> int:
    try:
        from .training.loop import train
        from .training.rewards import JudgeFailure
        from .training.settings import config_to_toml, load_config
    except ImportError as error:
        raise ValueError(f"the trainer needs the train extra: pip install 'motionnft[train]' ({error})") from None

    overrides = list(args.set or [])
    for key in ("output_dir", "model_path", "data", "max_steps", "model"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"{key}={value!s}" if isinstance(value, int) else f"{key}={str(value)!r}")
    config = load_config(args.preset, args.config, overrides)
    if args.print_config:
        print(config_to_toml(config), end="")
        return 0
    try:
        result = train(config, resume=None if args.resume == "none" else args.resume)
    except JudgeFailure as error:  # the state of the last completed step is saved: running again resumes
        print(f"motionnft train: stopped: {error}", file=sys.stderr)
        return 3
    return 130 if result.interrupted else 0


SYNTHETIC_FILE = "synthetic.json"
"""How ``motionnft data synthetic`` made a dataset folder (count, size, seed), kept beside it."""


def _command_data(args) -> int:
    from tqdm import tqdm

    from .data import METADATA_FILE, DatasetWriter
    from .files import atomic_write
    from .generate import tiny_preset
    from .synthetic import motion_edit_dataset

    if args.count < 1:
        raise ValueError(f"--count must be at least 1, got {args.count}")
    preset = tiny_preset()
    size = preset.resolution if args.size is None else args.size
    out = Path(args.out).expanduser()
    made_with = {"task": "synthetic motion edits (motionnft.synthetic.motion_edit_dataset)", "count": args.count,
                 "size": size, "seed": args.seed}
    record = out / SYNTHETIC_FILE
    if record.is_file():
        before = json.loads(record.read_text())
        if before != made_with:
            raise ValueError(f"{out} holds a synthetic dataset of count {before.get('count')}, size "
                             f"{before.get('size')}, seed {before.get('seed')}: choose another --out")
    elif (out / METADATA_FILE).is_file():
        raise ValueError(f"{out} already holds a dataset ({METADATA_FILE}) not made by 'motionnft data synthetic': "
                         "choose another --out")
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


def _generation_inputs(args):
    from .generate import GenerationSettings, ModelSpec

    spec = ModelSpec(
        kind=args.model, path=None if args.model_path is None else str(args.model_path),
        transformer_file=None if args.transformer_file is None else str(args.transformer_file),
        base_weights=None if args.base_weights is None else str(args.base_weights), tiny_size=args.tiny_size,
        tiny_codec=args.tiny_codec, guidance=args.guidance, lora=None if args.lora is None else str(args.lora),
        lora_scale=args.lora_scale, lora_alpha=args.lora_alpha, dtype=args.dtype, device=args.device,
    )
    settings = GenerationSettings(steps=args.steps, sampler=args.sampler, seed=args.seed, resolution=args.resolution,
                                  true_cfg=args.true_cfg, negative_prompt=args.negative_prompt, batch_size=args.batch)
    return spec, settings


def _command_edit(args) -> int:
    from .data import open_dataset
    from .evaluate import EDIT_SUFFIXES, ProducedEdits, check_produced_folder
    from .generate import EditGenerator, default_settings, generation_record

    spec, settings = _generation_inputs(args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    dataset = open_dataset(args.data)
    samples = [s for s in dataset if (s.prompt or "").strip()]
    if not samples:
        raise ValueError(f"dataset {args.data}: no sample has an instruction (prompt) to edit with")
    unprompted = len(dataset) - len(samples)
    samples = samples[: args.limit]
    record = generation_record(spec, settings)  # the LoRA and base weights must exist
    out = Path(args.out).expanduser()
    check_produced_folder(out, record)
    resolved = default_settings(spec.kind, settings)
    print(f"dataset: {dataset.root} ({dataset.layout} layout), editing {len(samples)} samples"
          + (f" ({unprompted} without an instruction skipped)" if unprompted else ""))
    cfg = (f"true CFG {resolved.true_cfg:g} (negative prompt {resolved.negative_prompt!r})"
           if resolved.true_cfg > 1 else "no true CFG")
    guidance = f"guidance {record['guidance']:g}, " if record.get("guidance") is not None else ""
    print(f"sampling: {resolved.steps} {resolved.sampler} steps, seed {resolved.seed}, {guidance}{cfg}, "
          f"~{resolved.resolution}^2 px, batch {resolved.batch_size}, {record['dtype']}")
    done = {p.stem for p in out.iterdir() if p.suffix.lower() in EDIT_SUFFIXES} if out.is_dir() else set()
    todo = sum(1 for s in samples if s.id not in done)
    if not todo:
        print(f"{out}: all {len(samples)} edits exist; nothing to do")
        return 0
    generator = EditGenerator.from_spec(spec, settings)
    print(f"model: {generator.model.describe()} on {generator.model.device}")
    if generator.lora is not None:
        lora = generator.lora
        print(f"LoRA: {args.lora}: {len(lora.modules)} modules merged, rank {', '.join(map(str, lora.ranks))}, "
              f"scale alpha/rank {', '.join(f'{s:g}' for s in lora.scales)} x strength {spec.lora_scale:g} "
              f"(alpha source: {lora.alpha_source})")
    name = out.resolve().name or "edits"
    edits = ProducedEdits(name, out, generator, description=record)
    try:
        made, existing = edits.produce(samples, show_progress=not args.quiet)
    except KeyboardInterrupt:
        have = sum(1 for s in samples if edits.find(s) is not None)
        print(f"interrupted: {have} of {len(samples)} edits are in {out}; run the same command again to make the rest",
              file=sys.stderr)
        raise
    print(f"{out}: {made} edits made, {existing} already there (<sample id>.png at the working size); "
          f"settings in {out / 'produced_by.json'}")
    print(f"score them: motionnft eval {args.data} --edits {name}={out} --out EVAL_DIR")
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


def _edit_parser(commands) -> None:
    from .generate import DTYPES, INFERENCE_STEPS, MODEL_CHOICES, NEGATIVE_PROMPT
    from .sampling import SAMPLERS

    edit = commands.add_parser(
        "edit", help="edit every sample of a dataset with a base model (+ LoRA): <sample id>.png for 'motionnft eval'",
        description="Generate one edit per dataset sample with a base model and optionally a LoRA, as "
        "<OUT>/<sample id>.png, ready for 'motionnft eval --edits'. Defaults follow the official inference "
        "(28 steps; FLUX.1 Kontext: embedded guidance 2.5; Qwen-Image-Edit: true CFG 4.0 with the negative "
        "prompt ' '). Resumable: existing edits are kept, a rerun makes the rest (Ctrl-C stops cleanly).",
    )
    model = edit.add_argument_group("model")
    model.add_argument("--model", required=True, choices=MODEL_CHOICES, metavar="KIND",
                       help="tiny (the tiny training preset's model, with its base weights), "
                       + ", ".join(MODEL_CHOICES[1:]))
    model.add_argument("--model-path", type=Path, default=None, help="local diffusers folder of a real model")
    model.add_argument("--transformer-file", type=Path, default=None,
                       help="single-file transformer replacing MODEL_PATH/transformer")
    model.add_argument("--base-weights", type=Path, default=None,
                       help="safetensors state dict loaded into the transformer (default: the tiny preset's for "
                       "--model tiny, none otherwise)")
    model.add_argument("--tiny-size", default=None, choices=("test", "demo", "base"),
                       help="tiny models' size (default: the tiny preset's for tiny, demo for tiny_* kinds)")
    model.add_argument("--tiny-codec", default=None, choices=("patch", "vae", "lowres"),
                       help="tiny models' codec (default: the tiny preset's for tiny, patch for tiny_* kinds)")
    model.add_argument("--lora", type=Path, default=None, help="LoRA file (any layout) or PEFT adapter folder")
    model.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (multiplies alpha/rank; default 1)")
    model.add_argument("--lora-alpha", type=float, default=None,
                       help="replace the LoRA's alpha (64 for the official MotionEdit converted file)")
    model.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                       help="default: bfloat16 for real models on CUDA, float32 otherwise")
    model.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    sampling = edit.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=INFERENCE_STEPS, help=f"sampler steps (default {INFERENCE_STEPS})")
    sampling.add_argument("--sampler", default="euler", choices=SAMPLERS,
                          help="euler (the pipelines' scheduler, default) or dpm2 (the trainer's rollouts)")
    sampling.add_argument("--seed", type=int, default=0, help="noise seed; each sample's noise comes from (seed, id)")
    sampling.add_argument("--batch", type=int, default=1, help="samples per batch (default 1)")
    sampling.add_argument("--resolution", type=int, default=None,
                          help="working size ~RESOLUTION^2 pixels at the input's aspect ratio (default: the tiny "
                          "preset's resolution for tiny models, 1024 for real ones)")
    sampling.add_argument("--guidance", type=float, default=None, help="FLUX.1 Kontext embedded guidance (default 2.5)")
    sampling.add_argument("--true-cfg", dest="true_cfg", type=float, default=None,
                          help="true CFG scale, > 1 to enable (default: 4.0 for Qwen-Image-Edit, off for Kontext)")
    sampling.add_argument("--negative-prompt", default=NEGATIVE_PROMPT, help="negative prompt of true CFG (default ' ')")
    edit.add_argument("--data", required=True, type=Path,
                      help="dataset folder (metadata.jsonl) or MotionEdit parquet/arrow files")
    edit.add_argument("--out", required=True, type=Path, help="folder of the edits (created; a rerun resumes it)")
    edit.add_argument("--limit", type=int, default=None, help="edit only the first N samples")
    edit.add_argument("--quiet", action="store_true", help="no progress bar")
    edit.set_defaults(handler=_command_edit)


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
    _flow_arguments(evaluation)
    _reward_arguments(evaluation)
    _judge_arguments(evaluation, cache=True)
    evaluation.set_defaults(handler=_command_eval)

    judge = commands.add_parser("judge", help="rate one edit with an MLLM judge (or list the server's models)")
    judge.add_argument("input", type=Path, nargs="?", help="the original image")
    judge.add_argument("edited", type=Path, nargs="?", help="the edited image")
    judge.add_argument("--instruction", default=None, help="the editing instruction")
    judge.add_argument("--list-models", action="store_true", help="list the models the server serves and exit")
    judge.add_argument("--json", action="store_true", help="print JSON")
    _judge_arguments(judge, cache=False)
    judge.set_defaults(handler=_command_judge)


    lora = commands.add_parser("lora", help="inspect a LoRA file or PEFT folder, or convert it to a ComfyUI-loadable file")
    lora_commands = lora.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    info = lora_commands.add_parser("info", help="base, layout, ranks, alphas, scale and metadata")
    convert = lora_commands.add_parser(
        "convert", help="write a safetensors file that ComfyUI's LoraLoaderModelOnly and diffusers apply at alpha/rank",
    )
    for sub in (info, convert):
        sub.add_argument("path", type=Path, help="LoRA file (any supported layout) or PEFT adapter folder")
        sub.add_argument("--alpha", type=float, default=None,
                         help="replace every module's alpha (64 for the official MotionEdit converted file)")
        sub.add_argument("--base", choices=("flux", "qwen_image"), default=None,
                         help="the base model, when the file's names fit both")
        sub.set_defaults(handler=_command_lora)
    info.add_argument("--json", action="store_true", help="print JSON")
    convert.add_argument("out", type=Path, help="output .safetensors file")
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
    _flow_arguments(mine)
    _mining_arguments(mine)
    _judge_arguments(mine, cache=True)
    mine.set_defaults(handler=_command_mine)

    train = commands.add_parser(
        "train", help="post-train an editing model with MotionNFT (LoRA); --preset tiny runs on the CPU",
        description="MotionNFT trainer. Settings: motionnft/training/settings.py (every setting and its "
                    "default), motionnft/configs/train.toml (presets), --config FILE, then --set KEY=VALUE. "
                    "Multi-GPU: accelerate launch -m motionnft train ...",
    )
    train.add_argument("--preset", default="tiny", choices=("tiny", "kontext", "qwen"),
                       help="starting configuration (default: tiny, the built-in CPU job)")
    train.add_argument("--config", type=Path, default=None, help="a TOML file of settings applied after the preset")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    train.add_argument("--output-dir", dest="output_dir", default=None, help="run folder (checkpoints, metrics, LoRA)")
    train.add_argument("--model-path", dest="model_path", default=None, help="local diffusers folder of the base model")
    train.add_argument("--model", default=None, help="model kind (flux_kontext, qwen_image_edit, qwen_image_edit_plus, ...)")
    train.add_argument("--data", default=None, help="dataset folder (metadata.jsonl or MotionEdit parquet/arrow) or 'synthetic'")
    train.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="optimiser steps")
    train.add_argument("--resume", default="auto",
                       help="'auto' (default: continue from OUTPUT_DIR's latest checkpoint), a checkpoint or run folder, or 'none'")
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    train.set_defaults(handler=_command_train)
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
    synthetic.set_defaults(handler=_command_data)

    _edit_parser(commands)

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
