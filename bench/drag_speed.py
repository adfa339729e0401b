"""Speed of drag editing: FlowGen ms per drag map and FlowDiffusion s per 512² edit (random weights).

Speed does not depend on the weights, so every network here is built at random:

- **FlowGen**, tiny (64² working size) and the paper's full size (256²), on a 512² image with
  3 drags through :func:`motionnft.drag.inference.flowgen_flow` (resizing included), against the
  thin-plate spline (:func:`motionnft.drag.spline.drags_to_flow`) from the same drags at 512²:
  the baseline it replaces, measured in the same run.
- **FlowDiffusion** at SD 1.5 size (a diffusers ``UNet2DConditionModel`` with SD 1.5's
  configuration and 10 input channels, 512² image -> 64² latent) and SD 1.5's VAE
  (``AutoencoderKL``, SD 1.5's configuration): one guided step (one UNet call on a batch of 3:
  unconditional, image, image + flow), the VAE encode of the source and the decode of the result.
  Seconds per edit = ``steps`` x step + encode + decode. Baseline: the plain SD 1.5 UNet's
  classifier-free-guidance step (4 input channels, batch 2) in the same run, so the ratio is the
  price of the two-scale guidance. The tiny FlowDiffusion (64²) is timed over a whole 20-step edit.

Prints a Markdown table; ``--write docs/drag.md`` puts it between this benchmark's markers.
On a GPU: ``python bench/drag_speed.py --device cuda --dtype float16 --repeats 10 --write docs/drag.md``.

    OMP_NUM_THREADS=1 python bench/drag_speed.py --threads 1 --write docs/drag.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.docs_section import write_section  # noqa: E402
from motionnft.drag.flowdiffusion import FlowDiffusion, from_sd_unet, parameter_count  # noqa: E402
from motionnft.drag.flowdiffusion_conditioning import PooledRGBCodec  # noqa: E402
from motionnft.drag.flowdiffusion_sampling import flowdiffusion_edit, make_scheduler  # noqa: E402
from motionnft.drag.flowgen import FlowGen, FlowGenConfig  # noqa: E402
from motionnft.drag.inference import flowgen_flow  # noqa: E402
from motionnft.drag.spline import DragList, drags_to_flow  # noqa: E402

SECTION = "drag-speed"
DRAGS = DragList(torch.tensor([[200.0, 180.0], [300.0, 260.0], [256.0, 400.0]]),
                 torch.tensor([[230.0, 170.0], [320.0, 300.0], [240.0, 380.0]]), (512, 512))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="FlowDiffusion's and the VAE's precision")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (median)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps of an edit (paper: 20)")
    parser.add_argument("--skip-sd", action="store_true", help="time FlowGen and the tiny FlowDiffusion only")
    parser.add_argument("--write", help="Markdown file to put the table into")
    return parser.parse_args(argv)


def median_seconds(function, repeats: int, device: str) -> float:
    """Median wall time of ``function()`` over ``repeats`` runs after one warm-up run."""
    def timed():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()
    return statistics.median(timed() for _ in range(repeats))


def sd15_unet(in_channels: int):
    """A randomly initialised UNet with SD 1.5's configuration (860 M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, in_channels=in_channels, out_channels=4, cross_attention_dim=768,
                                attention_head_dim=8, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280))


def sd15_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def flowgen_rows(args) -> list[tuple[str, str, float, str]]:
    device = args.device
    image = torch.rand(1, 3, 512, 512, device=device)
    spline = median_seconds(lambda: drags_to_flow(DRAGS, 512, 512), args.repeats, "cpu")
    rows = [("thin-plate spline (baseline)", "512² image, 3 drags", spline * 1e3, "ms", 1.0)]
    for name, config in (("tiny", FlowGenConfig.tiny()), ("full (paper)", FlowGenConfig.full())):
        torch.manual_seed(0)
        generator = FlowGen(config).to(device).eval()
        seconds = median_seconds(lambda: flowgen_flow(generator, image, DRAGS), args.repeats, device)
        size = 2 ** config.depth
        rows.append((f"FlowGen {name}, {sum(p.numel() for p in generator.parameters()) / 1e6:.2f} M",
                     f"512² image -> {size}², 3 drags", seconds * 1e3, "ms", seconds / spline))
    return rows


