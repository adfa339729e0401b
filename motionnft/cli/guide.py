"""``motionnft guide``: edit one image so that its pixels move as a target flow says (Motion Guidance)."""

from __future__ import annotations

import sys
from pathlib import Path

from .edit import model_arguments, model_spec


def add_guide(commands) -> None:
    from ..guidance import DEFAULT_STEPS, GuidanceConfig
    from ..guidance.alignment import GUIDE_FLOWS

    defaults = GuidanceConfig()
    guide = commands.add_parser(
        "guide", help="edit an image so that its pixels move as a target flow says (Motion Guidance)",
        description="Sample an edit of IMAGE with a base model (+ LoRA), steered at each guided step so that "
        "the flow from IMAGE to the result matches the target flow (Geng & Owens, ICLR 2024). The same noise is "
        "also sampled unguided, and the flow error of both to the target is printed (measured with a "
        "non-guiding flow estimator).",
    )
    model_arguments(guide)
    guide.add_argument("--image", type=Path, required=True, help="the source image")
    guide.add_argument("--flow", type=Path, required=True,
                       help="target flow of IMAGE's pixels, source -> result (.flo, or .npy/.npz (H, W, 2) or (2, H, W))")
    guide.add_argument("--mask", type=Path, default=None,
                       help="edit mask image (white = may change); outside it the result keeps the source "
                       "(default: where the target flow moves pixels and where they land, grown by 1/20 of the "
                       "shorter side)")
    guide.add_argument("--whole-image", action="store_true",
                       help="no edit mask: every pixel may change (less reliable: see docs/guidance.md)")
    guide.add_argument("--prompt", default="", help="instruction for the model (default empty)")
    guide.add_argument("--out", type=Path, required=True, help="the guided result (PNG)")
    guide.add_argument("--unguided-out", type=Path, default=None, help="also save the unguided result")
    sampling = guide.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"sampler steps (default {DEFAULT_STEPS})")
    sampling.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    sampling.add_argument("--resolution", type=int, default=None,
                          help="working size ~RESOLUTION^2 (default: the tiny preset's for tiny models, 1024 otherwise)")
    sampling.add_argument("--guidance", type=float, default=None, help="FLUX.1 Kontext embedded guidance (default 2.5)")
    motion = guide.add_argument_group("motion guidance (defaults: the project's recipe, see docs/guidance.md)")
    motion.add_argument("--guide-flow", default="correlation", choices=GUIDE_FLOWS,
                        help="differentiable flow that guides (default correlation: weight-free, for small images; "
                        "raft_* / unimatch need their weight file)")
    motion.add_argument("--guide-weights", default=None, help="weight file of the guiding flow network")
    motion.add_argument("--iterations", type=int, default=None, help="RAFT iterations while guiding (paper: 5)")
    motion.add_argument("--flow-scale", type=float, default=1.0, help="guiding flow at this fraction of the size")
    motion.add_argument("--flow-weight", type=float, default=defaults.flow_weight,
                        help=f"weight of the flow term (default {defaults.flow_weight:g})")
    motion.add_argument("--colour-weight", type=float, default=defaults.colour_weight,
                        help=f"weight of the colour term (default {defaults.colour_weight:g})")
    motion.add_argument("--scale", type=float, default=defaults.scale, help=f"gradient scale (default {defaults.scale:g})")
    motion.add_argument("--recursions", type=int, default=defaults.recursions,
                        help=f"passes per guided step (default {defaults.recursions}; paper 10)")
    motion.add_argument("--start", type=float, default=defaults.start,
                        help=f"first guided step, fraction of the schedule (default {defaults.start:g})")
    motion.add_argument("--end", type=float, default=defaults.end,
                        help=f"guidance stops at this fraction (default {defaults.end:g})")
    measure = guide.add_argument_group("measurement")
    measure.add_argument("--measure-backend", default="dis", help="flow estimator that scores the results (default dis)")
    measure.add_argument("--measure-preset", default="medium", help="its preset (default medium)")
    guide.add_argument("--quiet", action="store_true", help="no progress bar")
    guide.set_defaults(handler=command_guide, output_files=("out", "unguided_out"),
                       input_files=("image", "flow", "mask"))


