"""Base-model adapters: the tiny FLUX.1 Kontext and Qwen-Image-Edit builds, packing, schedules."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from motionnft.models import Condition, PatchCodec, build_model, pack_latents, unpack_latents  # noqa: E402

SIZE = (64, 64)


@pytest.fixture(scope="module")
def kontext():
    return build_model("tiny_flux_kontext", tiny_size="test", dtype=torch.float32)


def test_packing_round_trips_and_the_patch_codec_is_exact():
    latents = torch.randn(2, 3, 8, 6)
    assert torch.equal(unpack_latents(pack_latents(latents), 8, 6), latents)
    images = torch.rand(2, 3, 16, 16)
    codec = PatchCodec(4)
    assert torch.allclose(codec.decode(codec.encode(images)), images, atol=1e-6)


def test_kontext_velocity_sees_the_reference_and_the_instruction(kontext):
    reference = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    a = kontext.encode_condition("Make the figure raise its arm.", reference, SIZE)
    b = kontext.encode_condition("Make the figure take a step to the left.", reference, SIZE)
    c = kontext.encode_condition("Make the figure raise its arm.", 1 - reference, SIZE)
    assert a.tensors["reference"].shape == (1, kontext.token_count(SIZE), kontext.token_channels())
    # target ids then reference ids, the reference marked with id[0] = 1
    ids = a.shared["image_ids"]
    assert ids.shape[0] == 2 * kontext.token_count(SIZE) and set(ids[kontext.token_count(SIZE):, 0].tolist()) == {1.0}
    x = kontext.noise(2, SIZE, torch.Generator().manual_seed(1))
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        va, vb, vc = (kontext.velocity(x, t, cond.repeat(2)) for cond in (a, b, c))
    assert va.shape == x.shape
    assert (va - vb).abs().max() > 1e-6 and (va - vc).abs().max() > 1e-6


def test_kontext_schedule_equals_the_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = build_model("tiny_flux_kontext", tiny_size="test", dtype=torch.float32)
    for config in ({"shift": 3.0}, {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                                    "base_image_seq_len": 256, "max_image_seq_len": 4096}):
        scheduler = FlowMatchEulerDiscreteScheduler(**config)
        model.scheduler_config = dict(scheduler.config)
        steps = 6
        tokens = model.token_count((512, 512))
        import numpy as np

        mu = 0.5 + (1.15 - 0.5) * (tokens - 256) / (4096 - 256)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        assert torch.allclose(model.sigmas(steps, (512, 512)).float(), scheduler.sigmas.float(), atol=1e-6)


def test_the_real_vae_path_encodes_and_decodes():
    model = build_model("tiny_flux_kontext", tiny_size="test", tiny_codec="vae", dtype=torch.float32)
    images = torch.rand(2, 3, *SIZE)
    tokens = model.encode_images(images)
    assert tokens.shape == (2, model.token_count(SIZE), 16)
    decoded = model.decode_tokens(tokens, SIZE)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) <= float(decoded.max()) <= 1


@pytest.mark.parametrize("kind", ["tiny_qwen_image_edit", "tiny_qwen_image_edit_plus"])
def test_qwen_edit_encodes_the_instruction_with_the_image_and_pads_batches(kind):
    model = build_model(kind, tiny_codec="vae" if kind.endswith("plus") else "patch", dtype=torch.float32)
    reference = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    short = model.encode_condition("Raise the arm.", reference, SIZE)
    long = model.encode_condition("Make the figure take a long step to the left.", reference, SIZE)
    other_image = model.encode_condition("Raise the arm.", 1 - reference, SIZE)
    # the vision tokens of the reference enter the text stream
    assert not torch.allclose(short.tensors["prompt_embeds"], other_image.tensors["prompt_embeds"])
    batch = Condition.cat([short, long])
    length = long.tensors["prompt_embeds"].shape[1]
    assert batch.tensors["prompt_embeds"].shape[1] == length > short.tensors["prompt_embeds"].shape[1]
    assert batch.tensors["mask"][0].sum() == short.tensors["mask"].sum()
    x = model.noise(2, SIZE, torch.Generator().manual_seed(1))
    with torch.no_grad():
        v = model.velocity(x, torch.tensor([0.5, 0.5]), batch)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_loading_names_the_places_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        build_model("flux_kontext", path=tmp_path / "nowhere")
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"transformer[/\\]config.json|not found"):
        build_model("qwen_image_edit", path=tmp_path, transformer_file=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="model kind"):
        build_model("sdxl")


@pytest.mark.parametrize(("kind", "embedder_name"), [("tiny_flux_kontext", "x_embedder"),
                                                     ("tiny_qwen_image_edit", "img_in")])
def test_trained_tiny_models_are_at_least_as_wide_as_their_tokens(kind, embedder_name):
    # A narrower transformer projects the noisy tokens into fewer dimensions than they
    # have: the discarded noise cannot be predicted, so x0-predictions stay noisy however
    # long it trains. The demo size is the one the tiny preset and the learning bench train.
    model = build_model(kind, tiny_size="demo", dtype=torch.float32)
    embedder = getattr(model.transformer, embedder_name)
    assert embedder.in_features == model.token_channels() == 192
    assert embedder.out_features >= embedder.in_features
