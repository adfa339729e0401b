"""LoRA files: every layout reads to the same maths, written files load at alpha / rank."""

from __future__ import annotations

import json

import pytest
import torch
from lora_fixtures import (
    expected_deltas,
    flux_bfl_shapes,
    flux_diffusers_deltas_in_bfl,
    flux_diffusers_shapes,
    make_pairs,
    qwen_shapes,
    state_dict_in_layout,
    write_peft_folder,
)
from safetensors import safe_open
from safetensors.torch import save_file

from motionnft.lora import (
    NO_ALPHA,
    LoraModule,
    LoraWeights,
    detect_base,
    export_state_dict,
    load_lora,
    lora_from_peft_state_dict,
    lora_from_state_dict,
    save_lora,
)

WIDTH = 8
RANK = 4
ALPHA = 8.0  # alpha != rank: scale 2, so a loader that ignores alpha is off by a factor 2


def assert_deltas(lora: LoraWeights, expected: dict[str, torch.Tensor]) -> None:
    assert set(lora.modules) == set(expected)
    for name, delta in expected.items():
        torch.testing.assert_close(lora.modules[name].delta(torch.float64), delta, rtol=1e-6, atol=1e-9, msg=name)


def save(tmp_path, name, state_dict, metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    return path


def flux_lora(alpha=ALPHA, dtype=torch.float32, seed=0) -> LoraWeights:
    pairs = make_pairs(flux_diffusers_shapes(WIDTH, double=(0, 18), single=(0, 37)), RANK, seed, dtype)
    return LoraWeights({n: LoraModule(d, u, alpha) for n, (d, u) in pairs.items()}, "flux", {"steps": "300"})


def qwen_lora(alpha=ALPHA, seed=1) -> LoraWeights:
    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(0, 59)), RANK, seed)
    return LoraWeights({n: LoraModule(d, u, alpha) for n, (d, u) in pairs.items()}, "qwen_image", {})


# Round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [flux_lora, qwen_lora], ids=["flux", "qwen_image"])
def test_saved_file_reads_back_identical_with_alpha_and_metadata(tmp_path, make):
    lora = make()
    lora.metadata.update({"reward_summary": "motion 0.81", "base_model": "test"})
    path = save_lora(tmp_path / "out.safetensors", lora)
    back = load_lora(path)
    assert back.base == lora.base and back.layout == "motionnft"
    assert back.alpha_source == "the file's alpha tensors"
    for name, module in lora.modules.items():
        assert torch.equal(back.modules[name].down, module.down) and torch.equal(back.modules[name].up, module.up)
        assert back.modules[name].alpha == ALPHA and back.modules[name].scale == 2.0
    assert back.metadata["steps" if make is flux_lora else "base_model"] == lora.metadata.get("steps", "test")
    assert back.metadata["reward_summary"] == "motion 0.81"
    assert back.metadata["motionnft.base"] == lora.base
    assert back.metadata["motionnft.rank"] == str(RANK) and back.metadata["motionnft.alpha"] == "8"
    assert "attn.to_q" in json.loads(back.metadata["motionnft.target_modules"])


def test_written_keys_are_the_ones_both_hosts_map(tmp_path):
    flux_keys = set(export_state_dict(flux_lora()))
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in flux_keys
    assert "transformer.single_transformer_blocks.37.proj_mlp.alpha" in flux_keys
    qwen_keys = set(export_state_dict(qwen_lora()))
    assert "diffusion_model.transformer_blocks.59.attn.to_add_out.lora_B.weight" in qwen_keys
    assert "diffusion_model.transformer_blocks.59.attn.to_add_out.alpha" in qwen_keys
    assert not any(k.startswith("transformer.") for k in qwen_keys)


def test_bf16_weights_keep_their_dtype(tmp_path):
    lora = flux_lora(dtype=torch.bfloat16)
    back = load_lora(save_lora(tmp_path / "bf16.safetensors", lora))
    module = back.modules["transformer_blocks.0.attn.to_q"]
    assert module.down.dtype == torch.bfloat16 and module.up.dtype == torch.bfloat16


def test_modules_with_another_alpha_keep_their_delta_in_the_file(tmp_path):
    lora = flux_lora()
    lora.modules["single_transformer_blocks.0.proj_out"].alpha = 2.0  # scale 0.5 among scale-2 modules
    expected = {n: m.delta(torch.float64) for n, m in lora.modules.items()}
    path = save_lora(tmp_path / "mixed.safetensors", lora)
    with safe_open(str(path), "pt") as handle:
        alphas = {handle.get_tensor(k).item() for k in handle.keys() if k.endswith(".alpha")}
    assert alphas == {ALPHA}  # one alpha in the file: diffusers' alpha patterns match by suffix
    assert_deltas(load_lora(path), expected)


