"""The trainer's LoRA files against ComfyUI's own LoRA loader (comfy.lora), both base models.

ComfyUI is not importable here (another venv, another torch), so a small script runs in
ComfyUI's Python: it builds ComfyUI's key map for FLUX (from its diffusers-name table)
and for a Qwen-Image transformer of the tiny size (ComfyUI's own model class), loads the
file with ``comfy.lora.load_lora`` and reports which keys were used, which were not, and
the scale each patch carries.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

pytest.importorskip("diffusers")

from comfyui_harness import _comfyui_python as comfyui_python  # noqa: E402
from comfyui_harness import comfyui_dir  # noqa: E402

from motionnft.lora import LoraModule, LoraWeights, save_lora  # noqa: E402
from motionnft.models import build_model  # noqa: E402

SCRIPT = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True  # as the harness starts ComfyUI: no GPU here
import comfy.lora, comfy.utils
records = []
logging.getLogger().addHandler(type("H", (logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})())
kind, path, config = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if kind == "flux":
    names = comfy.utils.flux_to_diffusers(config, output_prefix="diffusion_model.")
    key_map = {"transformer." + k[:-len(".weight")]: v for k, v in names.items() if k.endswith(".weight")}
else:
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
    import comfy.ops
    model = QwenImageTransformer2DModel(operations=comfy.ops.disable_weight_init, **config)
    key_map = {"diffusion_model." + k[:-len(".weight")]: "diffusion_model." + k
               for k in model.state_dict() if k.endswith(".weight")}
lora = comfy.utils.load_torch_file(path)
patches = comfy.lora.load_lora(lora, key_map)
alphas = sorted({float(p.weights[2]) for p in patches.values() if hasattr(p, "weights")})
print(json.dumps({"patched": len(patches), "not_loaded": [m for m in records if "not loaded" in m], "alphas": alphas}))
"""


def write_lora(tmp_path, kind: str):
    model = build_model(kind, tiny_size="test", dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for name, layer in model.transformer.named_modules():
        if any(name.endswith(t) for t in model.lora_target_modules) and isinstance(layer, torch.nn.Linear):
            modules[name] = LoraModule(torch.randn(4, layer.in_features, generator=generator),
                                       torch.randn(layer.out_features, 4, generator=generator), alpha=8.0)
    path = save_lora(tmp_path / f"{kind}.safetensors", LoraWeights(modules, model.base, {}))
    return model, modules, path


def run_in_comfyui(kind: str, path, config: dict) -> dict:
    root = comfyui_dir()
    out = subprocess.run([comfyui_python(root), "-c", SCRIPT, str(root), kind, str(path), json.dumps(config)],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_comfyui_loads_every_module_of_a_kontext_lora(tmp_path):
    model, modules, path = write_lora(tmp_path, "tiny_flux_kontext")
    config = model.transformer.config
    result = run_in_comfyui("flux", path, {"depth": config.num_layers, "depth_single_blocks": config.num_single_layers,
                                           "hidden_size": config.num_attention_heads * config.attention_head_dim})
    assert result["not_loaded"] == []
    # q, k, v (and their text-stream twins) are fused in ComfyUI's FLUX: patches land on fused weights
    assert result["patched"] > 0 and result["alphas"] == [8.0]


def test_comfyui_loads_every_module_of_a_qwen_image_lora(tmp_path):
    model, modules, path = write_lora(tmp_path, "tiny_qwen_image_edit")
    config = model.transformer.config
    result = run_in_comfyui("qwen", path, {
        "patch_size": config.patch_size, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "num_layers": config.num_layers, "attention_head_dim": config.attention_head_dim,
        "num_attention_heads": config.num_attention_heads, "joint_attention_dim": config.joint_attention_dim,
        "axes_dims_rope": list(config.axes_dims_rope)})
    assert result["not_loaded"] == []
    assert result["patched"] == len(modules) and result["alphas"] == [8.0]
