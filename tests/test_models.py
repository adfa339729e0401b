"""Base-model adapters: the tiny FLUX.1 Kontext and Qwen-Image-Edit builds, packing, schedules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from motionnft.models import Condition, EditModel, PatchCodec, build_model, pack_latents, unpack_latents  # noqa: E402
from motionnft.models.qwen_image_edit import qwen_edit_release  # noqa: E402

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


# The real scheduler configs, as the hub serves them (diffusers' own formatting):
# - black-forest-labs/FLUX.1-Kontext-dev scheduler/scheduler_config.json (486 bytes on the hub;
#   the same text in the mirror TensorStack/FLUX.1-Kontext-dev-ts): shift 3, dynamic shifting,
#   max_shift 1.15 over 256..4096 tokens, no shift_terminal.
# - Qwen/Qwen-Image-Edit scheduler/scheduler_config.json (485 bytes on the hub; the same
#   values in diffusers' Qwen-Image training configs, ai-toolkit, SimpleTuner and the
#   FireRed-Image-Edit fork of 2509): dynamic shifting, max_shift 0.9 over 256..8192 tokens,
#   shift_terminal 0.02. Qwen-Image-Edit-2509 ships the same scheduler values.
SCHEDULERS = Path(__file__).parent / "data" / "schedulers"


def pipeline_sigmas(scheduler_config: dict, steps: int, size: tuple[int, int]) -> torch.Tensor:
    """The schedule as diffusers' pipelines build it (FluxKontextPipeline, QwenImageEdit(Plus)Pipeline
    step 5): the real models' VAEs downsample 8x and pack 2x2, so the target has (H/16)(W/16) tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift, retrieve_timesteps

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    image_seq_len = (size[0] // 16) * (size[1] // 16)
    mu = calculate_shift(image_seq_len, scheduler.config.get("base_image_seq_len", 256),
                         scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                         scheduler.config.get("max_shift", 1.15))
    retrieve_timesteps(scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas


class ScheduleOnly(EditModel):
    """Just enough of a model for its schedule: a real model's scheduler config and an 8x
    codec (the real VAEs' token count, (H/16)(W/16))."""

    name = "schedule-only"

    def __init__(self, scheduler_file: str):
        super().__init__(None, PatchCodec(8), json.loads((SCHEDULERS / scheduler_file).read_text()))

    def encode_condition(self, prompt, reference, size):
        raise NotImplementedError

    def velocity(self, x, t, condition):
        raise NotImplementedError


@pytest.mark.parametrize("name", ["flux1_kontext_dev.json", "qwen_image_edit.json"])
@pytest.mark.parametrize("size", [(512, 512), (1024, 1024), (768, 1344), (256, 256)])
@pytest.mark.parametrize("steps", [2, 6, 28])
def test_schedules_equal_the_diffusers_pipelines_for_the_real_scheduler_configs(name, size, steps):
    model = ScheduleOnly(name)
    sigmas = model.sigmas(steps, size)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    assert torch.equal(sigmas.float(), pipeline_sigmas(model.scheduler_config, steps, size).float())


def test_qwen_rollouts_end_at_the_terminal_sigma_before_zero():
    # Qwen-Image's shift_terminal: at 512² and 6 steps the last step goes from 0.02 to 0,
    # so the loss trains at small t too (FLUX.1 Kontext has no terminal stretch).
    qwen = ScheduleOnly("qwen_image_edit.json")
    assert qwen.sigmas(6, (512, 512)).tolist() == pytest.approx([1.0, 0.8625, 0.7028, 0.5151, 0.2913, 0.02, 0.0],
                                                                abs=5e-5)
    assert qwen.sigmas(28, (512, 512))[-2] == pytest.approx(0.02)
    flux = ScheduleOnly("flux1_kontext_dev.json")
    assert flux.sigmas(6, (512, 512)).tolist() == pytest.approx([1.0, 0.9037, 0.7897, 0.6525, 0.4842, 0.2730, 0.0],
                                                                abs=5e-5)


def test_a_schedule_that_is_not_decreasing_is_refused():
    assert ScheduleOnly("flux1_kontext_dev.json").sigmas(1, (512, 512)).tolist() == [1.0, 0.0]
    # one step with a terminal stretch: diffusers divides by zero
    with pytest.raises(ValueError, match="1 sampling step.*decreasing"):
        ScheduleOnly("qwen_image_edit.json").sigmas(1, (512, 512))


def test_tiny_models_keep_their_fixed_shift_schedule():
    model = build_model("tiny_qwen_image_edit", tiny_size="test", dtype=torch.float32)
    t = torch.linspace(1, 1 / 6, 6, dtype=torch.float64)
    expected = torch.cat((3 * t / (1 + 2 * t), torch.zeros(1, dtype=torch.float64)))
    assert torch.allclose(model.sigmas(6, SIZE), expected, atol=1e-6)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        model.sigmas(0, SIZE)


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


def diffusers_folder(root: Path, class_name: str) -> Path:
    """A stand-in diffusers folder: just the ``model_index.json`` that names its pipeline."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.36.0"}))
    return root


class LoadedAs(Exception):
    """Raised by a stubbed ``from_pretrained``: which pipeline class would have loaded."""


@pytest.fixture
def loads(monkeypatch):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    for cls in (QwenImageEditPipeline, QwenImageEditPlusPipeline):
        def stub(path, *args, _name=cls.__name__, **kwargs):
            raise LoadedAs(_name)

        monkeypatch.setattr(cls, "from_pretrained", stub)


def test_qwen_image_edit_loads_the_release_the_folder_holds(tmp_path, loads):
    first = diffusers_folder(tmp_path / "Qwen-Image-Edit", "QwenImageEditPipeline")
    plus = diffusers_folder(tmp_path / "Qwen-Image-Edit-2509", "QwenImageEditPlusPipeline")
    with pytest.raises(LoadedAs, match="^QwenImageEditPipeline$"):
        build_model("qwen_image_edit", path=first)
    with pytest.raises(LoadedAs, match="^QwenImageEditPlusPipeline$"):
        build_model("qwen_image_edit", path=plus)
    with pytest.raises(LoadedAs, match="^QwenImageEditPlusPipeline$"):
        build_model("qwen_image_edit_plus", path=plus)


def test_a_release_asked_for_that_the_folder_does_not_hold_is_refused(tmp_path, loads):
    first = diffusers_folder(tmp_path / "Qwen-Image-Edit", "QwenImageEditPipeline")
    with pytest.raises(ValueError) as error:
        build_model("qwen_image_edit_plus", path=first)
    message = str(error.value)
    assert str(first) in message and "'QwenImageEditPipeline'" in message and "qwen_image_edit_plus" in message
    plus = diffusers_folder(tmp_path / "Qwen-Image-Edit-2509", "QwenImageEditPlusPipeline")
    with pytest.raises(ValueError, match="'QwenImageEditPlusPipeline'.*Qwen-Image-Edit \\(QwenImageEditPipeline\\)"):
        qwen_edit_release(plus, plus=False)
    assert qwen_edit_release(plus, plus=True) is True and qwen_edit_release(first, plus=False) is False
    text_to_image = diffusers_folder(tmp_path / "Qwen-Image", "QwenImagePipeline")
    with pytest.raises(ValueError, match="'QwenImagePipeline'.*expected QwenImageEditPipeline or QwenImageEditPlus"):
        build_model("qwen_image_edit", path=text_to_image)


@pytest.mark.parametrize(("kind", "size", "expected"), [
    # QwenImageEditPipeline: calculate_dimensions(1024 * 1024, W / H), sides rounded to 32
    ("tiny_qwen_image_edit", (64, 64), (1024, 1024)),
    ("tiny_qwen_image_edit", (64, 96), (1248, 832)),  # sqrt(1024² · 1.5) = 1254 -> 1248; / 1.5 = 836 -> 832
    # QwenImageEditPlusPipeline: calculate_dimensions(384 * 384, W / H), a list of images
    ("tiny_qwen_image_edit_plus", (64, 64), (384, 384)),
    ("tiny_qwen_image_edit_plus", (64, 96), (480, 320)),  # sqrt(384² · 1.5) = 470 -> 480; / 1.5 = 314 -> 320
])
def test_the_vision_language_encoder_sees_the_pipelines_image_sizes(kind, size, expected):
    from PIL import Image

    from motionnft.image import tensor_to_pil

    model = build_model(kind, tiny_size="test", dtype=torch.float32)
    reference = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    seen = []
    encode = model.text_pipeline.encode_prompt
    model.text_pipeline.encode_prompt = lambda **kwargs: seen.append(kwargs["image"]) or encode(**kwargs)
    model.encode_condition("Raise the arm.", reference, SIZE)
    image = seen[0][0] if kind.endswith("plus") else seen[0]
    assert isinstance(seen[0], list) == kind.endswith("plus")
    assert image.size == expected  # PIL: (width, height)
    # resized from the reference as given, with the pipelines' PIL Lanczos
    assert image.tobytes() == tensor_to_pil(reference).resize(expected, Image.LANCZOS).tobytes()


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
