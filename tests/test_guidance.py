"""Motion Guidance: predictions, the energy's terms and mask, the guided step and samplers, adapters.

The property tests (the flow term's gradient, the occlusion mask, the edit mask, the
recursion count, a guided toy sample ending nearer the target flow) were each checked to
fail with the property broken (gradient sign flipped, term or mask dropped).
"""

from __future__ import annotations

import pytest
import torch

from motionnft.flow import create_estimator, resize_flow
from motionnft.flow.correlation import CorrelationFlow, CorrelationFlowConfig, correlation_flow, patch_distance
from motionnft.guidance import (DEFAULT_STEPS, GuidanceConfig, MotionEnergy, clip_correction, colour_term,
                                correlation_flow_fn,
                                ddim_levels, edit_region, estimator_flow_fn, flow_errors, flow_matching_levels,
                                flow_term, guide_step, guided_denoiser, guided_pass_count, guided_sample,
                                guided_steps, join_prediction, noised, occlusion_mask, renoise, split_prediction,
                                step_to, translation_flow)
from motionnft.synthetic import FigurePose, render_scene, scene_flow

torch.set_num_threads(1)

SIZE = (48, 48)
POSE = FigurePose(x=0.42, y=0.6, arm_angle=20.0)


def scene(dx_pixels: float = 0.0, style: str = "textured") -> torch.Tensor:
    return render_scene(POSE.moved(dx=dx_pixels / SIZE[1]), SIZE, seed=1, style=style).unsqueeze(0)


def target_flow(dx_pixels: float) -> torch.Tensor:
    return scene_flow(POSE, POSE.moved(dx=dx_pixels / SIZE[1]), SIZE).unsqueeze(0)


# -- predictions and levels ---------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "velocity", "x0"])
def test_each_prediction_gives_the_clean_and_noise_estimates_and_round_trips(prediction):
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, generator=generator), torch.randn(2, 5, generator=generator)
    t = 0.3
    alpha, sigma = 1 - t, t  # flow matching: x_t = (1 − t) x0 + t ε
    x_t = alpha * x0 + sigma * eps
    output = {"epsilon": eps, "velocity": eps - x0, "x0": x0}[prediction]
    got_x0, got_eps = split_prediction(output, x_t, alpha, sigma, prediction)
    assert torch.allclose(got_x0, x0, atol=1e-5) and torch.allclose(got_eps, eps, atol=1e-5)
    assert torch.allclose(join_prediction(got_x0, got_eps, alpha, sigma, prediction), output, atol=1e-5)


def test_hand_computed_clean_estimates():
    x_t = torch.tensor([[1.0, 2.0]])
    # SD-style ε model at ᾱ = 0.64: x̂0 = (x_t − sqrt(1 − ᾱ) ε) / sqrt(ᾱ)
    eps = torch.tensor([[0.5, -1.0]])
    x0, _ = split_prediction(eps, x_t, 0.8, 0.6, "epsilon")
    assert torch.allclose(x0, torch.tensor([[(1 - 0.3) / 0.8, (2 + 0.6) / 0.8]]))
    # flow matching at t = 0.25: x̂0 = x_t − t·v
    v = torch.tensor([[2.0, 4.0]])
    x0, _ = split_prediction(v, x_t, 0.75, 0.25, "velocity")
    assert torch.allclose(x0, torch.tensor([[0.5, 1.0]]))


def test_the_ddim_step_is_the_euler_step_for_flow_matching_and_renoising_keeps_the_level():
    generator = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    t, t_next = 0.7, 0.4
    x0, eps = split_prediction(v, x, 1 - t, t, "velocity")
    assert torch.allclose(step_to(x0, eps, 1 - t_next, t_next), x + (t_next - t) * v, atol=1e-5)
    # a clean x0 = 0 brought to t_next and re-noised to t has the noise level of t
    big = torch.randn(20000, 1, generator=generator)
    lower = noised(torch.zeros_like(big), big, 1 - t_next, t_next)
    back = renoise(lower, torch.randn(20000, 1, generator=generator), 1 - t, t, 1 - t_next, t_next)
    assert abs(back.std().item() - t) < 0.01


def test_levels_of_both_schedules():
    flow = flow_matching_levels(torch.tensor([1.0, 0.6, 0.0]))
    assert torch.allclose(flow.alpha + flow.sigma, torch.ones(3, dtype=torch.float64))
    bars = torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)
    ddim = ddim_levels(bars, [999, 500, 0])
    assert ddim.times.tolist() == [999.0, 500.0, 0.0, -1.0]
    assert torch.allclose(ddim.alpha ** 2 + ddim.sigma ** 2, torch.ones(4, dtype=torch.float64))
    assert ddim.alpha[-1] == 1 and ddim.sigma[-1] == 0


