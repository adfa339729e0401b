"""``motionnft drag`` (point drags -> dense flow -> moved image) and ``motionnft train-drag``
(InstantDrag's FlowGen trainer, :mod:`motionnft.drag.train_flowgen`, and FlowDiffusion's
where installed: :mod:`.train_flowdiffusion`)."""

from __future__ import annotations

import re
from pathlib import Path

from .train_drag import MODELS, add_finetune_options, train_flowgen
from .train_flowdiffusion import add_flowdiffusion_options, train_flowdiffusion

METHODS = ("spline", "flowgen")
FITS = ("resize", "pad")
SCENES = 3000
"""Synthetic scenes drawn without --data (fewer with --base: see cli.train_flowdiffusion)."""

_NUMBER = r"\s*-?(?:\d+(?:\.\d*)?|\.\d+)\s*"
_QUADRUPLES = re.compile(rf"^{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}(?:;{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER})*;?\s*$")


def add_drag(commands) -> None:
    drag = commands.add_parser(
        "drag", help="move an image's content along point drags (drags -> dense flow -> forward warp)",
        description="Turn point drags into a dense flow (thin-plate spline, or InstantDrag's FlowGen with "
        "--flowgen) and save the source image forward-warped along it (holes keep the source's pixels). "
        "With --flowdiffusion the result is FlowDiffusion's edit instead of the warp.",
    )
    drag.add_argument("--image", type=Path, required=True, help="the source image")
    drag.add_argument("--drags", required=True,
                      help='drags in pixels of IMAGE: "x0,y0,x1,y1;x0,y0,x1,y1", "x0,y0 -> x1,y1; ...", or the drag '
                      'editor\'s JSON {"size": [W, H], "drags": [[x0, y0, x1, y1], ...]} (rescaled from its size)')
    drag.add_argument("--method", choices=METHODS, default=None,
                      help="drags -> flow: spline (thin-plate spline, no weights) or flowgen (needs --flowgen); "
                      "default flowgen when --flowgen is given, else spline")
    drag.add_argument("--flowgen", type=Path, default=None,
                      help="FlowGen weights: a .safetensors file from train-drag, or its run / checkpoint folder")
    drag.add_argument("--fit", choices=FITS, default="resize",
                      help="how FlowGen's square working size is reached: resize (default; as it was trained) or "
                      "pad (keeps the aspect ratio)")
    drag.add_argument("--smoothness", type=float, default=0.0, help="spline ridge weight (default 0: exact)")
    drag.add_argument("--no-pin-borders", action="store_true", help="spline: let the image border move too")
    drag.add_argument("--flowdiffusion", type=Path, default=None, metavar="FILE_OR_DIR",
                      help="FlowDiffusion weights (flowdiffusion.safetensors from train-drag --part flowdiffusion) or "
                      "its run / checkpoint folder: the result is its edit along the flow")
    drag.add_argument("--base", type=Path, default=None, metavar="SD15",
                      help="the SD 1.5 checkpoint (.safetensors / .ckpt or diffusers folder) a delta or LoRA "
                      "FlowDiffusion file was fine-tuned from; its VAE encodes and decodes")
    drag.add_argument("--device", default=None,
                      help="FlowDiffusion's device, e.g. cuda (default: cuda if available with --base, else cpu)")
    drag.add_argument("--steps", type=int, default=20, help="FlowDiffusion denoising steps (default 20)")
    drag.add_argument("--seed", type=int, default=0, help="FlowDiffusion noise seed (default 0)")
    drag.add_argument("--out", type=Path, required=True, help="the result image (PNG)")
    drag.add_argument("--flow-out", type=Path, default=None, help="also save the dense flow (.flo, pixels of IMAGE)")
    drag.add_argument("--viz", type=Path, default=None, help="also save the colour-coded flow with the drags (PNG)")
    drag.set_defaults(handler=command_drag, output_files=("out", "flow_out", "viz"),
                      input_files=("image", "flowgen", "base"))


