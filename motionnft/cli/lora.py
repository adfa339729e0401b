"""``motionnft lora info`` and ``motionnft lora convert``: inspect a LoRA, or rewrite it for ComfyUI."""

from __future__ import annotations

import json
from pathlib import Path


def add_lora(commands) -> None:
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
        sub.set_defaults(handler=command_lora)
    info.add_argument("--json", action="store_true", help="print JSON")
    convert.add_argument("out", type=Path, help="output .safetensors file")
    convert.set_defaults(output_files=("out",), input_files=("path",), positionals=("out", "path"))


def command_lora(args) -> int:
    from ..lora import load_lora, save_lora

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