def test_the_guided_steps_and_pass_count():
    config = GuidanceConfig(start=0.25, end=0.75, recursions=3)
    assert guided_steps(8, config) == [False, False, True, True, True, True, False, False]
    assert guided_pass_count(8, config) == 12
    assert sum(guided_steps(2, GuidanceConfig(start=0.4, end=0.45))) == 1  # never empty
    official = GuidanceConfig.official()
    assert (official.recursions, official.start, official.end, official.scale, official.clip) == (10, 0, 1, 300, 200)
    with pytest.raises(ValueError, match="start"):
        GuidanceConfig(start=0.8, end=0.2)


def test_the_default_recipe_is_at_least_20x_cheaper_than_the_official_like_one():
    # the benchmark's official-like recipe: 50 flow-matching steps x 10 recursions, every step guided
    # but t = 1 (no signal there): 49 x 10 = 490 guided passes (the paper: 500 x 10 ~ 5,000)
    official_like = (guided_pass_count(50, GuidanceConfig.official()) - GuidanceConfig.official().recursions)
    assert official_like == 490
    default = GuidanceConfig()
    assert guided_pass_count(DEFAULT_STEPS, default) * 20 <= official_like
    assert guided_steps(DEFAULT_STEPS, default)[-1]  # guidance reaches the last step (it must, see config.py)
    assert not guided_steps(DEFAULT_STEPS, default)[0]  # t = 1 is never guided anyway
    # the paper's numbers do not follow the project's defaults
    official = GuidanceConfig.official()
    assert (official.flow_weight, official.colour_weight) == (3, 100)


def test_clipping_per_sample_by_norm_and_elementwise():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    assert torch.allclose(clip_correction(delta, 1.0).norm(dim=1), torch.tensor([1.0, 0.5]))
    assert torch.equal(clip_correction(delta, 0.35, "abs"), torch.tensor([[0.35, 0.35], [0.3, 0.35]]))
    assert torch.equal(clip_correction(delta, 0.0), delta)


# -- the flow and the energy --------------------------------------------------------------------
def test_the_correlation_flow_finds_a_small_motion_and_is_differentiable():
    source, moved = scene(), scene(3.0)
    truth = target_flow(3.0)
    errors = flow_errors(correlation_flow(source, moved), truth)
    assert errors.moved.item() < 1.0
    # identical images: no motion on average (smooth textures leave a spread, biased near the borders)
    assert correlation_flow(source, source).norm(dim=1).mean() < 0.75
    assert patch_distance(source, moved, 2).shape == (1, 25, *SIZE)
    result = moved.clone().requires_grad_(True)
    CorrelationFlow()(source, result).sum().backward()
    assert result.grad is not None and result.grad.abs().sum() > 0


def test_occlusion_mask_by_hand():
    flow = translation_flow(torch.zeros(1, 1, 4, 6).index_fill_(3, torch.tensor([1]), 1.0), 2.0)
    flow[:, :, 0] = 0
    flow[:, :, 3] = 0  # a 2-pixel column block at x = 1 (rows 1-2) moves right by 2
    mask = occlusion_mask(flow)[0, 0]
    expected = torch.ones(4, 6)
    expected[1:3, 3] = 0
    assert torch.equal(mask, expected)


def test_the_flow_terms_gradient_reduces_the_flow_term():
    source, truth = scene(), target_flow(3.0)
    flow_fn = correlation_flow_fn(CorrelationFlowConfig(temperature=1e-2))
    result = source.clone().requires_grad_(True)
    before = flow_term(flow_fn(source, result), truth)
    (gradient,) = torch.autograd.grad(before.sum(), result)
    step = 0.02 * gradient / gradient.abs().max()
    after = flow_term(flow_fn(source, (source - step).detach()), truth)
    assert after.item() < before.item() - 1e-3


def test_the_colour_term_is_masked_where_the_moved_object_lands():
    source, goal, truth = scene(), scene(4.0), target_flow(4.0)
    mask = occlusion_mask(truth)
    assert mask.min() == 0 and (mask == 0).sum() < (truth.norm(dim=1) > 0).sum()
    masked = colour_term(goal, source, truth, mask)
    unmasked = colour_term(goal, source, truth)
    assert masked.item() < 0.5 * unmasked.item()
    # an energy built with occlusion masking uses that mask
    energy = MotionEnergy(source, truth, correlation_flow_fn(), GuidanceConfig(flow_weight=0.0))
    _, info = energy(goal)
    assert torch.allclose(info["colour"], masked)


def test_the_energy_reports_its_terms_and_refuses_bad_shapes():
    source, truth = scene(), target_flow(3.0)
    config = GuidanceConfig(flow_weight=3.0, colour_weight=100.0)
    energy = MotionEnergy(source, truth, correlation_flow_fn(), config)
    loss, info = energy(torch.cat((source, scene(3.0))))
    assert loss.shape == (2,) and set(info) == {"flow", "colour"}
    assert torch.allclose(loss, 3.0 * info["flow"] + 100.0 * info["colour"])
    assert loss[1] < loss[0]  # the exact target scores better than the copy
    with pytest.raises(ValueError, match="target_flow"):
        MotionEnergy(source, truth[:, :1], correlation_flow_fn())