def add_train_drag(commands) -> None:
    train = commands.add_parser(
        "train-drag", help="train InstantDrag's FlowGen (drags -> flow) on pairs with dense flow",
        description="Train FlowGen on a dataset folder whose samples have images/<id>_flow.flo (what "
        "'motionnft mine' writes), or on synthetic figure scenes. Checkpoints go to RUN/checkpoints (a run "
        "resumes exactly); at the end RUN/flowgen.safetensors holds the generator for 'motionnft drag "
        "--flowgen' and the Drag to Flow node (models/motionnft_drag). With --part flowdiffusion it trains "
        "FlowDiffusion: the tiny model from scratch, or with --base SD15 fine-tuned from an SD 1.5 checkpoint "
        "(RUN/flowdiffusion.safetensors). With --init FILE either part starts from trained weights (scene fine-tuning "
        "on your clip), whole or with --lora-rank 8; the exported file has the LoRA merged.",
    )
    train.add_argument("--data", default=None,
                       help="dataset folder (metadata.jsonl + images/<id>_flow.flo); default or 'synthetic': "
                       "synthetic figure scenes")
    train.add_argument("--part", choices=("flowgen", "flowdiffusion"), default="flowgen",
                       help="which network (default flowgen)")
    train.add_argument("--out", type=Path, required=True,
                       help="run folder (checkpoints, metrics.csv, flowgen.safetensors or flowdiffusion.safetensors)")
    train.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the trainer's, 2000 for FlowGen)")
    train.add_argument("--model", choices=MODELS, default=None,
                       help="FlowGen size: tiny (default; 1.8 M parameters, 64 px, CPU) or full (the paper's 54 M, "
                       "256 px); with --init, the file's")
    train.add_argument("--size", type=int, default=None,
                       help="training square in pixels, a multiple of 2**depth (default 64 tiny, 256 full)")
    train.add_argument("--batch-size", type=int, default=None, help="pairs per step (default: the trainer's, 16)")
    train.add_argument("--scenes", type=int, default=None,
                       help="synthetic scenes (without --data; default 3000, 200 with --base: at 512 px each "
                       "scene's pair and flow take 3.7 MB)")
    train.add_argument("--prediction-type", choices=("v_prediction", "epsilon"), default=None,
                       help="FlowDiffusion's output: v_prediction (default without --base; the tiny model trained "
                       "from scratch learns to use the flow only with it, see docs/drag.md) or epsilon (SD 1.5's "
                       "and the paper's; default with --base)")
    train.add_argument("--seed", type=int, default=0, help="seed of the weights and of every draw (default 0)")
    train.add_argument("--resume", default="auto",
                       help="'auto' (default: continue from RUN's latest checkpoint), 'none', or a run / checkpoint folder")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_finetune_options(train)
    add_flowdiffusion_options(train)
    train.set_defaults(handler=command_train_drag, output_folders=("out",), input_files=("data", "base", "init"))


def read_drag_option(text: str):
    """The ``--drags`` value as a :class:`~motionnft.drag.DragList`: ``"x0,y0,x1,y1;..."`` quadruples or
    whatever :func:`~motionnft.drag.parse_drags` reads. ValueError naming ``--drags``."""
    from ..drag import parse_drags

    if _QUADRUPLES.match(text or ""):
        parts = filter(None, (part.strip() for part in text.split(";")))
        text = "; ".join("{},{} -> {},{}".format(*part.split(",")) for part in parts)
    try:
        drags = parse_drags(text)
    except ValueError as error:
        detail = str(error).removeprefix("drags: ")
        raise ValueError(f"--drags: {detail} (or x0,y0,x1,y1 quadruples separated by ';')") from None
    if len(drags) == 0:
        raise ValueError("--drags: no drag given; expected e.g. \"40,30,60,30\" (from 40,30 to 60,30)")
    return drags


