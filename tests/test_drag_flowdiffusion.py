"""FlowDiffusion: initialisation from an SD UNet, the two-scale guidance, condition dropout,
background compositing, training, LoRA and exact resume (tiny models, CPU)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from motionnft.data import DatasetWriter
from motionnft.drag.flowdiffusion import FlowDiffusion, FlowDiffusionConfig, from_sd_unet, tiny_config
from motionnft.drag.flowdiffusion_conditioning import PooledRGBCodec, SDVAECodec, conditions, flow_condition
from motionnft.drag.flowdiffusion_data import (EditPairFolder, background_composite, condition_dropout, edit_region,
                                               figure_pairs)
from motionnft.drag.flowdiffusion_sampling import (combine_guidance, flowdiffusion_edit, guided_noise,
                                                   make_scheduler, noise_prediction)
from motionnft.drag.train_flowdiffusion import (FlowDiffusionTrainConfig, FlowDiffusionTrainer, conditions_unseen,
                                                diffusion_loss, load_flowdiffusion, make_batch)
from motionnft.flow.flo import write_flo
from motionnft.image import save_image


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs():
    return figure_pairs(6, 32, seed=3, style="plain")


def small_config(**overrides) -> FlowDiffusionTrainConfig:
    settings = dict(size=32, steps=4, batch_size=2, learning_rate=1e-3, save_every=2, log_every=1)
    return FlowDiffusionTrainConfig(**{**settings, **overrides})


def test_from_sd_unet_copies_every_weight_and_zero_inits_the_new_channels():
    torch.manual_seed(0)
    base = UNet2DConditionModel(**tiny_config(in_channels=4, sample_size=16))
    original = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    model = from_sd_unet(base)
    state = model.unet.state_dict()
    assert model.unet.config.in_channels == 10 and set(state) == set(original)
    for name, tensor in original.items():
        if name == "conv_in.weight":
            assert torch.equal(state[name][:, :4], tensor) and state[name][:, 4:].abs().max() == 0
        else:
            assert torch.equal(state[name], tensor), name
    assert model.null_text.shape == (1, 77, 32) and model.null_text.abs().max() == 0
    # Before training any image latent and any flow leave the prediction of the 4-channel UNet.
    noisy, timesteps = torch.randn(2, 4, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        expected = base(noisy, timesteps, encoder_hidden_states=torch.zeros(2, 77, 32)).sample
        got = model(noisy, timesteps, torch.randn(2, 4, 16, 16), 5 * torch.randn(2, 2, 16, 16))
    assert torch.allclose(got, expected, atol=1e-6)
    # The source UNet is copied, not shared: training the new one leaves it as it was.
    with torch.no_grad():
        model.unet.conv_in.weight.add_(1.0)
    assert torch.equal(base.conv_in.weight, original["conv_in.weight"])
    with pytest.raises(ValueError, match="4 input channels"):
        from_sd_unet(model.unet)
    # A UNet built with in_channels left at diffusers' default (4) gets its 10 channels too.
    implicit = UNet2DConditionModel(**{k: v for k, v in tiny_config(sample_size=16).items() if k != "in_channels"})
    assert from_sd_unet(implicit).unet.conv_in.weight.shape[1] == 10


def test_flow_condition_is_the_flow_over_the_image_size_at_latent_resolution():
    flow = torch.zeros(1, 2, 64, 48)
    flow[:, 0], flow[:, 1] = 12.0, -6.4
    condition = flow_condition(flow, (8, 6))
    assert condition.shape == (1, 2, 8, 6)
    assert torch.allclose(condition[:, 0], torch.full((1, 8, 6), 12.0 / 48))
    assert torch.allclose(condition[:, 1], torch.full((1, 8, 6), -6.4 / 64))
    latents, flows = conditions(PooledRGBCodec(2), torch.rand(3, 3, 64, 48), flow)
    assert latents.shape == (3, 4, 32, 24) and flows.shape == (3, 2, 32, 24)


def test_an_sd_vae_codec_gives_four_channel_latents_at_an_eighth():
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    codec = SDVAECodec(vae)
    with torch.no_grad():
        latents = codec.encode(torch.rand(1, 3, 32, 32))
        images = codec.decode(latents)
    assert latents.shape == (1, 4, 4, 4) and images.shape == (1, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1


class FakeUNet(torch.nn.Module):
    """Predicts 1 without conditions, 2 with the image only, 4 with image and flow (per sample),
    and records each call's batch size."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, noisy, timestep, image_latents, flow):
        self.batches.append(noisy.shape[0])
        has_image = image_latents.flatten(1).abs().amax(1) > 0
        has_flow = flow.flatten(1).abs().amax(1) > 0
        value = 1.0 + has_image.float() + 2.0 * (has_image & has_flow).float()
        return value.view(-1, 1, 1, 1).expand_as(noisy) + 0 * self.anchor


