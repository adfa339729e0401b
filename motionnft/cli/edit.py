"""``motionnft edit``: a base model (+ LoRA) edits every sample of a dataset, as files for ``motionnft eval``."""

from __future__ import annotations

import sys
from pathlib import Path


def add_edit(commands) -> None:
    edit = commands.add_parser(
        "edit", help="edit every sample of a dataset with a base model (+ LoRA): <sample id>.png for 'motionnft eval'",
        description="Generate one edit per dataset sample with a base model and optionally a LoRA, as "
        "<OUT>/<sample id>.png, ready for 'motionnft eval --edits'. Defaults follow the official inference "
        "(28 steps; FLUX.1 Kontext: embedded guidance 2.5; Qwen-Image-Edit: true CFG 4.0 with the negative "
        "prompt ' '). Resumable: existing edits are kept, a rerun makes the rest (Ctrl-C stops cleanly).",
    )
    model_arguments(edit)
    _sampling_arguments(edit)
    edit.add_argument("--data", required=True, type=Path,
                      help="dataset folder (metadata.jsonl) or MotionEdit parquet/arrow files")
    edit.add_argument("--out", required=True, type=Path, help="folder of the edits (created; a rerun resumes it)")
    edit.add_argument("--limit", type=int, default=None, help="edit only the first N samples")
    edit.add_argument("--quiet", action="store_true", help="no progress bar")
    edit.set_defaults(handler=command_edit, output_folders=("out",))


def model_arguments(parser) -> None:
    """The options naming the model (+ LoRA) and where it runs, shared by ``edit`` and ``guide``."""
    from ..generate import DTYPES, MODEL_CHOICES

    model = parser.add_argument_group("model")
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


def model_spec(args):
    """The :class:`~motionnft.generate.ModelSpec` the model options describe."""
    from ..generate import ModelSpec

    return ModelSpec(
        kind=args.model, path=None if args.model_path is None else str(args.model_path),
        transformer_file=None if args.transformer_file is None else str(args.transformer_file),
        base_weights=None if args.base_weights is None else str(args.base_weights), tiny_size=args.tiny_size,
        tiny_codec=args.tiny_codec, guidance=args.guidance, lora=None if args.lora is None else str(args.lora),
        lora_scale=args.lora_scale, lora_alpha=args.lora_alpha, dtype=args.dtype, device=args.device,
    )


def _sampling_arguments(edit) -> None:
    from ..generate import INFERENCE_STEPS, NEGATIVE_PROMPT
    from ..sampling import SAMPLERS

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


def generation_inputs(args):
    """(ModelSpec, GenerationSettings) from the model and sampling options."""
    from ..generate import GenerationSettings

    spec = model_spec(args)
    settings = GenerationSettings(steps=args.steps, sampler=args.sampler, seed=args.seed, resolution=args.resolution,
                                  true_cfg=args.true_cfg, negative_prompt=args.negative_prompt, batch_size=args.batch)
    return spec, settings


def command_edit(args) -> int:
    from ..data import open_dataset
    from ..evaluate import EDIT_SUFFIXES, ProducedEdits, check_produced_folder
    from ..generate import EditGenerator, default_settings, generation_record

    spec, settings = generation_inputs(args)
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
    _print_sampling(resolved, record)
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


def _print_sampling(resolved, record: dict) -> None:
    cfg = (f"true CFG {resolved.true_cfg:g} (negative prompt {resolved.negative_prompt!r})"
           if resolved.true_cfg > 1 else "no true CFG")
    guidance = f"guidance {record['guidance']:g}, " if record.get("guidance") is not None else ""
    print(f"sampling: {resolved.steps} {resolved.sampler} steps, seed {resolved.seed}, {guidance}{cfg}, "
          f"~{resolved.resolution}^2 px, batch {resolved.batch_size}, {record['dtype']}")
