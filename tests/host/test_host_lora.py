"""LoRA loaders in a real ComfyUI: every layout patches base + strength · scale · B·A.

Tiny but structurally real diffusion models are built once: Flux in the Black Forest
Labs layout (one double + one single block) and Qwen-Image (one block), at the width
ComfyUI's model detection fixes (24 heads × 128 = 3072), random bf16 weights, loaded by
the core ``UNETLoader``. LoRAs in every layout are applied by our nodes and by the stock
``LoraLoaderModelOnly``; a test-only node (``host_test_nodes``) has ComfyUI merge the
patches as for sampling and writes the weights back, which are compared with the maths.
"""

from __future__ import annotations

import itertools
import json
import shutil
import zlib

import pytest
import torch
from comfyui_harness import ComfyUIServer
from lora_fixtures import (
    expected_deltas,
    flux_checkpoint_shapes,
    flux_bfl_shapes,
    flux_diffusers_deltas_in_bfl,
    flux_diffusers_shapes,
    make_pairs,
    qwen_checkpoint_shapes,
    qwen_shapes,
    state_dict_in_layout,
    write_peft_folder,
)
from safetensors.torch import load_file, save_file

from motionnft.lora import LoraModule, LoraWeights, save_lora

WIDTH = 3072
RANK = 4
ALPHA = 8.0        # scale alpha / rank = 2
STRENGTH = 0.75
FLUX_FILE = "motionnft_tiny_flux.safetensors"
QWEN_FILE = "motionnft_tiny_qwen_image.safetensors"
_runs = itertools.count()


def write_checkpoint(path, shapes, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    tensors = {key: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) for key, shape in shapes.items()}
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def checkpoints(comfyui: ComfyUIServer) -> dict[str, dict[str, torch.Tensor]]:
    """Both tiny models in models/diffusion_models; returns their weights (float32)."""
    folder = comfyui.models_dir / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    (comfyui.models_dir / "loras").mkdir(parents=True, exist_ok=True)
    weights = {}
    for base, name, shapes, seed in (("flux", FLUX_FILE, flux_checkpoint_shapes(), 1),
                                     ("qwen_image", QWEN_FILE, qwen_checkpoint_shapes(), 2)):
        if not (folder / name).exists():
            write_checkpoint(folder / name, shapes, seed)
        weights[base] = load_file(str(folder / name))
    return weights


# Graph helpers -----------------------------------------------------------------------------

def unet(node_id: str, base: str) -> dict:
    return {node_id: {"class_type": "UNETLoader",
                      "inputs": {"unet_name": FLUX_FILE if base == "flux" else QWEN_FILE, "weight_dtype": "default"}}}


def our_loader(base: str, lora_name: str, strength=STRENGTH, alpha=0.0) -> dict:
    node = "MotionNFT_LoadLoraKontext" if base == "flux" else "MotionNFT_LoadLoraQwenImageEdit"
    return {"class_type": node, "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength": strength, "alpha": alpha}}


def stock_loader(lora_name: str, strength=STRENGTH) -> dict:
    return {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": strength}}


def read_weights(comfyui: ComfyUIServer, base: str, loader: dict | None, keys) -> tuple[dict[str, torch.Tensor], dict]:
    """Run UNETLoader -> loader -> weight readback; return the merged weights and the outputs."""
    filename = f"weights_{next(_runs)}.safetensors"
    graph = {**unet("1", base),
             "3": {"class_type": "HostTest_SaveModelWeights",
                   "inputs": {"model": ["2", 0] if loader else ["1", 0], "keys": ",".join(keys), "filename": filename}}}
    if loader:
        graph["2"] = loader
    outputs = comfyui.run(graph, timeout=600)
    path = comfyui.output_dir / filename
    weights = load_file(str(path))
    path.unlink()
    return weights, outputs


def assert_patched(weights, base_weights, deltas_by_key, strength=STRENGTH) -> None:
    """Each weight == base + strength · delta (deltas given per key, optionally per row range)."""
    assert set(weights) == set(deltas_by_key)
    for key, parts in deltas_by_key.items():
        actual = weights[key].float()
        expected = base_weights[key].float().clone()
        for rows, delta in parts.items():
            expected[rows[0]:rows[1]] += strength * delta.float()
        change = (expected - base_weights[key].float()).abs().max()
        tolerance = 1e-5 if actual.dtype == weights[key].dtype == torch.float32 else 1e-2
        assert change > 100 * tolerance, f"{key}: the LoRA changes too little for the test to tell"
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance, msg=key)