def test_save_is_atomic_and_refuses_non_canonical_names(tmp_path):
    path = save_lora(tmp_path / "keep.safetensors", flux_lora())
    before = path.read_bytes()
    bad = flux_lora()
    bad.modules["double_blocks.0.img_attn.qkv"] = bad.modules.pop("transformer_blocks.0.attn.to_q")
    with pytest.raises(ValueError, match="double_blocks.0.img_attn.qkv"):
        save_lora(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]
    with pytest.raises(ValueError, match="metadata"):
        save_lora(tmp_path / "x.safetensors", LoraWeights(flux_lora().modules, "flux", {"steps": 3}))
    with pytest.raises(ValueError, match="base"):
        save_lora(tmp_path / "x.safetensors", LoraWeights(flux_lora().modules, "sdxl", {}))


# Every layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("layout,alpha_in_file,expected_layout", [
    ("diffusers", True, "diffusers"),
    ("ai-toolkit", True, "ai-toolkit"),
    ("kohya", True, "kohya"),
    ("peft_default", False, "bare"),
])
def test_qwen_layouts_read_to_the_same_deltas(tmp_path, layout, alpha_in_file, expected_layout):
    pairs = make_pairs({**qwen_shapes(WIDTH, blocks=(0, 59)),
                        "transformer_blocks.3.img_mod.1": (6 * WIDTH, WIDTH),
                        "transformer_blocks.3.txt_mlp.net.0.proj": (4 * WIDTH, WIDTH),
                        "img_in": (WIDTH, 16)}, RANK, seed=2)
    path = save(tmp_path, "q.safetensors", state_dict_in_layout(layout, pairs, ALPHA if alpha_in_file else None))
    lora = load_lora(path, alpha=None if alpha_in_file else ALPHA)
    assert lora.base == "qwen_image" and lora.layout == expected_layout
    assert_deltas(lora, expected_deltas(pairs, ALPHA))


@pytest.mark.parametrize("layout", ["kohya", "ai-toolkit"])
def test_flux_fused_bfl_layouts_split_into_diffusers_modules(tmp_path, layout):
    bfl = make_pairs(flux_bfl_shapes(WIDTH, double=(0, 18), single=(0, 37)), RANK, seed=3)
    state = state_dict_in_layout(layout, bfl, ALPHA)
    state["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, 4)
    lora = load_lora(save(tmp_path, "f.safetensors", state))
    assert lora.base == "flux" and lora.layout == layout
    assert lora.ignored_keys == ["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    assert len(lora.modules) == 2 * 8 + 2 * 5
    # Put every canonical delta back where ComfyUI's fused weights hold it: it must rebuild
    # each fused delta exactly, row block by row block.
    placed = flux_diffusers_deltas_in_bfl({n: m.delta(torch.float64) for n, m in lora.modules.items()}, WIDTH)
    for name, delta in expected_deltas(bfl, ALPHA).items():
        rebuilt = torch.zeros_like(delta)
        for (row0, row1), part in placed[name].items():
            rebuilt[row0:row1] = part
        torch.testing.assert_close(rebuilt, delta, rtol=1e-6, atol=1e-9, msg=name)


def test_flux_bfl_modulation_and_final_layer_names(tmp_path):
    pairs = make_pairs({"double_blocks.0.img_mod.lin": (6 * WIDTH, WIDTH), "single_blocks.2.modulation.lin": (3 * WIDTH, WIDTH),
                        "final_layer.adaLN_modulation.1": (2 * WIDTH, WIDTH), "txt_in": (WIDTH, 4096)}, RANK, seed=4)
    lora = load_lora(save(tmp_path, "m.safetensors", state_dict_in_layout("kohya", pairs, ALPHA)))
    deltas = expected_deltas(pairs, ALPHA)
    got = {n: m.delta(torch.float64) for n, m in lora.modules.items()}
    torch.testing.assert_close(got["transformer_blocks.0.norm1.linear"], deltas["double_blocks.0.img_mod.lin"])
    torch.testing.assert_close(got["single_transformer_blocks.2.norm.linear"], deltas["single_blocks.2.modulation.lin"])
    torch.testing.assert_close(got["context_embedder"], deltas["txt_in"])
    # BFL's final modulation is (shift, scale); diffusers' norm_out is (scale, shift).
    final = deltas["final_layer.adaLN_modulation.1"]
    torch.testing.assert_close(got["norm_out.linear"], torch.cat([final[WIDTH:], final[:WIDTH]]))


@pytest.mark.parametrize("base", ["flux", "qwen_image"])
def test_peft_folder_takes_alpha_from_adapter_config(tmp_path, base):
    shapes = flux_diffusers_shapes(WIDTH, single=(5,)) if base == "flux" else qwen_shapes(WIDTH, blocks=(30,))
    pairs = make_pairs(shapes, 32, seed=5)
    folder = write_peft_folder(tmp_path / "adapter", pairs, rank=32, alpha=64,
                               base_model="black-forest-labs/FLUX.1-Kontext-dev" if base == "flux" else "Qwen/Qwen-Image-Edit-2509")
    lora = load_lora(folder)
    assert lora.base == base and lora.layout == "peft" and lora.alpha_source == "adapter_config.json"
    assert lora.scales == [2.0]
    assert_deltas(lora, expected_deltas(pairs, 64))
    assert json.loads(lora.metadata["adapter_config"])["lora_alpha"] == 64
    # The file itself, picked inside the folder, finds its config too.
    assert load_lora(folder / "adapter_model.safetensors").scales == [2.0]


def test_peft_alpha_pattern_and_rslora(tmp_path):
    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(0, 40)), 16, seed=6)
    folder = write_peft_folder(tmp_path / "a", pairs, rank=16, alpha=32, base_model="Qwen/Qwen-Image-Edit",
                               alpha_pattern={"transformer_blocks.40.attn.to_q": 8})
    lora = load_lora(folder)
    assert lora.modules["transformer_blocks.40.attn.to_q"].scale == 0.5
    assert lora.modules["transformer_blocks.0.attn.to_q"].scale == 2.0
    folder = write_peft_folder(tmp_path / "b", pairs, rank=16, alpha=32, base_model="Qwen/Qwen-Image-Edit", use_rslora=True)
    assert load_lora(folder).scales == [pytest.approx(32 / 4)]  # alpha / sqrt(r)