# -- the toy denoiser ---------------------------------------------------------------------------
SHIFTS = (-4.0, -2.0, 0.0, 2.0, 4.0)


class MixtureDenoiser:
    """The exact denoiser of a mixture of point masses: the scene with the figure moved by each of
    ``SHIFTS`` pixels (latents = pixels · 2 − 1). It counts its calls."""

    def __init__(self, prediction: str, level_fn):
        self.means = torch.cat([scene(dx, "plain") for dx in SHIFTS]) * 2 - 1  # (K, 3, H, W)
        self.prediction, self.level_fn, self.calls = prediction, level_fn, 0

    def __call__(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        alpha, sigma = self.level_fn(time)
        a, s = alpha.view(-1, 1, 1, 1, 1).float(), sigma.view(-1, 1, 1, 1, 1).float()
        distance = (x.unsqueeze(1) - a * self.means.unsqueeze(0)).pow(2).flatten(2).sum(2)
        weights = torch.softmax(-distance / (2 * s.flatten(1) ** 2), dim=1)
        x0 = torch.einsum("bk,kchw->bchw", weights, self.means)
        eps = (x - a[:, 0] * x0) / s[:, 0]
        return join_prediction(x0, eps, a[:, 0], s[:, 0], self.prediction)


def decode(latents: torch.Tensor) -> torch.Tensor:
    return ((latents + 1) / 2).clamp(0, 1)


def toy_levels(prediction: str):
    if prediction == "velocity":
        levels = flow_matching_levels(torch.linspace(1.0, 0.0, 13)[:])
        return levels, lambda t: (1 - t, t)
    bars = torch.cos(torch.linspace(0, 1, 1000, dtype=torch.float64) * torch.pi / 2).pow(2).clamp(1e-4, 0.9999)
    steps = torch.linspace(999, 0, 12).round().long()
    return ddim_levels(bars, steps), lambda t: (bars[t.long().clamp(0, 999)].sqrt(),
                                                (1 - bars[t.long().clamp(0, 999)]).sqrt())


def measured_error(latents: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """EPE in the moved region, measured by OpenCV DIS (not the guiding flow) on 4x upsampled
    images (DIS misses moves of a few pixels at 48²)."""
    images = decode(latents)
    up = lambda x: torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear")  # noqa: E731
    flow = create_estimator("dis", "medium")(up(scene(style="plain")).expand(images.shape[0], -1, -1, -1), up(images))
    return flow_errors(resize_flow(flow, SIZE), truth).moved


@pytest.mark.parametrize("prediction", ["velocity", "epsilon"])
def test_a_guided_toy_sample_ends_nearer_the_target_flow_than_the_unguided_one(prediction):
    levels, level_fn = toy_levels(prediction)
    truth = target_flow(4.0)
    noise = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))
    energy = MotionEnergy(scene(style="plain"), truth, correlation_flow_fn(CorrelationFlowConfig(temperature=1e-2)))
    config = GuidanceConfig(scale=30.0, clip=0.0, start=0.0, end=0.75)
    denoiser = MixtureDenoiser(prediction, level_fn)
    plain = guided_sample(denoiser, noise, levels, prediction)
    guided = guided_sample(denoiser, noise, levels, prediction, decode, energy, config)
    before, after = measured_error(plain.x, truth), measured_error(guided.x, truth)
    assert (before > 1.5).all(), before  # this noise does not reach the target by itself
    assert (after < 0.5).all() and (after < before).all(), (before, after)


def test_recursions_are_denoiser_calls():
    levels, level_fn = toy_levels("velocity")
    denoiser = MixtureDenoiser("velocity", level_fn)
    energy = MotionEnergy(scene(), target_flow(2.0), correlation_flow_fn())
    config = GuidanceConfig(recursions=3, start=0.25, end=0.75, scale=1.0)
    noise = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    result = guided_sample(denoiser, noise, levels, "velocity", decode, energy, config,
                           generator=torch.Generator().manual_seed(1))
    guided = sum(guided_steps(levels.steps, config))
    assert denoiser.calls == result.denoiser_calls == levels.steps - guided + 3 * guided
    assert result.guided_calls == guided_pass_count(levels.steps, config) == len(result.losses)