def command_drag(args) -> int:
    import torch

    from ..drag import drags_to_flow, flowgen_flow, load_flowgen
    from ..flow import flow_to_color, splat_forward, write_flo
    from ..image import load_image, save_image

    method = args.method or ("flowgen" if args.flowgen is not None else "spline")
    if method == "flowgen" and args.flowgen is None:
        raise ValueError("--method flowgen needs --flowgen FILE (weights from 'motionnft train-drag')")
    if method == "spline" and args.flowgen is not None:
        raise ValueError(f"--flowgen {args.flowgen} is given but --method is spline; drop one of them")
    drags = read_drag_option(args.drags)
    source = load_image(args.image)
    height, width = source.shape[-2:]
    drags = drags.scaled_to(width, height)
    outside = [i for i, (x, y) in enumerate(drags.sources.tolist(), 1)
               if not (0 <= x <= width - 1 and 0 <= y <= height - 1)]
    if outside:
        x, y = drags.sources[outside[0] - 1].tolist()
        raise ValueError(f"--drags: drag {outside[0]} starts at ({x:g}, {y:g}), outside the {width}x{height} image "
                         f"{args.image}")
    if args.base is not None and args.flowdiffusion is None:
        raise ValueError(f"--base {args.base}: only used with --flowdiffusion (a delta or LoRA FlowDiffusion file)")
    edit = _flowdiffusion(args.flowdiffusion, args.base, args.device) if args.flowdiffusion is not None else None

    if method == "flowgen":
        try:
            generator = load_flowgen(args.flowgen)
        except (OSError, ValueError) as error:
            raise type(error)(f"--flowgen {error}") from None
        flow = flowgen_flow(generator, source, drags, fit=args.fit)
        described = f"FlowGen ({args.flowgen}, fit {args.fit})"
    else:
        flow = drags_to_flow(drags, height, width, smoothness=args.smoothness,
                             pinned_border_points=0 if args.no_pin_borders else 8)
        described = "thin-plate spline"
    if edit is not None:
        result = edit(source, flow, args.steps, args.seed)
        made = f"FlowDiffusion's edit ({args.flowdiffusion}, {args.steps} steps, seed {args.seed})"
    else:
        warped, covered = splat_forward(source, flow)
        result = torch.where(covered, warped, source)
        made = "the source forward-warped along the flow (holes keep the source)"
    save_image(result[0].clamp(0, 1), args.out)
    magnitude = flow[0].norm(dim=0)
    print(f"{len(drags)} drag(s) -> {width}x{height} flow by {described}: mean {magnitude.mean():.2f} px, "
          f"max {magnitude.max():.2f} px")
    print(f"{args.out}: {made}")
    if args.flow_out is not None:
        write_flo(args.flow_out, flow[0])
        print(f"{args.flow_out}: the flow (.flo, pixels of {args.image})")
    if args.viz is not None:
        save_image(_draw_drags(flow_to_color(flow)[0], drags), args.viz)
        print(f"{args.viz}: colour-coded flow with the drags (red: from, green: to)")
    return 0