def test_the_guidance_combines_the_three_passes_as_written():
    fake = FakeUNet()
    latents, image, flow = torch.randn(2, 4, 8, 8), torch.ones(2, 4, 8, 8), torch.ones(2, 2, 8, 8)
    eps = guided_noise(fake, latents, torch.tensor(500), image, flow, s_img=1.5, s_flow=2.0)
    assert fake.batches == [6]  # one batched call: unconditional, image, image + flow
    # ε = ε_u + s_img (ε_img − ε_u) + s_flow (ε_flow − ε_img) = 1 + 1.5 · (2 − 1) + 2 · (4 − 2)
    assert torch.allclose(eps, torch.full_like(eps, 6.5))
    plain = guided_noise(fake, latents, torch.tensor(500), image, flow, 1.0, 1.0)
    assert torch.allclose(plain, torch.full_like(eps, 4.0))
    assert combine_guidance(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0), 0.0, 0.0) == 1.0


def test_an_edit_reports_progress_and_a_raising_callback_cancels_it():
    torch.manual_seed(0)
    model = FlowDiffusion.tiny(sample_size=16).eval()
    image, flow = torch.rand(1, 3, 32, 32), torch.zeros(1, 2, 32, 32)
    seen = []
    result = flowdiffusion_edit(model, make_scheduler("ddim"), image, flow, codec=PooledRGBCodec(2), steps=3,
                                generator=torch.Generator().manual_seed(1), progress=lambda *a: seen.append(a))
    assert result.shape == (1, 3, 32, 32) and 0 <= result.min() and result.max() <= 1
    assert seen == [(1, 3), (2, 3), (3, 3)]
    again = flowdiffusion_edit(model, make_scheduler("ddim"), image, flow, codec=PooledRGBCodec(2), steps=3,
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(result, again)

    def cancel(done, total):
        if done == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        flowdiffusion_edit(model, make_scheduler("euler"), image, flow, codec=PooledRGBCodec(2), steps=4,
                           progress=cancel)
    assert FlowDiffusionConfig().steps == 20 and FlowDiffusionConfig().s_img == FlowDiffusionConfig().s_flow == 1.5


def test_condition_dropout_rates_and_the_image_is_never_dropped_alone():
    keep_image, keep_flow = condition_dropout(40_000, torch.Generator().manual_seed(0))
    assert abs((~keep_image).float().mean() - 0.05) < 0.005
    assert abs((~keep_flow).float().mean() - 0.10) < 0.006
    assert not (~keep_image & keep_flow).any()  # image dropped => flow dropped
    with pytest.raises(ValueError, match="image_rate <= flow_rate"):
        condition_dropout(4, torch.Generator(), 0.2, 0.1)


def test_compositing_keeps_the_target_only_inside_the_edit_region():
    sources, targets = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)
    flows, mask = torch.zeros(1, 2, 16, 16), torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[0, 4:8, 4:8] = True
    flows[0, 0, 4:8, 4:8] = 5.0  # the square moves 5 px right
    region = edit_region(flows, mask, dilation=0)
    assert region[0, 4:8, 4:8].all() and region[0, 4:8, 9:13].all()  # where it was and where it lands
    assert region.sum() == 16 + 16 and not region[0, 4:8, 8].any()  # 4x4 where it was, 4x4 where it lands
    composite = background_composite(sources, targets, region)
    assert torch.equal(composite[:, :, region[0]], targets[:, :, region[0]])
    assert composite[:, :, ~region[0]].abs().max() == 0
    # The given mask decides, not the flow: a mask elsewhere moves the region with it.
    other = torch.zeros_like(mask)
    other[0, 10:12, 0:2] = True
    moved_mask = edit_region(flows, other, dilation=0)
    assert moved_mask[0, 10:12, 0:2].all() and not moved_mask[0, 4:8, 4:8].any()
    assert edit_region(flows, mask, dilation=1).sum() > region.sum()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(pairs, prediction_type):
    torch.manual_seed(0)
    model = FlowDiffusion.tiny(sample_size=16)
    model.prediction_type = prediction_type
    batch = make_batch(pairs.batch(torch.arange(4)), PooledRGBCodec(2), small_config(),
                       torch.Generator().manual_seed(0))
    scheduler = make_scheduler("ddpm")
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3)
    with torch.no_grad():
        before = float(diffusion_loss(model, scheduler, batch))
    for _ in range(15):
        loss = diffusion_loss(model, scheduler, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(diffusion_loss(model, scheduler, batch))
    assert after < 0.7 * before


def test_lora_rank_8_adapts_only_the_attention_projections(pairs, tmp_path):
    torch.manual_seed(0)
    model = FlowDiffusion.tiny(sample_size=16)
    frozen = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # lora_conv_in=False: the paper's LoRA alone (a fresh model would train conv_in too, see below)
    trainer = FlowDiffusionTrainer(small_config(steps=2, lora_rank=8, lora_conv_in=False), pairs, tmp_path / "lora",
                                   model=model, show_progress=False)
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert names and all("lora_" in name for name in names)
    adapted = {name.split(".lora_")[0] for name in names}
    kinds = {"to_out.0" if name.endswith("to_out.0") else name.rsplit(".", 1)[-1] for name in adapted}
    assert kinds == {"to_q", "to_k", "to_v", "to_out.0"}
    # every attention projection of the UNet (self- and cross-attention) has one
    projections = {name.rsplit(".", 1)[0] for name in frozen if name.endswith(("to_q.weight", "to_k.weight",
                                                                               "to_v.weight", "to_out.0.weight"))}
    assert adapted == {"unet." + n.removeprefix("unet.") for n in projections}
    downs = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert downs and all(p.shape[0] == 8 for p in downs)
    result = trainer.run(None)
    state = model.state_dict()
    for name, tensor in state.items():  # every weight outside the LoRA is unchanged
        if "lora_" not in name:
            assert torch.equal(tensor, frozen[name.replace(".base_layer", "")]), name
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    saved = torch.load(result.out / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert saved["model"] and all("lora_" in name or name.startswith("unet.conv_in.") for name in saved["model"])


def test_a_lora_on_a_fresh_sd_unet_trains_conv_in_so_it_sees_the_conditions(pairs, tmp_path):
    """from_sd_unet leaves the image / flow channels of conv_in zero; a LoRA with conv_in frozen
    could never read the conditions. On such a model the trainer trains conv_in with the LoRA
    and the checkpoint keeps it (resumed runs equal the straight one)."""
    torch.manual_seed(0)
    base = UNet2DConditionModel(**tiny_config(in_channels=4, sample_size=16))
    model = from_sd_unet(base)
    assert conditions_unseen(model)
    trainer = FlowDiffusionTrainer(small_config(steps=2, lora_rank=2, learning_rate=1e-2), pairs, tmp_path / "run",
                                   model=model, show_progress=False)
    assert trainer.config.lora_conv_in is True  # resolved from the zero channels, saved with the run
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"unet.conv_in.weight", "unet.conv_in.bias"} <= trainable
    assert all("lora_" in name for name in trainable - {"unet.conv_in.weight", "unet.conv_in.bias"})
    trainer.run(None)
    assert model.unet.conv_in.weight[:, 4:].abs().max() > 0 and not conditions_unseen(model)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert torch.equal(saved["model"]["unet.conv_in.weight"], model.unet.conv_in.weight)
    # resumed from step 1 on a fresh model from the same base: the same weights, conv_in included
    half = FlowDiffusionTrainer(small_config(steps=1, lora_rank=2, learning_rate=1e-2), pairs, tmp_path / "split",
                                model=from_sd_unet(base), show_progress=False)
    half.run(None)
    rest = FlowDiffusionTrainer(small_config(steps=2, lora_rank=2, learning_rate=1e-2), pairs, tmp_path / "split",
                                model=from_sd_unet(base), show_progress=False)
    rest.run("auto")
    for (name, a), b in zip(model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), name
    # Asked not to, it stays blind: the new channels keep their zeros.
    blind = from_sd_unet(base)
    FlowDiffusionTrainer(small_config(steps=1, lora_rank=2, lora_conv_in=False), pairs, tmp_path / "blind",
                         model=blind, show_progress=False).run(None)
    assert conditions_unseen(blind)


def test_resume_is_exact_and_the_checkpoint_loads(pairs, tmp_path):
    straight = FlowDiffusionTrainer(small_config(), pairs, tmp_path / "straight", show_progress=False)
    straight.run(None)
    first = FlowDiffusionTrainer(small_config(steps=2), pairs, tmp_path / "split", show_progress=False)
    first.run(None)
    torch.manual_seed(1234)  # a resumed process starts from another global RNG state
    second = FlowDiffusionTrainer(small_config(), pairs, tmp_path / "split", show_progress=False)
    result = second.run("auto")
    assert result.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    loaded = load_flowdiffusion(tmp_path / "split")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.model.state_dict().values()))