@torch.no_grad()
def flowdiffusion_rows(args) -> list[tuple[str, str, float, str, float | None]]:
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.manual_seed(0)
    tiny = FlowDiffusion.tiny(32).to(device).eval()
    image, flow = torch.rand(1, 3, 64, 64, device=device), torch.randn(1, 2, 64, 64, device=device)
    tiny_edit = median_seconds(lambda: flowdiffusion_edit(tiny, make_scheduler("ddim"), image, flow,
                                                          codec=PooledRGBCodec(2, 2.5), steps=args.steps),
                               args.repeats, device)
    rows = [(f"FlowDiffusion tiny, {parameter_count(tiny) / 1e6:.2f} M", f"64² edit, {args.steps} steps",
             tiny_edit, "s", None)]
    if args.skip_sd:
        return rows
    base = sd15_unet(4).to(device, dtype).eval()
    text = torch.zeros(2, 77, 768, device=device, dtype=dtype)
    latents = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)
    timestep = torch.tensor([500], device=device)
    cfg_step = median_seconds(lambda: base(latents, timestep, text), args.repeats, device)
    model = from_sd_unet(base).to(device, dtype).eval()
    noisy, image_latents = torch.randn(3, 4, 64, 64, device=device, dtype=dtype), torch.randn(3, 4, 64, 64, device=device, dtype=dtype)
    flow_condition = torch.randn(3, 2, 64, 64, device=device, dtype=dtype)
    guided_step = median_seconds(lambda: model(noisy, timestep, image_latents, flow_condition), args.repeats, device)
    vae = sd15_vae().to(device, dtype).eval()
    pixels = torch.rand(1, 3, 512, 512, device=device, dtype=dtype)
    encode = median_seconds(lambda: vae.encode(pixels).latent_dist.mode(), args.repeats, device)
    decode = median_seconds(lambda: vae.decode(torch.randn(1, 4, 64, 64, device=device, dtype=dtype)).sample,
                            args.repeats, device)
    edit = args.steps * guided_step + encode + decode
    baseline_edit = args.steps * cfg_step + encode + decode
    return rows + [
        ("SD 1.5 UNet, CFG step (baseline)", "batch 2 at 64² latent", cfg_step, "s", 1.0),
        ("FlowDiffusion SD 1.5 size, guided step", "batch 3 at 64² latent", guided_step, "s", guided_step / cfg_step),
        ("SD 1.5 VAE encode", "512²", encode, "s", None),
        ("SD 1.5 VAE decode", "512²", decode, "s", None),
        (f"**FlowDiffusion 512² edit** ({args.steps} steps + encode + decode)", "512²", edit, "s",
         edit / baseline_edit),
    ]


def table(rows, args) -> str:
    threads = f", {torch.get_num_threads()} torch thread(s)" if args.device == "cpu" else ""
    lines = [f"**{args.device}{threads}, {args.dtype} for the SD 1.5-size networks; median of {args.repeats} "
             "runs after a warm-up; random weights.** Ratio: against the baseline of its group in the same run "
             "(FlowGen vs the spline; the SD 1.5-size rows vs SD 1.5 with classifier-free guidance).", "",
             "| what | input | time | unit | ratio |", "|---|---|---:|---|---:|"]
    for name, what, value, unit, ratio in rows:
        lines.append(f"| {name} | {what} | {value:.3f} | {unit} | {'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its dtype-cast notice would print for every model built here
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    text = table(flowgen_rows(args) + flowdiffusion_rows(args), args)
    print(text)
    if args.write:
        write_section(Path(args.write), SECTION,
                      f"<!-- {SECTION}:start -->\n{text}\n<!-- {SECTION}:end -->", title="Drag editing")
    return text


if __name__ == "__main__":
    main()
