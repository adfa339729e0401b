"""``motionnft train-drag --part flowdiffusion``: the tiny FlowDiffusion from scratch, or with
``--base`` a FlowDiffusion fine-tuned from a real SD 1.5 checkpoint (full, or a LoRA)."""

from __future__ import annotations

import sys
from pathlib import Path

SD_SIZE = 512
"""The default training square with ``--base``: SD 1.5's own resolution."""
SD_SCENES = 200
"""Synthetic scenes drawn with ``--base`` and no ``--data``: they are made up front, and at 512 px
3000 would take 11 GB (images as bytes, flows as float32)."""


def add_flowdiffusion_options(train) -> None:
    """The options only ``--part flowdiffusion`` reads."""
    group = train.add_argument_group("FlowDiffusion (--part flowdiffusion)")
    group.add_argument("--base", type=Path, default=None, metavar="SD15",
                       help="fine-tune from this SD 1.5 checkpoint (a .safetensors / .ckpt single file, e.g. from "
                       "ComfyUI's models/checkpoints, or a diffusers folder); writes a delta file (a lora file with "
                       "--lora-rank) that FlowDiffusion Edit applies to the same checkpoint. Give it again to "
                       "resume. Default: the tiny model from scratch")
    group.add_argument("--learning-rate", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    group.add_argument("--device", default=None,
                       help="where to train, e.g. cuda or cuda:1 (default: cuda if available with --base, else cpu)")


def train_flowdiffusion(args) -> int:
    from .drag import SCENES, _data, _resume

    try:
        import torch

        from ..drag.flowdiffusion_data import EditPairFolder, figure_pairs
        from ..drag.train_flowdiffusion import FlowDiffusionTrainConfig, FlowDiffusionTrainer
    except ImportError as error:
        raise ValueError(f"--part flowdiffusion: FlowDiffusion is not available in this installation ({error})") from None
    base = args.base
    if base is not None and not base.exists():
        raise FileNotFoundError(f"--base {base}: no such SD 1.5 checkpoint (expected a .safetensors / .ckpt file or a "
                                "diffusers folder with unet/ and vae/)")
    header = _init_header(args.init, base) if args.init is not None else None
    if args.lora_rank < 0 or (args.lora_rank and base is None and header is None):
        raise ValueError(f"--lora-rank {args.lora_rank}: " + ("expected >= 0" if args.lora_rank < 0 else
                         "a LoRA needs --base or --init (the tiny model from scratch is trained whole)"))
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate}")
    for name in ("steps", "batch_size", "size", "scenes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    # With a base: SD 1.5's VAE (factor 8), its resolution and its ε-prediction (the paper's
    # setting); without: the tiny model, which learns the flow only with v-prediction (docs/drag.md).
    overrides = {"seed": args.seed, "lora_rank": args.lora_rank,
                 "prediction_type": args.prediction_type or ("epsilon" if base else "v_prediction")}
    if base is not None:
        overrides.update(codec_factor=8, size=SD_SIZE)
    if header is not None:
        overrides.update(_init_settings(args, header))
    for name in ("steps", "batch_size", "size", "learning_rate"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    multiple = 4 * overrides.get("codec_factor", FlowDiffusionTrainConfig.codec_factor)
    size = overrides.get("size", FlowDiffusionTrainConfig.size)
    if size % multiple:
        raise ValueError(f"--size {size}: expected a multiple of {multiple}"
                         + (" (SD 1.5's VAE shrinks 8x, the UNet halves the latent twice more)" if base else ""))
    config = FlowDiffusionTrainConfig(**overrides)
    device = torch.device(args.device or ("cuda" if base is not None and torch.cuda.is_available() else "cpu"))
    model = codec = base_unet = init = None
    if base is not None:  # before the data: a wrong --base fails fast
        model, codec, base_unet = _from_base(base, device)
    if header is not None:
        model, init = _from_init(args.init, model, base_unet, device)
    elif base is None and device.type != "cpu":
        torch.manual_seed(config.seed)  # the trainer's own initial weights, moved
        model = _tiny(config).to(device)
    scenes = args.scenes or (SD_SCENES if base is not None else SCENES)
    data = _data(args, lambda: figure_pairs(scenes, config.size, seed=config.seed),
                 lambda root: EditPairFolder(root, (config.size, config.size)))
    trainer = FlowDiffusionTrainer(config, data, args.out, model=model, codec=codec, show_progress=not args.quiet,
                                   base_name=str(base) if base is not None else None, init=init)
    result = trainer.run(_resume(args))
    if result.interrupted:
        print(f"motionnft train-drag: stopped at step {result.step}; run again to resume (no flowdiffusion.safetensors "
              "written)", file=sys.stderr)
        return 130
    if base is None:
        path = trainer.export()
        print(f"{path}: FlowDiffusion ({config.size} px, step {result.step}); use it with 'motionnft drag "
              f"--flowdiffusion {path}' or copy it to ComfyUI's models/motionnft_drag (the FlowDiffusion Edit node)")
        return 0
    # From a delta / lora file: the merged model against the base, exact, in the one format the
    # nodes load on SD 1.5 without stacking two adapters.
    kind = "lora" if config.lora_rank and init is None else "delta"
    path = trainer.export(kind=kind, base=base_unet)
    print(f"{path}: FlowDiffusion {kind} on {base} ({config.size} px, {config.prediction_type}, step {result.step}); "
          "copy it to ComfyUI's models/motionnft_drag. The FlowDiffusion Edit node needs the same SD 1.5 checkpoint: "
          f"load {base.name} with Load Checkpoint and connect its MODEL and VAE")
    return 0


def _init_header(init: Path, base: Path | None) -> dict:
    """The header of ``--init`` (a FlowDiffusion file); its kind must fit ``--base``."""
    from ..drag.flowdiffusion_files import read_header

    if not init.is_file():
        raise FileNotFoundError(f"--init {init}: " + ("is a folder, expected a flowdiffusion.safetensors file"
                                                      if init.is_dir() else "no such FlowDiffusion file"))
    try:
        header = read_header(init)
    except (OSError, ValueError) as error:
        raise ValueError(f"--init {error}" if str(init) in str(error) else f"--init {init}: {error}") from None
    if header["kind"] in ("delta", "lora") and base is None:
        raise ValueError(f"--init {init}: a FlowDiffusion {header['kind']} file on SD 1.5; give --base, the SD 1.5 "
                         "checkpoint it was fine-tuned from")
    if header["kind"] == "full" and base is not None:
        raise ValueError(f"--base {base}: --init {init} is a whole (tiny) FlowDiffusion; it takes no --base")
    return header


def _init_settings(args, header: dict) -> dict:
    """Prediction type, codec and working size of the ``--init`` file; the options must agree."""
    import json

    codec = json.loads(header["codec"])
    settings = {"prediction_type": header.get("prediction_type", "epsilon"), "size": int(header["working_size"]),
                "codec_factor": int(codec["factor"])}
    if codec["kind"] == "pooled":
        settings["codec_scale"] = float(codec["scale"])
    for name in ("prediction_type", "size"):
        given = getattr(args, name)
        if given is not None and given != settings[name]:
            raise ValueError(f"--{name.replace('_', '-')} {given} conflicts with --init {args.init}, made with "
                             f"{settings[name]}; leave it out")
    return settings


def _from_init(init: Path, model, base_unet, device):
    """(the trained FlowDiffusion of ``--init`` on ``device``, ready to train; its InitRecord). On a
    base, ``model`` (fresh from it) receives the file's merged weights."""
    from ..drag.finetune import InitRecord, state_signature
    from ..drag.finetune import merged_state
    from ..drag.flowdiffusion_files import load_flowdiffusion_file

    try:
        loaded = load_flowdiffusion_file(init, base_unet=base_unet)
    except (OSError, ValueError) as error:
        raise type(error)(f"--init {error}" if str(init) in str(error) else f"--init {init}: {error}") from None
    state = merged_state(loaded.model)
    if model is None:
        model = loaded.model.to(device)
    else:
        model.load_state_dict(state)
        model.prediction_type = loaded.model.prediction_type
    model.requires_grad_(True)  # the loader freezes it for inference
    return model.train(), InitRecord(str(init), state_signature(state))


def _tiny(config):
    from ..drag.flowdiffusion import FlowDiffusion

    return FlowDiffusion.tiny(config.size // config.codec_factor)


def _from_base(base: Path, device):
    """(FlowDiffusion from the base's UNet on ``device``, its VAE codec, the base UNet on the CPU
    for the delta export)."""
    from ..drag.flowdiffusion import from_sd_unet
    from ..drag.flowdiffusion_conditioning import SDVAECodec
    from ..drag.sd_checkpoint import load_sd15

    try:
        parts = load_sd15(base)
    except (OSError, ValueError) as error:
        raise type(error)(f"--base {error}") from None
    model = from_sd_unet(parts.unet, parts.null_text).to(device)
    parts.vae.requires_grad_(False)
    return model, SDVAECodec(parts.vae.to(device)), parts.unet