def test_official_converted_release_needs_its_alpha(tmp_path):
    # The release's adapter_model_converted.safetensors: PEFT weights renamed to
    # transformer.<module>, alpha dropped (trained at r=32, lora_alpha=64).
    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(0, 59)), 32, seed=7)
    path = save(tmp_path, "adapter_model_converted.safetensors", state_dict_in_layout("diffusers", pairs, None))
    plain = load_lora(path)
    assert plain.layout == "diffusers" and plain.scales == [1.0]
    assert plain.alpha_source == NO_ALPHA
    assert "alpha 64" in plain.describe()
    trained = load_lora(path, alpha=64)
    assert trained.scales == [2.0] and trained.alpha_source == "given"
    assert_deltas(trained, expected_deltas(pairs, 64))
    # Shipped beside the PEFT config, the config's lora_alpha is found without help.
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 32, "lora_alpha": 64}))
    assert load_lora(path).scales == [2.0]


def test_with_alpha_overrides_every_module():
    lora = qwen_lora().with_alpha(2.0)
    assert lora.scales == [0.5] and lora.alpha_source == "given"
    with pytest.raises(ValueError, match="alpha"):
        qwen_lora().with_alpha(0)


def test_lora_from_peft_state_dict_matches_peft_itself():
    peft = pytest.importorskip("peft")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    model = peft.get_peft_model(transformer, peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                                             target_modules=targets))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; give it values so the delta is not trivially 0
            torch.nn.init.normal_(param, std=0.1)
    for state, form in ((model.state_dict(), "PeftModel.state_dict"), (peft.get_peft_model_state_dict(model), "get_peft_model_state_dict")):
        lora = lora_from_peft_state_dict(state, alpha=8, base="flux", metadata={"steps": "1"})
        assert lora.layout == "peft" and lora.metadata == {"steps": "1"}, form
        assert len(lora.modules) == 8 + 3, form  # single blocks have no to_out / add_* projections
        for name, module in lora.modules.items():
            layer = model.base_model.model.get_submodule(name)
            torch.testing.assert_close(module.delta(), layer.get_delta_weight("default"), msg=f"{form}: {name}")


def test_lora_from_peft_state_dict_rejects_other_state_dicts():
    with pytest.raises(ValueError, match="no PEFT LoRA keys"):
        lora_from_peft_state_dict({"x.weight": torch.zeros(2, 2)}, alpha=8, base="flux")
    with pytest.raises(ValueError, match="base"):
        lora_from_peft_state_dict({"a.lora_A.weight": torch.zeros(2, 2)}, alpha=8, base="sd15")


