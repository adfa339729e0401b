"""Rollout samplers: exactness on known flows, order of accuracy, the first/last-step rules."""

from __future__ import annotations

import pytest
import torch

from motionnft.sampling import sample


def point_mass_velocity(target):
    # all data at `target`: v = ε − x0 = (x_t − x0) / t
    return lambda x, t: (x - target) / t.view(-1, 1)


def gaussian_velocity(scale):
    # data ~ N(0, scale²): E[x0 | x_t] = (1 − t)·s²·x_t / ((1 − t)²s² + t²)
    def velocity(x, t):
        t = t.view(-1, 1).double()
        x0 = (1 - t) * scale**2 * x / ((1 - t) ** 2 * scale**2 + t**2)
        return ((x - x0) / t).float()
    return velocity


@pytest.mark.parametrize("sampler", ["euler", "dpm2"])
def test_a_point_mass_is_reached_exactly(sampler):
    target = torch.tensor([[0.3, -1.2, 2.0]])
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])
    out = sample(point_mass_velocity(target), noise, sigmas, sampler)
    assert torch.allclose(out, target.expand(4, -1), atol=1e-5)


def test_dpm2_converges_at_second_order_and_euler_at_first_on_a_gaussian():
    # the probability-flow map of N(0, s²) sends the noise ε to s·ε exactly
    scale = 0.5
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))

    def error(sampler: str, steps: int) -> float:
        sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
        sigmas = 3 * sigmas / (1 + 2 * sigmas)  # the pipelines' shift-3 schedule
        return float((sample(gaussian_velocity(scale), noise, sigmas, sampler) - scale * noise).abs().max())

    euler = error("euler", 12) / error("euler", 24)
    dpm2 = error("dpm2", 12) / error("dpm2", 24)
    assert 1.5 < euler < 2.5  # halving the step halves the error
    assert dpm2 > 3.5  # ... and at least (nearly) quarters it
    assert error("dpm2", 24) < 0.25 * error("euler", 24)


def test_dpm2_first_step_is_an_euler_step_and_the_last_returns_the_x0_prediction():
    calls = []

    def velocity(x, t):
        calls.append(float(t[0]))
        return 0.5 * x + t.view(-1, 1)

    noise = torch.ones(1, 2)
    one_step = torch.tensor([1.0, 0.6])
    assert torch.allclose(sample(velocity, noise, one_step, "dpm2"), sample(velocity, noise, one_step, "euler"))
    last = torch.tensor([0.4, 0.0])
    x0_prediction = noise - 0.4 * velocity(noise, torch.tensor([0.4]))
    assert torch.allclose(sample(velocity, noise, last, "dpm2"), x0_prediction)


def test_every_step_calls_the_model_once_and_reports_progress():
    seen, progress = [], []
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0])
    sample(lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x), torch.zeros(2, 3), sigmas, "dpm2",
           callback=lambda done, total: progress.append((done, total)))
    assert seen == pytest.approx([1.0, 0.7, 0.4])
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_bad_schedules_and_samplers_are_refused():
    with pytest.raises(ValueError, match="decreasing"):
        sample(lambda x, t: x, torch.zeros(1, 1), torch.tensor([0.5, 0.8]), "euler")
    with pytest.raises(ValueError, match="sampler"):
        sample(lambda x, t: x, torch.zeros(1, 1), torch.tensor([1.0, 0.0]), "heun")
