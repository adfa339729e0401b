"""FlowDiffusion weight files (full, delta, LoRA) and SD 1.5 UNets in ComfyUI's (original) layout."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from motionnft.drag.flowdiffusion import FlowDiffusion, from_sd_unet, tiny_config
from motionnft.drag.flowdiffusion_files import (CodecSpec, load_flowdiffusion_file, read_header,
                                                save_flowdiffusion)
from motionnft.drag.sd_unet import sd_unet_config, unet_from_sd_state
from motionnft.drag.train_flowdiffusion import add_lora
from sd_layout import to_ldm


pytestmark = pytest.mark.usefixtures("one_thread")


def small_sd_config(in_channels: int = 4) -> dict:
    """Two ResBlocks per level and attention on two of three levels (more than the tiny model tests)."""
    return dict(tiny_config(in_channels), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"))


def outputs(unet, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample


def test_sd15_shapes_give_sd15s_diffusers_config():
    sd15 = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280))
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd15)
    config = sd_unet_config(to_ldm(unet))
    assert config["block_out_channels"] == (320, 640, 1280, 1280) and config["layers_per_block"] == 2
    assert config["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert config["up_block_types"] == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert config["cross_attention_dim"] == 768 and config["attention_head_dim"] == 8
    assert config["transformer_layers_per_block"] == 1 and not config["use_linear_projection"]


def test_an_original_layout_unet_converts_to_the_same_diffusers_model():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**small_sd_config()).eval()
    converted = unet_from_sd_state(to_ldm(unet), norm_num_groups=16)
    assert converted.state_dict().keys() == unet.state_dict().keys()
    assert torch.equal(outputs(converted), outputs(unet))
    prefixed = unet_from_sd_state({"model.diffusion_model." + k: v for k, v in to_ldm(unet).items()}, norm_num_groups=16)
    assert torch.equal(outputs(prefixed), outputs(unet))
    # The conversion is what makes them equal: a scrambled layout does not load.
    broken = to_ldm(unet)
    broken.pop("input_blocks.1.0.in_layers.2.weight")
    with pytest.raises(ValueError, match="missing"):
        unet_from_sd_state(broken, norm_num_groups=16)


def perturbed(model: FlowDiffusion, names: tuple[str, ...], seed: int = 1) -> FlowDiffusion:
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    with torch.no_grad():
        for name in names:
            state[name].add_(0.05 * torch.randn(state[name].shape, generator=generator))
    return model


def flowdiffusion_outputs(model: FlowDiffusion) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    noisy, image = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 4, 16, 16, generator=generator)
    flow = torch.randn(2, 2, 16, 16, generator=generator)
    with torch.no_grad():
        return model(noisy, torch.tensor([5, 900]), image, flow)


@pytest.fixture
def base() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_config(4)).eval()


def test_a_full_file_holds_everything_and_loads_alone(tmp_path):
    torch.manual_seed(0)
    model = perturbed(FlowDiffusion.tiny(), ("unet.conv_in.weight",)).eval()
    model.prediction_type = "v_prediction"
    path = save_flowdiffusion(tmp_path / "fd.safetensors", model, CodecSpec.pooled(2, 2.5), 64)
    header = read_header(path)
    assert header["format"] == "motionnft-flowdiffusion" and header["kind"] == "full"
    assert json.loads(header["unet_config"])["in_channels"] == 10
    loaded, codec, size = load_flowdiffusion_file(path)
    assert (codec, size, loaded.prediction_type) == (CodecSpec.pooled(2, 2.5), 64, "v_prediction")
    assert torch.equal(flowdiffusion_outputs(loaded), flowdiffusion_outputs(model))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


CHANGED = ("unet.conv_in.weight", "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.weight")


def test_a_delta_file_holds_only_what_changed_and_is_exact_on_its_base(base, tmp_path):
    model = perturbed(from_sd_unet(base), CHANGED).eval()
    path = save_flowdiffusion(tmp_path / "delta.safetensors", model, CodecSpec.sd_vae(), 512, "delta", base=base)
    from safetensors.torch import load_file

    stored = set(load_file(str(path)))
    assert stored == {*CHANGED, "unet.conv_in.bias", "null_text"}
    loaded, codec, size = load_flowdiffusion_file(path, base_unet=base)
    assert (codec.kind, size) == ("sd-vae", 512)
    assert torch.equal(flowdiffusion_outputs(loaded), flowdiffusion_outputs(model))
    with pytest.raises(ValueError, match=r"delta.safetensors.*needs that SD 1.5 checkpoint"):
        load_flowdiffusion_file(path)
    torch.manual_seed(5)
    other = UNet2DConditionModel(**tiny_config(4))
    with pytest.raises(ValueError, match="made from another SD 1.5 UNet"):
        load_flowdiffusion_file(path, base_unet=other)


def test_a_lora_file_holds_the_lora_conv_in_and_null_text_and_is_exact_on_its_base(base, tmp_path):
    model = from_sd_unet(base)
    add_lora(model, rank=4, alpha=2.0)
    lora_b = [name for name in model.state_dict() if "lora_B" in name]
    model = perturbed(model, (*lora_b, "unet.conv_in.weight")).eval()
    path = save_flowdiffusion(tmp_path / "lora.safetensors", model, CodecSpec.sd_vae(), 256, "lora")
    from safetensors.torch import load_file

    stored = set(load_file(str(path)))
    assert stored - {"unet.conv_in.weight", "unet.conv_in.bias", "null_text"} == {
        name for name in model.state_dict() if "lora_" in name}
    header = read_header(path)
    assert (header["lora_rank"], header["lora_alpha"]) == ("4", "2.0")
    loaded, _, _ = load_flowdiffusion_file(path, base_unet=base)
    assert torch.allclose(flowdiffusion_outputs(loaded), flowdiffusion_outputs(model), atol=1e-6)
    # The same LoRA merged into a full file gives the same model.
    full = save_flowdiffusion(tmp_path / "merged.safetensors", model, CodecSpec.sd_vae(), 256)
    merged, _, _ = load_flowdiffusion_file(full)
    assert torch.allclose(flowdiffusion_outputs(merged), flowdiffusion_outputs(model), atol=1e-5)


def test_files_that_are_not_flowdiffusion_files_are_named(tmp_path, base):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other), metadata={"format": "motionnft-flowgen"})
    with pytest.raises(ValueError, match=r"other.safetensors: not a FlowDiffusion file.*motionnft-flowgen"):
        load_flowdiffusion_file(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors file"):
        load_flowdiffusion_file(junk)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_flowdiffusion_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="kind 'delta' needs the 4-channel SD UNet"):
        save_flowdiffusion(tmp_path / "d.safetensors", from_sd_unet(base), CodecSpec.sd_vae(), 64, "delta")
    assert not (tmp_path / "d.safetensors").exists()


def test_a_pooled_codec_is_built_and_an_sd_vae_one_asks_for_the_vae():
    assert CodecSpec.pooled(2, 2.5).build().scale == 2.5
    with pytest.raises(ValueError, match="needs an SD 1.5 VAE"):
        CodecSpec.sd_vae().build()


def test_a_vae_called_like_comfyuis_codes_like_sd_vae_codec():
    """ComfyUI's VAE takes and gives (B, H, W, 3) images in [0, 1] and raw latents; wrapped, it
    gives FlowDiffusion the SD 1.5 latents (times 0.18215) SDVAECodec gives."""
    from diffusers import AutoencoderKL

    from motionnft.drag.flowdiffusion_conditioning import ChannelsLastVAECodec, SDVAECodec

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).eval()
    reference = SDVAECodec(vae, scale=0.18215)
    wrapped = ChannelsLastVAECodec(lambda x: vae.encode(x.movedim(-1, 1) * 2 - 1).latent_dist.mode(),
                                   lambda z: ((vae.decode(z).sample + 1) / 2).clamp(0, 1).movedim(1, -1))
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        latents = wrapped.encode(images)
        assert torch.allclose(latents, reference.encode(images), atol=1e-6)
        assert torch.allclose(wrapped.decode(latents), reference.decode(latents), atol=1e-6)