# Base detection and refusals --------------------------------------------------------------

def test_base_is_detected_from_names_and_shapes():
    assert detect_base(["transformer_blocks.59.attn.to_q"])[0] == "qwen_image"
    assert detect_base(["transformer_blocks.0.img_mlp.net.2"])[0] == "qwen_image"
    assert detect_base(["single_transformer_blocks.3.attn.to_k"])[0] == "flux"
    assert detect_base(["lora_unet_double_blocks_0_img_attn_qkv"[len("lora_unet_"):]])[0] == "flux"
    assert detect_base(["transformer_blocks.0.ff_context.net.2"])[0] == "flux"
    assert detect_base(["transformer_blocks.0.attn.to_q"])[0] is None
    assert detect_base(["txt_in"], {"txt_in": 3584})[0] == "qwen_image"
    with pytest.raises(ValueError, match="mixes"):
        detect_base(["single_transformer_blocks.0.attn.to_q", "transformer_blocks.0.img_mod.1"])


def test_a_lora_for_the_other_base_is_refused_by_name(tmp_path):
    path = save_lora(tmp_path / "qwen.safetensors", qwen_lora())
    with pytest.raises(ValueError, match="made for Qwen-Image-Edit.*not for FLUX.1 Kontext"):
        load_lora(path, base="flux")
    path = save_lora(tmp_path / "flux.safetensors", flux_lora())
    with pytest.raises(ValueError, match="made for FLUX.1 Kontext.*not for Qwen-Image-Edit"):
        load_lora(path, base="qwen_image")


def test_ambiguous_names_need_metadata_or_a_base(tmp_path):
    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(0,)), RANK)
    path = save(tmp_path, "a.safetensors", state_dict_in_layout("diffusers", pairs, ALPHA))
    with pytest.raises(ValueError, match=r"cannot tell.*--base flux or --base qwen_image on the command line; "
                                         r"base='flux' or base='qwen_image' in Python"):
        load_lora(path)
    assert load_lora(path, base="flux").base == "flux"
    tagged = save(tmp_path, "b.safetensors", state_dict_in_layout("diffusers", pairs, ALPHA),
                  metadata={"ss_base_model_version": "qwen_image"})
    assert load_lora(tagged).base == "qwen_image"
    with pytest.raises(ValueError, match="metadata says"):
        load_lora(tagged, base="flux")