def _draw_drags(picture, drags):
    """``picture`` ``(3, H, W)`` in [0, 1] with each drag drawn as a line from a red dot to a green one."""
    from PIL import ImageDraw

    from ..image import pil_to_tensor, tensor_to_pil

    pil = tensor_to_pil(picture)
    draw = ImageDraw.Draw(pil)
    radius = max(2, max(pil.size) // 100)
    for (x0, y0), (x1, y1) in zip(drags.sources.tolist(), drags.targets.tolist()):
        draw.line((x0, y0, x1, y1), fill=(30, 30, 30), width=max(1, radius // 2))
        draw.ellipse((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=(224, 74, 58))
        draw.ellipse((x1 - radius, y1 - radius, x1 + radius, y1 + radius), fill=(58, 167, 90))
    return pil_to_tensor(pil)[0]


def _flowdiffusion(source: Path, base: Path | None = None, device: str | None = None):
    """``edit(source, flow, steps, seed) -> (1, 3, H, W)`` by the FlowDiffusion of ``source`` (a
    FlowDiffusion file, or a run / checkpoint folder; a delta / LoRA / SD-VAE file on the SD 1.5
    ``base``), or ValueError naming ``--flowdiffusion`` when this installation has no FlowDiffusion."""
    import importlib.util

    if importlib.util.find_spec("..drag.flowdiffusion_sampling", __package__) is None:
        raise ValueError(f"--flowdiffusion {source}: FlowDiffusion is not available yet in this version of motionnft")
    try:
        from ..drag.flowdiffusion_conditioning import PooledRGBCodec
        from ..drag.flowdiffusion_files import FILE_NAME
        from ..drag.flowdiffusion_sampling import edit_at_working_size
        from ..drag.train_flowdiffusion import FlowDiffusionTrainConfig, load_flowdiffusion
    except ImportError as error:
        raise ValueError(f"--flowdiffusion {source}: FlowDiffusion cannot be imported ({error}); it needs "
                         "diffusers") from None
    if not source.exists():
        raise FileNotFoundError(f"--flowdiffusion {source}: no such file or folder (expected a FlowDiffusion file "
                                "from train-drag --part flowdiffusion, or its run / checkpoint folder)")
    if source.is_dir() and (source / FILE_NAME).is_file():  # a finished run: its exported file (any kind)
        source = source / FILE_NAME
    try:
        if source.is_file():
            model, codec, size = _flowdiffusion_file(source, base, device)
        else:
            model = load_flowdiffusion(source)
            settings = _run_settings(source)
            size = int(settings.get("size", 64))
            trained = FlowDiffusionTrainConfig()  # a run folder without these settings used the defaults
            codec = PooledRGBCodec(int(settings.get("codec_factor", trained.codec_factor)),
                                   float(settings.get("codec_scale", trained.codec_scale)))
    except (OSError, ValueError) as error:
        if str(error).startswith("--base"):
            raise
        raise type(error)(f"--flowdiffusion {error}" if str(source) in str(error)
                          else f"--flowdiffusion {source}: {error}") from None

    def edit(image, flow, steps: int, seed: int):
        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}")
        parameter = next(model.parameters())
        result = edit_at_working_size(model, image.to(parameter.device), flow.to(parameter.device), codec=codec,
                                      size=size, steps=steps, seed=seed)
        return result.float().cpu()

    return edit


def _flowdiffusion_file(source: Path, base: Path | None, device: str | None):
    """(model on its device, codec, working size) of a FlowDiffusion file; a delta / LoRA file's
    base UNet and an SD-VAE file's VAE come from ``--base``."""
    import torch

    from ..drag.flowdiffusion_conditioning import SDVAECodec
    from ..drag.flowdiffusion_files import load_flowdiffusion_file, read_header

    header = read_header(source)
    needs_base = header.get("kind") in ("delta", "lora") or '"sd-vae"' in header.get("codec", "")
    if needs_base and base is None:
        raise ValueError(f"{source} is a FlowDiffusion {header.get('kind')} file on SD 1.5: give --base, the SD 1.5 "
                         "checkpoint it was fine-tuned from")
    parts = None
    if base is not None:
        from ..drag.sd_checkpoint import load_sd15

        try:
            parts = load_sd15(base)
        except (OSError, ValueError) as error:
            raise type(error)(f"--base {error}") from None
    device = torch.device(device or ("cuda" if parts is not None and torch.cuda.is_available() else "cpu"))
    model, spec, size = load_flowdiffusion_file(source, base_unet=parts.unet if parts is not None else None)
    codec = SDVAECodec(parts.vae.to(device)) if spec.kind == "sd-vae" else spec.build()
    return model.to(device), codec, size


def _run_settings(folder: Path) -> dict:
    """The ``config.json`` of a run folder (given it, or one of its checkpoint folders); {} if none."""
    import json

    for candidate in (folder / "config.json", folder.parent.parent / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except ValueError:
                return {}
    return {}


def command_train_drag(args) -> int:
    if args.part == "flowdiffusion":
        return train_flowdiffusion(args)
    return train_flowgen(args)


def _check_train_options(args, multiple: int) -> int:
    size = args.size or multiple
    if size < 1 or size % multiple:
        raise ValueError(f"--size {size}: expected a multiple of {multiple} (2**depth of the {args.model} FlowGen)")
    for name in ("steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.data in (None, "synthetic") and args.scenes is not None and args.scenes < 1:
        raise ValueError(f"--scenes must be at least 1, got {args.scenes}")
    return size


def _data(args, synthetic, folder):
    if args.data in (None, "synthetic"):
        return synthetic()
    root = Path(args.data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such dataset folder" if not root.exists()
                                else f"--data {root}: is a file, expected a dataset folder (metadata.jsonl + images/)")
    return folder(root)


def _resume(args):
    return None if args.resume == "none" else args.resume
