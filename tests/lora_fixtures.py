"""LoRA state dicts in every layout other trainers write, built by hand from their specs.

Written independently of ``motionnft.lora`` (which reads them), so a test compares the
library against the layouts' own definitions. A LoRA here is a dict ``module -> (down,
up)`` in one naming, with one alpha; ``expected`` gives ``scale · up @ down`` per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Flux in Black Forest Labs names (what ComfyUI's Flux model holds): (out, in) in units of width.
BFL_BLOCK_SHAPES = {
    "double_blocks.{i}.img_attn.qkv": (3, 1), "double_blocks.{i}.txt_attn.qkv": (3, 1),
    "double_blocks.{i}.img_attn.proj": (1, 1), "double_blocks.{i}.txt_attn.proj": (1, 1),
    "single_blocks.{i}.linear1": (7, 1), "single_blocks.{i}.linear2": (1, 5),
}
# diffusers names of the Flux modules above, with the rows of the BFL weight they patch.
FLUX_DIFFUSERS_TO_BFL = {
    "transformer_blocks.{i}.attn.to_q": ("double_blocks.{i}.img_attn.qkv", 0, 1),
    "transformer_blocks.{i}.attn.to_k": ("double_blocks.{i}.img_attn.qkv", 1, 1),
    "transformer_blocks.{i}.attn.to_v": ("double_blocks.{i}.img_attn.qkv", 2, 1),
    "transformer_blocks.{i}.attn.add_q_proj": ("double_blocks.{i}.txt_attn.qkv", 0, 1),
    "transformer_blocks.{i}.attn.add_k_proj": ("double_blocks.{i}.txt_attn.qkv", 1, 1),
    "transformer_blocks.{i}.attn.add_v_proj": ("double_blocks.{i}.txt_attn.qkv", 2, 1),
    "transformer_blocks.{i}.attn.to_out.0": ("double_blocks.{i}.img_attn.proj", 0, 1),
    "transformer_blocks.{i}.attn.to_add_out": ("double_blocks.{i}.txt_attn.proj", 0, 1),
    "single_transformer_blocks.{i}.attn.to_q": ("single_blocks.{i}.linear1", 0, 1),
    "single_transformer_blocks.{i}.attn.to_k": ("single_blocks.{i}.linear1", 1, 1),
    "single_transformer_blocks.{i}.attn.to_v": ("single_blocks.{i}.linear1", 2, 1),
    "single_transformer_blocks.{i}.proj_mlp": ("single_blocks.{i}.linear1", 3, 4),
    "single_transformer_blocks.{i}.proj_out": ("single_blocks.{i}.linear2", 0, 1),
}
QWEN_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                  "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")


def flux_bfl_shapes(width: int, double=(0,), single=(0,)) -> dict[str, tuple[int, int]]:
    shapes = {}
    for template, (out_units, in_units) in BFL_BLOCK_SHAPES.items():
        for i in (single if template.startswith("single") else double):
            shapes[template.format(i=i)] = (out_units * width, in_units * width)
    return shapes


def flux_diffusers_shapes(width: int, double=(0,), single=(0,)) -> dict[str, tuple[int, int]]:
    shapes = {}
    for template, (_, _, units) in FLUX_DIFFUSERS_TO_BFL.items():
        for i in (single if template.startswith("single") else double):
            in_width = 5 * width if template.endswith("proj_out") else width
            shapes[template.format(i=i)] = (units * width, in_width)
    return shapes


def qwen_shapes(width: int, blocks=(0,)) -> dict[str, tuple[int, int]]:
    return {f"transformer_blocks.{i}.{name}": (width, width) for i in blocks for name in QWEN_ATTENTION}


def make_pairs(shapes: dict[str, tuple[int, int]], rank: int, seed: int = 0, dtype=torch.float32, size: float = 0.1):
    """Random ``module -> (down (rank, in), up (out, rank))``; ``size`` sets the delta's scale."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    for name, (out, inp) in shapes.items():
        down = torch.randn(rank, inp, generator=generator) * size
        up = torch.randn(out, rank, generator=generator) * size
        pairs[name] = (down.to(dtype), up.to(dtype))
    return pairs


def expected_deltas(pairs, alpha: float) -> dict[str, torch.Tensor]:
    """``alpha / rank · up @ down`` per module, in float64."""
    return {name: (alpha / down.shape[0]) * (up.double() @ down.double()) for name, (down, up) in pairs.items()}


def flux_diffusers_deltas_in_bfl(deltas: dict[str, torch.Tensor], width: int) -> dict[str, dict[tuple[int, int], torch.Tensor]]:
    """Where each diffusers-named Flux delta lands in the BFL weights: ``bfl -> {(row0, row1): delta}``."""
    placed: dict[str, dict] = {}
    for name, delta in deltas.items():
        for template, (bfl_template, start, units) in FLUX_DIFFUSERS_TO_BFL.items():
            index = _match_template(template, name)
            if index is not None:
                bfl = bfl_template.format(i=index)
                placed.setdefault(bfl, {})[(start * width, (start + units) * width)] = delta
                break
        else:
            raise KeyError(name)
    return placed


def _match_template(template: str, name: str):
    head, tail = template.split("{i}")
    if name.startswith(head) and name.endswith(tail):
        index = name[len(head): len(name) - len(tail)]
        if index.isdigit():
            return int(index)
    return None