def test_the_edit_mask_keeps_the_source_outside():
    levels, level_fn = toy_levels("velocity")
    source_latent = scene(4.0) * 2 - 1  # a latent the mixture can reach, kept outside the mask
    mask = torch.zeros(1, 1, *SIZE)
    mask[..., 10:30, 10:30] = 1
    noise = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    energy = MotionEnergy(scene(), target_flow(2.0), correlation_flow_fn())
    denoiser, seen = MixtureDenoiser("velocity", level_fn), []

    def recording(x, time):
        seen.append((x.detach().clone(), float(time[0])))
        return denoiser(x, time)

    out = guided_sample(recording, noise, levels, "velocity", decode, energy, GuidanceConfig(scale=30.0, recursions=2),
                        edit_mask=mask, source_latent=source_latent, generator=torch.Generator().manual_seed(0)).x
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], source_latent.expand_as(out)[outside])
    assert not torch.equal(out[~outside], source_latent.expand_as(out)[~outside])
    # every pass, the denoiser sees the inverted source latent (1 − t)·x0 + t·noise outside the mask
    for x, t in seen:
        inverted = noised(source_latent, noise, 1 - t, t)
        assert torch.allclose(x[outside], inverted.expand_as(x)[outside], atol=1e-6)


def test_guide_step_leaves_inference_mode_and_matches_guided_denoiser():
    levels, level_fn = toy_levels("velocity")
    denoiser = MixtureDenoiser("velocity", level_fn)
    config = GuidanceConfig(scale=30.0)
    with torch.inference_mode():  # as ComfyUI runs nodes: every input is an inference tensor
        source, truth = scene(), target_flow(4.0)
        x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(4)) * 0.5
        energy = MotionEnergy(source, truth, correlation_flow_fn())
        step = guide_step(x, 0.5, 0.5, 0.5, denoiser, decode, energy, config, "velocity")
        plain = denoiser(x, torch.tensor([0.5]))
        wrapped = guided_denoiser(denoiser, decode, energy, config)(x, torch.tensor([0.5]))
    assert torch.isfinite(step.output).all() and not torch.allclose(step.output, plain)
    assert torch.allclose(wrapped, step.output, atol=1e-6)
    assert step.loss.shape == (1,) and step.correction.item() > 0
    skipped = guide_step(x, 0.5, 0.5, 0.5, denoiser, decode, energy, config, "velocity", weight=0.0)
    assert torch.allclose(skipped.output, plain) and torch.isnan(skipped.loss).all()
    cheap = guide_step(x, 0.5, 0.5, 0.5, denoiser, decode, energy, config.replace(grad_through_model=False))
    assert not torch.allclose(cheap.output, plain)


# -- adapters -------------------------------------------------------------------------------------
def test_the_estimator_adapter_is_differentiable_with_fewer_iterations_and_at_reduced_size():
    from motionnft.flow.raft import RAFT, RAFT_SMALL, RAFTFlow

    torch.manual_seed(0)
    estimator = RAFTFlow(RAFT(RAFT_SMALL).state_dict(), variant="small", preset="fast")
    flow_fn = estimator_flow_fn(estimator, iterations=2, scale=0.5)
    source = torch.rand(1, 3, 64, 64)
    result = source.clone().requires_grad_(True)
    flow = flow_fn(source, result)
    assert flow.shape == (1, 2, 64, 64) and estimator.iterations == 6  # the original is unchanged
    flow.abs().sum().backward()
    assert result.grad is not None and torch.isfinite(result.grad).all() and result.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not differentiable"):
        estimator_flow_fn(create_estimator("dis", "fast"))


def test_guided_edit_with_an_edit_model():
    pytest.importorskip("diffusers")
    from motionnft.guidance import guided_edit, token_mask
    from motionnft.models import build_model

    model = build_model("tiny_flux_kontext", tiny_size="test", dtype=torch.float32)
    model.transformer.requires_grad_(False)
    size = (32, 32)
    source = render_scene(POSE, size, seed=1).unsqueeze(0)
    truth = scene_flow(POSE, POSE.moved(dx=2 / 32), size).unsqueeze(0)
    mask = edit_region(truth, 2)
    assert token_mask(model, mask, size).shape == (1, model.token_count(size), 1)
    condition = model.encode_condition("step right", source, size)
    noise = model.noise(1, size, torch.Generator().manual_seed(0))
    edit = guided_edit(model, condition, noise, size, 4, source, truth, correlation_flow_fn(),
                       GuidanceConfig(recursions=2, start=0.0, end=1.0), edit_mask=mask,
                       generator=torch.Generator().manual_seed(1))
    assert edit.images.shape == (1, 3, *size) and edit.sample.guided_calls == 6  # t = 1 carries no guidance
    outside = token_mask(model, mask, size)  # tokens fully outside decode to the source exactly
    pixels = torch.nn.functional.interpolate(
        outside.transpose(1, 2).reshape(1, 1, 4, 4), size=size, mode="nearest") == 0
    assert torch.allclose(edit.images[pixels.expand_as(edit.images)], source[pixels.expand_as(source)], atol=1e-5)
