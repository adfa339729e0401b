"""``motionnft train-drag --part flowgen``: FlowGen from scratch, or from a trained FlowGen
(``--init``, the paper's scene fine-tuning) whole or as a LoRA (``--lora-rank``)."""

from __future__ import annotations

import sys

MODELS = ("tiny", "full")


def add_finetune_options(train) -> None:
    """``--init`` and ``--lora-rank``, read by both parts."""
    from pathlib import Path

    train.add_argument("--init", type=Path, default=None, metavar="FILE",
                       help="start from these trained weights (scene fine-tuning): a flowgen.safetensors (or its "
                       "run folder) for --part flowgen, a flowdiffusion.safetensors for --part flowdiffusion (a "
                       "delta / lora file also needs its --base). Its model, working size and FlowDiffusion "
                       "prediction type and codec come from the file. Give it again to resume")
    train.add_argument("--lora-rank", type=int, default=0,
                       help="train a LoRA of this rank (alpha = rank; the paper's scene fine-tuning uses 8) instead "
                       "of every weight: FlowGen's Conv2d layers (needs --init), or FlowDiffusion's attention "
                       "(needs --base or --init). The exported file has it merged (default 0: full fine-tune)")


def train_flowgen(args) -> int:
    import dataclasses

    from ..drag.flow_data import FlowPairFolder, figure_scenes
    from ..drag.inference import FILE_NAME, save_flowgen
    from ..drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer, plain_generator
    from .drag import SCENES, _check_train_options, _data, _resume

    given = [f"--{name.replace('_', '-')}" for name in ("base", "learning_rate", "device")
             if getattr(args, name) is not None]
    if given:
        raise ValueError(f"{', '.join(given)}: FlowDiffusion options; add --part flowdiffusion")
    if args.lora_rank < 0:
        raise ValueError(f"--lora-rank {args.lora_rank}: expected >= 0")
    generator = init = None
    if args.init is not None:
        generator, init = _flowgen_init(args)
    elif args.lora_rank:
        raise ValueError(f"--lora-rank {args.lora_rank}: a FlowGen LoRA adapts trained weights; give --init "
                         "flowgen.safetensors (from scratch every weight is trained)")
    model = args.model = args.model or "tiny"
    # The default training square is 2 ** depth: 64 for the tiny model, the paper's 256 for the full one;
    # a fine-tuned FlowGen keeps the square it was trained at.
    size = getattr(generator, "working_size", None) or _check_train_options(
        args, FlowGenTrainConfig(model=model).model_config().multiple)
    if generator is not None:
        _check_train_options(args, generator.config.multiple)
    overrides = {"model": model, "seed": args.seed, "lora_rank": args.lora_rank}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = FlowGenTrainConfig(**overrides)
    if config.save_every > config.steps:
        config = dataclasses.replace(config, save_every=config.steps)
    data = _data(args, lambda: figure_scenes(args.scenes or SCENES, size, seed=config.seed),
                 lambda root: FlowPairFolder(root, (size, size)))
    trainer = FlowGenTrainer(config, data, args.out, show_progress=not args.quiet, generator=generator, init=init)
    result = trainer.run(_resume(args))
    if result.interrupted:
        print(f"motionnft train-drag: stopped at step {result.step}; run again to resume (no {FILE_NAME} written)",
              file=sys.stderr)
        return 130
    # One plain file, LoRA merged: the Drag to Flow node and 'motionnft drag' read a FlowGen file
    # and nothing else, and the tiny generator is 7 MB whole.
    path = save_flowgen(args.out / FILE_NAME, plain_generator(trainer.generator), size=size)
    how = f", LoRA rank {config.lora_rank} merged" if config.lora_rank else ""
    start = f", from {args.init}" if init is not None else ""
    print(f"{path}: FlowGen ({model}, {size} px, step {result.step}{start}{how}); use it with "
          f"'motionnft drag --flowgen {path}' or copy it to ComfyUI's models/motionnft_drag")
    return 0


def _flowgen_init(args):
    """(generator, InitRecord) of ``--init``; ``--model`` / ``--size`` must agree with it."""
    from ..drag.finetune import load_flowgen_init
    from ..drag.flowgen import FlowGenConfig

    generator, init = load_flowgen_init(args.init)
    presets = {name: getattr(FlowGenConfig, name)() for name in MODELS}
    model = next((name for name, config in presets.items() if config == generator.config), None)
    if model is None:
        raise ValueError(f"--init {args.init}: a FlowGen of a configuration train-drag does not build (neither "
                         f"{' nor '.join(MODELS)})")
    if args.model is not None and args.model != model:
        raise ValueError(f"--model {args.model} conflicts with --init {args.init}, a {model} FlowGen; "
                         "leave --model out")
    if args.size is not None and args.size != generator.working_size:
        raise ValueError(f"--size {args.size} conflicts with --init {args.init}, trained at "
                         f"{generator.working_size} px; leave --size out")
    args.model = model
    return generator, init