def test_a_dataset_folder_with_flow_and_mask_files_feeds_the_trainer(pairs, tmp_path):
    root = tmp_path / "mined"
    with DatasetWriter(root) as writer:
        for index in range(3):
            writer.add(f"pair{index}", "", pairs.sources[index].float() / 255, pairs.targets[index].float() / 255)
    write_flo(root / "images" / "pair0_flow.flo", pairs.flows[0])
    write_flo(root / "images" / "pair1_flow.flo", pairs.flows[1])
    mask = torch.zeros(1, 3, 32, 32)
    mask[..., 16:] = 1
    save_image(mask, root / "images" / "pair1_mask.png")
    folder = EditPairFolder(root, (32, 32))
    assert len(folder) == 2
    batch = folder.batch(torch.tensor([0, 1]))
    assert batch.targets.shape == (2, 3, 32, 32) and batch.masks[1, :, 16:].all() and not batch.masks[1, :, :16].any()
    assert torch.allclose(batch.targets[0], pairs.targets[0].float() / 255, atol=1 / 255)
    trainer = FlowDiffusionTrainer(small_config(steps=1), folder, tmp_path / "run", show_progress=False)
    assert trainer.run(None).step == 1


def test_v_prediction_is_converted_to_the_noise_the_guidance_combines():
    scheduler = make_scheduler("ddpm")
    clean, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([10, 500, 951])
    noisy = scheduler.add_noise(clean, noise, timesteps)
    velocity = scheduler.get_velocity(clean, noise, timesteps)
    assert torch.allclose(noise_prediction(velocity, noisy, timesteps, "v_prediction"), noise, atol=1e-5)
    assert noise_prediction(velocity, noisy, timesteps, "epsilon") is velocity
    # the three passes of a v model are converted with the same x_t: guiding v == guiding ε
    torch.manual_seed(0)
    model = FlowDiffusion.tiny(sample_size=8).eval()
    model.prediction_type = "v_prediction"
    latents, image, flow = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        guided = guided_noise(model, latents, torch.tensor(700), image, flow, 1.5, 2.0)
        outputs = [model(latents, torch.tensor(700), i, f) for i, f in
                   ((torch.zeros_like(image), torch.zeros_like(flow)), (image, torch.zeros_like(flow)), (image, flow))]
    expected = noise_prediction(combine_guidance(*outputs, 1.5, 2.0), latents, torch.tensor(700), "v_prediction")
    assert torch.allclose(guided, expected, atol=1e-5)
    with pytest.raises(ValueError, match="prediction_type"):
        FlowDiffusion(model.unet, prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type"):
        small_config(prediction_type="x0")


def test_a_v_prediction_run_regresses_v_and_its_checkpoint_keeps_the_setting(pairs, tmp_path):
    trainer = FlowDiffusionTrainer(small_config(steps=2, prediction_type="v_prediction"), pairs, tmp_path / "v",
                                   show_progress=False)
    assert trainer.model.prediction_type == "v_prediction"
    batch = trainer.batch(0)
    with torch.no_grad():
        loss = diffusion_loss(trainer.model, trainer.noise_scheduler, batch)
        noisy = trainer.noise_scheduler.add_noise(batch.targets, batch.noise, batch.timesteps)
        output = trainer.model(noisy, batch.timesteps, batch.image_latents * batch.keep_image.view(-1, 1, 1, 1),
                               batch.flow * batch.keep_flow.view(-1, 1, 1, 1))
    velocity = trainer.noise_scheduler.get_velocity(batch.targets, batch.noise, batch.timesteps)
    assert torch.allclose(loss, ((output - velocity) ** 2).mean(), atol=1e-6)
    trainer.run(None)
    loaded = load_flowdiffusion(tmp_path / "v")
    assert loaded.prediction_type == "v_prediction"
    assert FlowDiffusionTrainConfig().prediction_type == "epsilon"  # the paper's (SD 1.5) default
    result = flowdiffusion_edit(loaded, make_scheduler("ddim"), pairs.sources[:1].float() / 255, pairs.flows[:1],
                                codec=PooledRGBCodec(2), steps=2, generator=torch.Generator().manual_seed(0))
    assert result.shape == (1, 3, 32, 32) and torch.isfinite(result).all()