def state_dict_in_layout(layout: str, pairs, alpha: float | None) -> dict[str, torch.Tensor]:
    """The keys each trainer writes for ``pairs`` (module names as given).

    kohya / musubi: ``lora_unet_<name with _>.lora_down/up.weight`` + ``.alpha``;
    ai-toolkit: ``diffusion_model.<name>.lora_A/B.weight`` (+ ``.alpha``);
    diffusers: ``transformer.<name>.lora_A/B.weight`` (+ ``.alpha``);
    peft: ``base_model.model.<name>.lora_A/B.weight`` (alpha in adapter_config.json only);
    peft_default: ``<name>.lora_A/B.default.weight`` (a PeftModel's own state dict, unprefixed).
    """
    out = {}
    for name, (down, up) in pairs.items():
        if layout == "kohya":
            stem = "lora_unet_" + name.replace(".", "_")
            out[f"{stem}.lora_down.weight"], out[f"{stem}.lora_up.weight"] = down, up
        elif layout in ("ai-toolkit", "diffusers", "peft", "peft_default"):
            stem = {"ai-toolkit": "diffusion_model.", "diffusers": "transformer.", "peft": "base_model.model.",
                    "peft_default": ""}[layout] + name
            infix = ".default" if layout == "peft_default" else ""
            out[f"{stem}.lora_A{infix}.weight"], out[f"{stem}.lora_B{infix}.weight"] = down, up
        else:
            raise ValueError(layout)
        if alpha is not None and layout not in ("peft", "peft_default"):
            out[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return out


def write_peft_folder(folder: Path, pairs, rank: int, alpha: float, base_model: str, **config) -> Path:
    """A PEFT ``save_pretrained`` folder: adapter_model.safetensors + adapter_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict_in_layout("peft", pairs, None).items()},
              str(folder / "adapter_model.safetensors"))
    targets = sorted({name.split(".", 2)[-1] for name in pairs})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": targets,
        "base_model_name_or_path": base_model, "init_lora_weights": "gaussian", **config,
    }))
    return folder


HEAD = 128  # ComfyUI fixes 24 heads of 128 for both bases


def flux_checkpoint_shapes(width: int = 3072, double: int = 1, single: int = 1) -> dict[str, tuple[int, ...]]:
    """FLUX.1 [dev] / Kontext diffusion-model keys (BFL layout, as ComfyUI loads them)."""
    h, mlp = width, 4 * width
    shapes = {"img_in.weight": (h, 64), "txt_in.weight": (h, 4096), "final_layer.linear.weight": (64, h),
              "final_layer.adaLN_modulation.1.weight": (2 * h, h)}
    for name, width_in in (("time_in", 256), ("vector_in", 768), ("guidance_in", 256)):
        shapes[f"{name}.in_layer.weight"] = (h, width_in)
        shapes[f"{name}.out_layer.weight"] = (h, h)
    for i in range(double):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            shapes.update({f"{block}_mod.lin.weight": (6 * h, h), f"{block}_attn.qkv.weight": (3 * h, h),
                           f"{block}_attn.norm.query_norm.scale": (HEAD,), f"{block}_attn.norm.key_norm.scale": (HEAD,),
                           f"{block}_attn.proj.weight": (h, h), f"{block}_mlp.0.weight": (mlp, h),
                           f"{block}_mlp.2.weight": (h, mlp)})
    for i in range(single):
        block = f"single_blocks.{i}"
        shapes.update({f"{block}.linear1.weight": (3 * h + mlp, h), f"{block}.linear2.weight": (h, h + mlp),
                       f"{block}.norm.query_norm.scale": (HEAD,), f"{block}.norm.key_norm.scale": (HEAD,),
                       f"{block}.modulation.lin.weight": (3 * h, h)})
    return _with_biases(shapes, skip=("norm.",))


def qwen_checkpoint_shapes(width: int = 3072, blocks: int = 1) -> dict[str, tuple[int, ...]]:
    """Qwen-Image diffusion-model keys (diffusers names, which ComfyUI keeps)."""
    h, mlp = width, 4 * width
    shapes = {"img_in.weight": (h, 64), "txt_in.weight": (h, 3584), "txt_norm.weight": (3584,),
              "time_text_embed.timestep_embedder.linear_1.weight": (h, 256),
              "time_text_embed.timestep_embedder.linear_2.weight": (h, h),
              "norm_out.linear.weight": (2 * h, h), "proj_out.weight": (64, h)}
    for i in range(blocks):
        block = f"transformer_blocks.{i}"
        for stream in ("img", "txt"):
            shapes.update({f"{block}.{stream}_mod.1.weight": (6 * h, h),
                           f"{block}.{stream}_mlp.net.0.proj.weight": (mlp, h),
                           f"{block}.{stream}_mlp.net.2.weight": (h, mlp)})
        for name in QWEN_ATTENTION:
            shapes[f"{block}.{name}.weight"] = (h, h)
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            shapes[f"{block}.attn.{name}.weight"] = (HEAD,)
    return _with_biases(shapes, skip=("norm_q", "norm_k", "norm_added", "txt_norm"))


def _with_biases(shapes, skip) -> dict[str, tuple[int, ...]]:
    out = dict(shapes)
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 2 and not any(s in key for s in skip):
            out[key[: -len(".weight")] + ".bias"] = (shape[0],)
    return out
