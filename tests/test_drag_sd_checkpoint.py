"""SD 1.5 checkpoints -> UNet, VAE and null text (motionnft.drag.sd_checkpoint), on SD 1.5's
architecture shrunk for the CPU (tests/sd_layout.tiny_sd_parts): no SD 1.5 weights here."""

from __future__ import annotations

import pytest
import torch

from motionnft.drag.sd_checkpoint import EMPTY_PROMPT_IDS, load_sd15
from sd_layout import sd_checkpoint_state, tiny_sd_parts


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    return tiny_sd_parts()


class Pickled:
    """Not a tensor or a plain container: torch.load(weights_only=True) refuses it."""


def unet_outputs(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), encoder_hidden_states=text).sample


def vae_outputs(vae) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
        return latents, vae.decode(latents).sample


def assert_same_models(loaded, parts) -> None:
    unet, vae, text = parts
    assert torch.equal(unet_outputs(loaded.unet), unet_outputs(unet))
    for got, expected in zip(vae_outputs(loaded.vae), vae_outputs(vae)):
        assert torch.equal(got, expected)
    assert loaded.vae.config.scaling_factor == 0.18215
    with torch.no_grad():
        reference = text(input_ids=torch.tensor([EMPTY_PROMPT_IDS])).last_hidden_state
    assert loaded.null_text.shape == (1, 77, 32) and torch.equal(loaded.null_text, reference)


def test_the_empty_prompt_is_start_then_end_tokens_to_77():
    assert EMPTY_PROMPT_IDS[:3] == (49406, 49407, 49407) and len(EMPTY_PROMPT_IDS) == 77
    assert set(EMPTY_PROMPT_IDS[1:]) == {49407}


def test_a_single_file_checkpoint_gives_the_same_unet_vae_and_null_text(parts, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd15.safetensors"
    save_file(sd_checkpoint_state(*parts), str(path))
    loaded = load_sd15(path)
    assert_same_models(loaded, parts)
    assert loaded.unet.config.in_channels == 4 and not loaded.unet.training and not loaded.vae.training
    # The conversion is what makes them equal: a VAE tensor under another name does not load.
    state = sd_checkpoint_state(*parts)
    state["first_stage_model.encoder.down.0.block.0.conv9.weight"] = state.pop(
        "first_stage_model.encoder.down.0.block.0.conv1.weight")
    save_file(state, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(ValueError, match=r"renamed.safetensors: VAE.*missing"):
        load_sd15(tmp_path / "renamed.safetensors")


def test_a_ckpt_file_is_read_without_code_and_its_state_dict_unwrapped(parts, tmp_path):
    path = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": sd_checkpoint_state(*parts), "global_step": 470000}, path)
    assert_same_models(load_sd15(path), parts)
    # a pickled object of any class would run its module's code on a plain torch.load: refused
    torch.save({"state_dict": sd_checkpoint_state(*parts), "extra": Pickled()}, tmp_path / "code.ckpt")
    with pytest.raises(ValueError, match=r"code.ckpt: not a checkpoint torch.load\(weights_only=True\) reads"):
        load_sd15(tmp_path / "code.ckpt")


def test_a_diffusers_folder_gives_the_same_parts(parts, tmp_path):
    unet, vae, text = parts
    unet.save_pretrained(tmp_path / "sd" / "unet")
    vae.save_pretrained(tmp_path / "sd" / "vae")
    text.save_pretrained(tmp_path / "sd" / "text_encoder")
    assert_same_models(load_sd15(tmp_path / "sd"), parts)
    with pytest.raises(ValueError, match=r"empty: a folder, but not a diffusers SD 1.5 model: no unet/config.json"):
        (tmp_path / "empty").mkdir()
        load_sd15(tmp_path / "empty")


def test_without_a_text_encoder_the_null_text_is_none_with_a_warning(parts, tmp_path):
    from safetensors.torch import save_file

    unet, vae, _ = parts
    save_file(sd_checkpoint_state(unet, vae), str(tmp_path / "no_text.safetensors"))
    with pytest.warns(UserWarning, match="no_text.safetensors: no text encoder.*zero embedding"):
        loaded = load_sd15(tmp_path / "no_text.safetensors")
    assert loaded.null_text is None
    assert torch.equal(unet_outputs(loaded.unet), unet_outputs(unet))


def test_errors_name_the_file_and_what_was_expected(parts, tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from sd_layout import vae_to_ldm

    unet, vae, text = parts
    state = sd_checkpoint_state(unet, vae, text)
    cases = {
        "unet_only": ({k: v for k, v in state.items() if k.startswith("model.")}, r"no VAE tensors \(first_stage_model"),
        "vae_only": ({k: v for k, v in state.items() if k.startswith("first_")}, r"no UNet tensors \(model.diffusion_model"),
    }
    small_vae = AutoencoderKL(block_out_channels=(32,) * 3, layers_per_block=1, norm_num_groups=32, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    other = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    other.update({"first_stage_model." + k: v.contiguous() for k, v in vae_to_ldm(small_vae).items()})
    cases["factor4"] = (other, "not SD 1.5-shaped: its VAE has 4 latent channels and downsamples by 4, expected 4 and 8")
    for name, (tensors, message) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(ValueError, match=f"{name}.safetensors: {message}"):
            load_sd15(tmp_path / f"{name}.safetensors")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors: no such SD 1.5 checkpoint"):
        load_sd15(tmp_path / "nothing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_sd15(tmp_path / "junk.safetensors")