def test_unreadable_and_missing_inputs_name_what_was_looked_at(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_lora(tmp_path / "nothing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors.*adapter_model.bin"):
        load_lora(tmp_path / "empty")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_lora(junk)
    no_lora = save(tmp_path, "model.safetensors", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="no LoRA weights"):
        load_lora(no_lora)
    half = save(tmp_path, "half.safetensors", {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="up \\(B\\) weight is missing"):
        load_lora(half)
    (tmp_path / "dora").mkdir()
    save(tmp_path / "dora", "adapter_model.safetensors", state_dict_in_layout("peft", make_pairs(qwen_shapes(WIDTH, (40,)), 2), None))
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA"):
        load_lora(tmp_path / "dora")


# diffusers loads what we write ------------------------------------------------------------

def _delta_after_diffusers_load(pipeline_class, transformer, path, **kwargs):
    base = {n: m.weight.detach().clone() for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    state = pipeline_class.lora_state_dict(str(path), **kwargs)
    if isinstance(state, tuple):
        state, alphas = state
        pipeline_class.load_lora_into_transformer(state, network_alphas=alphas, transformer=transformer)
    else:
        pipeline_class.load_lora_into_transformer(state, transformer=transformer)
    transformer.fuse_lora(lora_scale=1.0)
    return {n: transformer.get_submodule(n).base_layer.weight.detach() - base[n] for n in base
            if hasattr(transformer.get_submodule(n), "base_layer")}


def test_diffusers_loads_written_flux_and_qwen_files_at_alpha_over_rank(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    torch.manual_seed(0)
    flux = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=WIDTH, pooled_projection_dim=WIDTH, axes_dims_rope=[2, 2, 4],
        guidance_embeds=True,
    )
    qwen = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=WIDTH, axes_dims_rope=(4, 2, 2),
    )
    for transformer, base, pipeline_class, kwargs in (
        (flux, "flux", diffusers.FluxKontextPipeline, {"return_alphas": True}),
        (qwen, "qwen_image", diffusers.QwenImageEditPlusPipeline, {}),
    ):
        linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
        generator = torch.Generator().manual_seed(1)
        modules = {
            name: LoraModule(torch.randn(RANK, m.in_features, generator=generator),
                             torch.randn(m.out_features, RANK, generator=generator), ALPHA)
            for name, m in linears.items()
        }
        modules["proj_out"].alpha = 2.0  # one odd alpha: must not leak onto single blocks' proj_out
        lora = LoraWeights(modules, base, {"steps": "7"})
        path = save_lora(tmp_path / f"{base}.safetensors", lora)
        deltas = _delta_after_diffusers_load(pipeline_class, transformer, path, **kwargs)
        assert set(deltas) == set(modules), base
        for name, module in modules.items():
            torch.testing.assert_close(deltas[name], module.delta(), rtol=1e-5, atol=1e-5, msg=f"{base}: {name}")


def test_lora_from_state_dict_rejects_two_sources_for_one_module():
    pairs = make_pairs({"double_blocks.0.img_attn.qkv": (3 * WIDTH, WIDTH)}, RANK)
    state = state_dict_in_layout("ai-toolkit", pairs, ALPHA)
    extra = make_pairs({"transformer_blocks.0.attn.to_q": (WIDTH, WIDTH)}, RANK)
    state.update(state_dict_in_layout("diffusers", extra, ALPHA))
    with pytest.raises(ValueError, match="both target transformer_blocks.0.attn.to_q"):
        lora_from_state_dict(state)


# Command line -----------------------------------------------------------------------------

def test_cli_converts_the_official_release_to_a_file_at_its_trained_scale(tmp_path, capsys):
    from motionnft.cli import main

    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(0, 59)), 32, seed=8)
    source = save(tmp_path, "adapter_model_converted.safetensors", state_dict_in_layout("diffusers", pairs, None))
    assert main(["lora", "convert", str(source), str(tmp_path / "out.safetensors"), "--alpha", "64"]) == 0
    assert "scale alpha/rank 2" in capsys.readouterr().out
    assert main(["lora", "info", str(tmp_path / "out.safetensors"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base"] == "qwen_image" and info["layout"] == "motionnft" and info["scales"] == [2.0]
    assert info["metadata"]["motionnft.converted_from"] == "adapter_model_converted.safetensors (diffusers layout, alpha source: given)"
    assert_deltas(load_lora(tmp_path / "out.safetensors"), expected_deltas(pairs, 64))
    assert main(["lora", "info", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("prefix,base,names", [
    ("lora_transformer_", "flux", ["single_transformer_blocks.4.attn.to_q", "transformer_blocks.1.ff_context.net.0.proj"]),
    ("lycoris_", "qwen_image", ["transformer_blocks.33.attn.add_k_proj", "transformer_blocks.2.img_mlp.net.2"]),
])
def test_flattened_onetrainer_and_lycoris_names(tmp_path, prefix, base, names):
    pairs = make_pairs({name: (WIDTH, WIDTH) for name in names}, RANK, seed=9)
    state = {}
    for name, (down, up) in pairs.items():
        stem = prefix + name.replace(".", "_")
        state.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(ALPHA)})
    lora = load_lora(save(tmp_path, "flat.safetensors", state))
    assert lora.base == base
    assert_deltas(lora, expected_deltas(pairs, ALPHA))


def test_dora_files_are_refused_not_applied_as_plain_lora():
    pairs = make_pairs(qwen_shapes(WIDTH, blocks=(40,)), RANK)
    state = state_dict_in_layout("diffusers", pairs, ALPHA)
    state["transformer.transformer_blocks.40.attn.to_q.dora_scale"] = torch.ones(1, WIDTH)
    with pytest.raises(ValueError, match="DoRA"):
        lora_from_state_dict(state)


def test_canonical_module_names_cover_the_full_size_models():
    from motionnft.lora import canonical_module_names, is_canonical_module

    flux, qwen = canonical_module_names("flux"), canonical_module_names("qwen_image")
    assert len(flux) == 19 * 14 + 38 * 6 + 10 and len(qwen) == 60 * 14 + 6
    assert all(is_canonical_module("flux", n) for n in flux) and all(is_canonical_module("qwen_image", n) for n in qwen)
    assert "single_transformer_blocks.37.attn.to_v" in flux and "transformer_blocks.59.txt_mlp.net.2" in qwen
    assert not is_canonical_module("qwen_image", "single_transformer_blocks.0.attn.to_q")