def whole(deltas: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Deltas that cover whole weights, keyed by ``<module>.weight``."""
    return {f"{name}.weight": {(0, delta.shape[0]): delta} for name, delta in deltas.items()}


def in_bfl(deltas: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {f"{bfl}.weight": parts for bfl, parts in flux_diffusers_deltas_in_bfl(deltas, WIDTH).items()}


# LoRA files in every layout ------------------------------------------------------------------

def lora_case(comfyui: ComfyUIServer, base: str, layout: str):
    """Write one LoRA file in ``layout`` into models/loras; return (lora_name, per-key deltas at its file's scale)."""
    loras = comfyui.models_dir / "loras"
    seed = zlib.crc32(f"{base}/{layout}".encode()) % 1000
    if base == "flux" and layout in ("kohya", "ai-toolkit"):  # these trainers write BFL names, fused qkv
        pairs = make_pairs(flux_bfl_shapes(WIDTH), RANK, seed)
        deltas = whole(expected_deltas(pairs, ALPHA))
    else:
        shapes = flux_diffusers_shapes(WIDTH) if base == "flux" else qwen_shapes(WIDTH)
        pairs = make_pairs(shapes, RANK, seed)
        alpha = 1.0 * RANK if layout == "converted" else ALPHA  # the converted release lost its alpha
        raw = expected_deltas(pairs, alpha)
        deltas = in_bfl(raw) if base == "flux" else whole(raw)
    name = f"{base}_{layout}.safetensors"
    if layout == "motionnft":
        modules = {n: LoraModule(d, u, ALPHA) for n, (d, u) in pairs.items()}
        save_lora(loras / name, LoraWeights(modules, base, {"steps": "300", "reward_summary": "motion 0.8"}))
    elif layout == "peft":
        folder = loras / f"{base}_peft"
        shutil.rmtree(folder, ignore_errors=True)
        write_peft_folder(folder, pairs, RANK, ALPHA, "black-forest-labs/FLUX.1-Kontext-dev" if base == "flux" else "Qwen/Qwen-Image-Edit-2509")
        name = f"{base}_peft/adapter_model.safetensors"
    else:
        state = state_dict_in_layout("diffusers" if layout == "converted" else layout, pairs,
                                     None if layout == "converted" else ALPHA)
        save_file({k: v.contiguous() for k, v in state.items()}, str(loras / name))
    return name, deltas


def scaled(deltas, factor):
    return {key: {rows: factor * d for rows, d in parts.items()} for key, parts in deltas.items()}


STOCK_LAYOUTS = ["motionnft", "diffusers", "converted", "kohya", "ai-toolkit"]


@pytest.mark.parametrize("base", ["flux", "qwen_image"])
@pytest.mark.parametrize("layout", STOCK_LAYOUTS + ["peft"])
def test_every_layout_patches_base_plus_strength_scale_BA(comfyui, checkpoints, base, layout):
    name, deltas = lora_case(comfyui, base, layout)
    keys = sorted(deltas)
    weights, outputs = read_weights(comfyui, base, our_loader(base, name), keys)
    assert_patched(weights, checkpoints[base], deltas)
    (report,) = outputs["2"]["motionnft_lora"]
    assert report["matched"] == report["modules"] and report["unmatched"] == []
    if layout in STOCK_LAYOUTS:
        # ComfyUI's own loader reads the same file to the same weights.
        stock, _ = read_weights(comfyui, base, stock_loader(name), keys)
        assert_patched(stock, checkpoints[base], deltas)


@pytest.mark.parametrize("base", ["flux", "qwen_image"])
def test_the_converted_official_release_applies_at_its_trained_scale_with_alpha_64(comfyui, checkpoints, base):
    name, deltas_at_scale_1 = lora_case(comfyui, base, "converted")
    keys = sorted(deltas_at_scale_1)
    trained_alpha = 2.0 * RANK  # the release: alpha 64 at rank 32; here alpha 8 at rank 4
    weights, outputs = read_weights(comfyui, base, our_loader(base, name, alpha=trained_alpha), keys)
    assert_patched(weights, checkpoints[base], scaled(deltas_at_scale_1, 2.0))
    info = outputs["2"]["text"][0]
    assert "alpha source: given" in info and "scale alpha/rank 2" in info


def test_patches_never_leak_into_the_base_model(comfyui, checkpoints):
    name, deltas = lora_case(comfyui, "qwen_image", "motionnft")
    keys = sorted(deltas)
    read_weights(comfyui, "qwen_image", our_loader("qwen_image", name), keys)
    plain, _ = read_weights(comfyui, "qwen_image", None, keys)
    for key in keys:
        assert torch.equal(plain[key].float(), checkpoints["qwen_image"][key].float()), key


def test_info_reports_metadata_scale_and_unmatched_modules(comfyui, checkpoints):
    loras = comfyui.models_dir / "loras"
    pairs = make_pairs({**flux_diffusers_shapes(WIDTH), **flux_diffusers_shapes(WIDTH, double=(7,), single=(20,))}, RANK, 11)
    modules = {n: LoraModule(d, u, ALPHA) for n, (d, u) in pairs.items()}
    save_lora(loras / "flux_partial.safetensors", LoraWeights(modules, "flux", {"steps": "300"}))
    outputs = comfyui.run({**unet("1", "flux"), "2": our_loader("flux", "flux_partial.safetensors"),
                           "3": {"class_type": "HostTest_SaveModelWeights",
                                 "inputs": {"model": ["2", 0], "keys": "img_in.weight", "filename": "unused.safetensors"}}})
    (report,) = outputs["2"]["motionnft_lora"]
    assert report["modules"] == 26 and report["matched"] == 13
    assert "transformer_blocks.7.attn.to_q" in report["unmatched"]
    info = outputs["2"]["text"][0]
    assert "13 of 26 LoRA modules patched" in info and "NOT MATCHED (13 modules" in info
    assert "steps: 300" in info and "motionnft.base: flux" in info
    assert "strength 0.75 x scale alpha/rank 2 = 1.5" in info


def test_a_lora_for_the_other_base_is_refused(comfyui, checkpoints):
    lora_case(comfyui, "qwen_image", "motionnft")
    message = comfyui.run_expecting_error({**unet("1", "flux"), "2": our_loader("flux", "qwen_image_motionnft.safetensors"),
                                           "3": _sink()})
    assert "made for Qwen-Image-Edit" in message and "not for FLUX.1 Kontext" in message
    message = comfyui.run_expecting_error({**unet("1", "flux"), "2": our_loader("qwen_image", "qwen_image_motionnft.safetensors"),
                                           "3": _sink()})
    assert "patches a Qwen-Image-Edit model" in message and "'flux'" in message


def test_a_lora_matching_nothing_or_of_another_size_is_refused(comfyui, checkpoints):
    loras = comfyui.models_dir / "loras"
    far = make_pairs(qwen_shapes(WIDTH, blocks=(40,)), RANK)
    save_lora(loras / "qwen_far.safetensors",
              LoraWeights({n: LoraModule(d, u, ALPHA) for n, (d, u) in far.items()}, "qwen_image", {}))
    message = comfyui.run_expecting_error({**unet("1", "qwen_image"), "2": our_loader("qwen_image", "qwen_far.safetensors"),
                                           "3": _sink()})
    assert "none of the 8 LoRA modules matches" in message
    small = make_pairs(qwen_shapes(64, blocks=(0, 59)), RANK)
    save_lora(loras / "qwen_small.safetensors",
              LoraWeights({n: LoraModule(d, u, ALPHA) for n, (d, u) in small.items()}, "qwen_image", {}))
    message = comfyui.run_expecting_error({**unet("1", "qwen_image"), "2": our_loader("qwen_image", "qwen_small.safetensors"),
                                           "3": _sink()})
    assert "model of another size" in message and "64x64" in message


def test_loaders_are_listed_with_their_widgets(comfyui):
    info = comfyui.object_info()
    for node, label in (("MotionNFT_LoadLoraKontext", "FLUX.1 Kontext"), ("MotionNFT_LoadLoraQwenImageEdit", "Qwen-Image-Edit")):
        entry = info[node]
        assert label in entry["display_name"] and entry["output"] == ["MODEL", "STRING"]
        assert set(entry["input"]["required"]) == {"model", "lora_name", "strength", "alpha"}
    assert json.dumps(info["MotionNFT_LoadLoraKontext"]["input"]["required"]["alpha"]).count("64") >= 1


def _sink() -> dict:
    return {"class_type": "HostTest_SaveModelWeights",
            "inputs": {"model": ["2", 0], "keys": "img_in.weight", "filename": "unused.safetensors"}}
