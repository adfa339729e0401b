"""Cost of applying a Kontext-size MotionNFT LoRA, step by step.

    python bench/lora_benchmark.py [--rank 32] [--repeats 5] [--write docs/benchmarks.md]
    <ComfyUI python> bench/lora_benchmark.py --comfyui /path/to/ComfyUI   # + ComfyUI's own registration

The LoRA (random weights, bf16) has the MotionNFT targets: ``to_q/k/v``, ``to_out.0``,
``add_q/k/v_proj``, ``to_add_out`` of the 19 double blocks and ``to_q/k/v`` of the 38
single blocks of FLUX.1 Kontext (width 3072): 52 M parameters at rank 32. Measured:

- write: ``save_lora`` (atomic safetensors write);
- read: reading that file's tensors (warm page cache, so this is memory speed, not disk);
- normalise: layout/base detection and canonical form (``lora_from_state_dict``);
- register: what the node does next — with ``--comfyui``, ComfyUI's key map,
  ``comfy.lora.load_lora`` and ``ModelPatcher.add_patches`` on a full-size Kontext model
  built on the meta device (no weights); without it, only our export of the state dict;
- merge: ``W += strength · alpha/rank · B·A`` for every module as ComfyUI does when it
  loads the model (float32 intermediate, bf16 weights), into a pool of bf16 weights of the
  target shapes; baseline: the same float32 ``B @ A`` matmuls alone, in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from docs_section import write_section  # noqa: E402
from motionnft.lora import (  # noqa: E402
    LoraModule,
    LoraWeights,
    export_state_dict,
    lora_from_state_dict,
    read_safetensors,
    save_lora,
)

WIDTH = 3072
DOUBLE_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                  "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
SINGLE_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v")


def kontext_lora(rank: int, dtype=torch.bfloat16) -> LoraWeights:
    generator = torch.Generator().manual_seed(0)
    names = [f"transformer_blocks.{i}.{t}" for i in range(19) for t in DOUBLE_TARGETS]
    names += [f"single_transformer_blocks.{i}.{t}" for i in range(38) for t in SINGLE_TARGETS]
    modules = {
        name: LoraModule((torch.randn(rank, WIDTH, generator=generator) * 0.01).to(dtype),
                         (torch.randn(WIDTH, rank, generator=generator) * 0.01).to(dtype), 2.0 * rank)
        for name in names
    }
    return LoraWeights(modules, "flux", {"steps": "300", "base_model": "black-forest-labs/FLUX.1-Kontext-dev"})


def timed(function, repeats: int) -> tuple[float, object]:
    result = function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), result


def comfyui_registration(comfyui_dir: Path):
    """A function registering a LoRA's patches on a meta-device Kontext ModelPatcher."""
    sys.path.insert(0, str(comfyui_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.lora
    import comfy.model_detection
    import comfy.model_patcher
    from lora_fixtures import flux_checkpoint_shapes

    state = {k: torch.empty(s, dtype=torch.bfloat16, device="meta")
             for k, s in flux_checkpoint_shapes(WIDTH, double=19, single=38).items()}
    config = comfy.model_detection.model_config_from_unet(state, "")
    config.set_inference_dtype(torch.bfloat16, None)
    model = config.get_model(state, "", device=torch.device("meta"))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    def register(lora: LoraWeights):
        key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
        patches = comfy.lora.load_lora(export_state_dict(lora), key_map, log_missing=False)
        clone = patcher.clone()
        applied = clone.add_patches(patches, 1.0)
        return len(applied)

    version = (comfyui_dir / "comfyui_version.py").read_text() if (comfyui_dir / "comfyui_version.py").exists() else ""
    match = re.search(r'"([\d.]+)"', version)
    return register, f"ComfyUI {match.group(1) if match else comfyui_dir.name}"


def merge_costs(lora: LoraWeights, strength: float, repeats: int) -> tuple[float, float]:
    """(ms for every ComfyUI-style merge, ms for the same B @ A matmuls alone)."""
    modules = list(lora.modules.values())
    pool = [torch.zeros(WIDTH, WIDTH, dtype=torch.bfloat16) for _ in range(8)]

    def merge():
        for index, module in enumerate(modules):
            weight = pool[index % len(pool)]
            work = weight.to(torch.float32)
            diff = torch.mm(module.up.to(torch.float32), module.down.to(torch.float32))
            work += (strength * module.scale) * diff
            weight.copy_(work)

    def matmuls():
        for module in modules:
            torch.mm(module.up.to(torch.float32), module.down.to(torch.float32))

    merge_ms, _ = timed(merge, repeats)
    baseline_ms, _ = timed(matmuls, repeats)
    return merge_ms, baseline_ms


def measure(rank: int, repeats: int, comfyui_dir: Path | None) -> dict:
    load_before = os.getloadavg()[0]
    lora = kontext_lora(rank)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kontext_motionnft_r32.safetensors"
        rows["write"], _ = timed(lambda: save_lora(path, lora), repeats)
        size_mb = path.stat().st_size / 1e6
        rows["read"], (tensors, metadata) = timed(lambda: read_safetensors(path), repeats)
    rows["normalise"], loaded = timed(lambda: lora_from_state_dict(tensors, metadata=metadata), repeats)
    assert len(loaded.modules) == len(lora.modules)
    if comfyui_dir is not None:
        register, host = comfyui_registration(comfyui_dir)
        rows["register"], applied = timed(lambda: register(loaded), repeats)
        assert applied == len(lora.modules), f"ComfyUI registered {applied} of {len(lora.modules)} patches"
        register_what = f"{host}: key map + comfy.lora.load_lora + clone + add_patches ({applied} patches)"
    else:
        rows["register"], _ = timed(lambda: export_state_dict(loaded), repeats)
        register_what = "export of the state dict handed to ComfyUI (run with --comfyui for ComfyUI's own part)"
    rows["merge"], rows["baseline"] = merge_costs(loaded, 1.0, max(1, repeats // 2))
    return {"rows": rows, "modules": len(lora.modules), "params": lora.parameter_count, "size_mb": size_mb,
            "register_what": register_what, "load": (load_before, os.getloadavg()[0])}


def markdown(result: dict, command: str, repeats: int, rank: int) -> str:
    rows = result["rows"]
    beyond_read = rows["normalise"] + rows["register"]
    lines = [
        "<!-- lora-benchmark:start -->",
        "## Applying a Kontext-size MotionNFT LoRA (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}. LoRA: rank {rank}, {result['modules']} modules (attention projections of "
        f"19 double + 38 single blocks, width {WIDTH}), {result['params'] / 1e6:.1f} M parameters, bf16, "
        f"{result['size_mb']:.0f} MB file. Median of {repeats} runs after a warm-up (merge: {max(1, repeats // 2)}). "
        f"Load average of the machine (shared with other jobs) {result['load'][0]:.1f} before and "
        f"{result['load'][1]:.1f} after: compare the ratio, not the absolute times.",
        "",
        "| step | ms | note |",
        "|---|---:|---|",
        f"| write (`save_lora`, atomic) | {rows['write']:.0f} | |",
        f"| read the file | {rows['read']:.0f} | warm page cache: memory speed, a cold disk adds its read time |",
        f"| detect layout + base, normalise | {rows['normalise']:.1f} | `lora_from_state_dict` |",
        f"| map keys + register patches | {rows['register']:.1f} | {result['register_what']} |",
        f"| **beyond reading the file** | **{beyond_read:.1f}** | what the loader node adds to a file read |",
        f"| merge B·A into the weights (all modules) | {rows['merge']:.0f} | ComfyUI's merge maths at model load, "
        f"float32 intermediate into bf16 weights; ratio {rows['merge'] / rows['baseline']:.2f} x the baseline |",
        f"| baseline: the same float32 B @ A matmuls alone | {rows['baseline']:.0f} | same run |",
        "",
        "The merge happens when ComfyUI loads the patched model for sampling (on the GPU there), as for its "
        "stock loader; the node itself only registers patches. GPU: not yet measured (no accelerator was "
        "lent to the session that wrote this benchmark).",
        "<!-- lora-benchmark:end -->",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--comfyui", type=Path, default=None, help="a ComfyUI checkout: measure its registration too "
                        "(run with that ComfyUI's Python)")
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose LoRA section is replaced")
    args = parser.parse_args(argv)
    if args.comfyui is not None and not (args.comfyui / "comfy" / "lora.py").is_file():
        parser.error(f"--comfyui {args.comfyui}: no comfy/lora.py there (expected a ComfyUI checkout)")
    result = measure(args.rank, args.repeats, args.comfyui)
    command = "python bench/lora_benchmark.py" + (f" --rank {args.rank}" if args.rank != 32 else "") + \
        (f" --repeats {args.repeats}" if args.repeats != 5 else "") + (" --comfyui <ComfyUI dir>" if args.comfyui else "")
    table = markdown(result, command + (f" --write {args.write}" if args.write else ""), args.repeats, args.rank)
    print(table)
    if args.write:
        write_section(args.write, "lora-benchmark", table)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
