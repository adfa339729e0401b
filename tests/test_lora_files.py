"""LoRA files written by the trainer: layout per base model, alphas, metadata, diffusers loading."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402

from motionnft.lora import LoraModule, LoraWeights, load_lora, lora_from_peft_state_dict, save_lora  # noqa: E402


def peft_state(prefix: str = "", adapter: str = "") -> dict:
    generator = torch.Generator().manual_seed(0)
    suffix = f".{adapter}" if adapter else ""
    state = {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj"):
        state[f"{prefix}{module}.lora_A{suffix}.weight"] = torch.randn(4, 16, generator=generator)
        state[f"{prefix}{module}.lora_B{suffix}.weight"] = torch.randn(16, 4, generator=generator)
    state[f"{prefix}transformer_blocks.0.attn.to_q.base_layer.weight"] = torch.zeros(16, 16)  # ignored
    return state


@pytest.mark.parametrize("prefix, adapter", [("base_model.model.", ""), ("", "default"), ("", "")])
def test_peft_state_dicts_of_every_form_become_canonical_modules(prefix, adapter):
    lora = lora_from_peft_state_dict(peft_state(prefix, adapter), alpha=8.0, base="flux", metadata={"k": "v"})
    assert sorted(lora.modules) == ["transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.to_q"]
    module = lora.modules["transformer_blocks.0.attn.to_q"]
    assert module.down.shape == (4, 16) and module.up.shape == (16, 4) and module.alpha == 8.0
    assert torch.allclose(module.delta(), 2.0 * module.up @ module.down)


@pytest.mark.parametrize("base, prefix", [("flux", "transformer."), ("qwen_image", "diffusion_model.")])
def test_saved_files_use_the_base_layout_with_alphas_and_metadata(tmp_path, base, prefix):
    lora = lora_from_peft_state_dict(peft_state(), alpha=8.0, base=base, metadata={"motionnft.step": "7"})
    path = save_lora(tmp_path / "x.safetensors", lora)
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
        alpha = handle.get_tensor(f"{prefix}transformer_blocks.0.attn.to_q.alpha")
    assert f"{prefix}transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert f"{prefix}transformer_blocks.0.attn.add_k_proj.lora_B.weight" in keys
    assert all(k.startswith(prefix) for k in keys) and len(keys) == 6
    assert float(alpha) == 8.0 and metadata["motionnft.step"] == "7" and metadata["motionnft.base"] == base
    back = load_lora(path)
    assert back.base == base and set(back.modules) == set(lora.modules)
    for name, module in lora.modules.items():
        assert torch.equal(back.modules[name].down, module.down) and back.modules[name].alpha == 8.0


def test_bad_state_dicts_are_refused():
    with pytest.raises(ValueError, match="no PEFT LoRA keys"):
        lora_from_peft_state_dict({"w": torch.zeros(1)}, 1.0, "flux")
    state = peft_state()
    del state["transformer_blocks.0.attn.to_q.lora_B.weight"]
    with pytest.raises(ValueError, match=r"up \(B\) weight is missing"):
        lora_from_peft_state_dict(state, 1.0, "flux")
    with pytest.raises(ValueError, match="base"):
        lora_from_peft_state_dict(peft_state(), 1.0, "sdxl")


def _module_scale(transformer, name: str) -> float:
    module = dict(transformer.named_modules())[name]
    return float(next(iter(module.scaling.values())))


@pytest.mark.parametrize("kind", ["tiny_flux_kontext", "tiny_qwen_image_edit"])
def test_diffusers_loads_the_file_at_its_trained_scale(tmp_path, kind):
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from motionnft.models import build_model

    model = build_model(kind, tiny_size="test", dtype=torch.float32)
    transformer = model.transformer
    names = [n for n, m in transformer.named_modules() if n.endswith("attn.to_q")][:1] + \
            [n for n, m in transformer.named_modules() if n.endswith("attn.to_k")][:1]
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for name in names:
        layer = dict(transformer.named_modules())[name]
        modules[name] = LoraModule(down=torch.randn(4, layer.in_features, generator=generator) * 0.1,
                                   up=torch.randn(layer.out_features, 4, generator=generator) * 0.1, alpha=8.0)
    base = "flux" if "flux" in kind else "qwen_image"
    path = save_lora(tmp_path / "l.safetensors", LoraWeights(modules, base, {}))
    before = {n: dict(transformer.named_modules())[n].weight.detach().clone() for n in names}
    pipe = model.text_pipeline  # a real FluxKontextPipeline / QwenImageEditPipeline
    pipe.register_modules(transformer=transformer)
    pipe.load_lora_weights(str(path), adapter_name="check")
    transformer.fuse_lora(lora_scale=1.0)
    for name in names:
        fused = dict(transformer.named_modules())[name]
        weight = getattr(fused, "base_layer", fused).weight
        assert torch.allclose(weight - before[name], modules[name].delta(), atol=1e-5), name