def command_guide(args) -> int:
    import torch

    from ..flow import create_estimator, read_flow_file, resize_flow
    from ..generate import EditGenerator, GenerationSettings
    from ..guidance import GuidanceConfig, default_edit_mask, guided_edit
    from ..guidance.alignment import flow_alignment, guidance_flow
    from ..image import load_image, resize_image, save_image

    source = load_image(args.image)
    target = read_flow_file(args.flow)[None]
    if tuple(target.shape[-2:]) != tuple(source.shape[-2:]):
        raise ValueError(f"--flow {args.flow} is {target.shape[-1]}x{target.shape[-2]} but --image {args.image} is "
                         f"{source.shape[-1]}x{source.shape[-2]}: the flow must describe the image's own pixels")
    mask = None
    if args.mask is not None:
        mask = load_image(args.mask).mean(dim=1, keepdim=True)
        if tuple(mask.shape[-2:]) != tuple(source.shape[-2:]):
            raise ValueError(f"--mask {args.mask} is {mask.shape[-1]}x{mask.shape[-2]}, --image is "
                             f"{source.shape[-1]}x{source.shape[-2]}: expected the image's size")
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    config = GuidanceConfig().replace(flow_weight=args.flow_weight, colour_weight=args.colour_weight,
                                      scale=args.scale, recursions=args.recursions, start=args.start, end=args.end)
    measure = create_estimator(args.measure_backend, args.measure_preset)
    generator = EditGenerator.from_spec(model_spec(args), GenerationSettings(steps=args.steps, seed=args.seed,
                                                                             resolution=args.resolution))
    model = generator.model
    flow_fn = guidance_flow(args.guide_flow, args.guide_weights, args.iterations, args.flow_scale, model.device)
    size = generator.size_for(*source.shape[-2:])
    # the image and its flow are resized together (non-uniformly when the working size rounds the aspect)
    work_source, work_target = resize_image(source, size), resize_flow(target, size)
    if mask is not None:
        work_mask = (resize_image(mask.expand(-1, 3, -1, -1), size)[:, :1] > 0.5).float()
    else:
        work_mask = None if args.whole_image else default_edit_mask(work_target)
    with torch.no_grad():
        condition = model.encode_condition(args.prompt, work_source, size)
    noise = model.noise(1, size, torch.Generator().manual_seed(args.seed))
    results = {}
    for name, flow in (("unguided", None), ("guided", work_target)):
        bar = _progress(args, name, config, flow is not None)
        edit = guided_edit(model, condition, noise, size, args.steps, work_source, flow, flow_fn, config,
                           edit_mask=work_mask, generator=torch.Generator().manual_seed(args.seed + 1),
                           callback=bar)
        results[name] = (edit.images, flow_alignment(work_source, edit.images, work_target, measure),
                         edit.sample.guided_calls)
    save_image(results["guided"][0], args.out)
    if args.unguided_out is not None:
        save_image(results["unguided"][0], args.unguided_out)
    print(f"target flow {args.flow}: mean {target.norm(dim=1).mean():.2f} px, max {target.norm(dim=1).max():.2f} px; "
          f"working size {size[1]}x{size[0]}; flow of the results measured by {measure!r}")
    for name, (_, alignment, guided_calls) in results.items():
        print(f"{name:>9}: {alignment.summary()}  ({guided_calls} guided passes)")
    print(f"{args.out}: the guided result" + (f"; {args.unguided_out}: the unguided one" if args.unguided_out else ""))
    return 0


def _progress(args, name: str, config, guided: bool):
    """A ``callback(step, steps)`` drawing a tqdm bar (None with --quiet)."""
    if args.quiet:
        return None
    from tqdm import tqdm

    bar = tqdm(total=args.steps, desc=name, unit="step", file=sys.stderr, leave=False)

    def update(step: int, steps: int) -> None:
        bar.update(step - bar.n)
        if step == steps:
            bar.close()

    return update
