"""The DiffusionNFT objective: optimality rewards, group filters, loss, old-policy and EMA updates."""

from __future__ import annotations

import math

import pytest
import torch

from motionnft.nft import (NFTConfig, ema_decay, lerp_, loss_timesteps, nft_loss, old_policy_rate,
                           optimality_rewards)


def test_optimality_reward_uses_the_prompt_mean_and_the_global_std():
    raw = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.4, 0.6]])
    result = optimality_rewards(raw)
    values = [v for row in raw.tolist() for v in row]
    mean_all = sum(values) / 6
    global_std = math.sqrt(sum((v - mean_all) ** 2 for v in values) / 6)  # population std
    assert result.global_std == pytest.approx(global_std, rel=1e-6)
    for p, row in enumerate(raw.tolist()):
        prompt_mean = sum(row) / 3
        for k, value in enumerate(row):
            advantage = (value - prompt_mean) / (global_std + 1e-4)
            assert float(result.advantage[p, k]) == pytest.approx(advantage, rel=1e-5)
            assert float(result.reward[p, k]) == pytest.approx(advantage / 10 + 0.5, rel=1e-5)


def test_advantages_are_clipped_and_rewards_stay_in_0_1():
    # one outlier among many equal rewards: its advantage exceeds 5 before clipping
    raw = torch.tensor([[0.0] * 99 + [1.0]])
    result = optimality_rewards(raw)
    assert float(result.advantage.max()) == 5.0
    assert float(result.reward.max()) == pytest.approx(1.0)
    assert float(result.reward.min()) >= 0.0


@pytest.mark.parametrize("clip", [5.0, 2.0, 1.0])
def test_the_clip_range_maps_onto_0_to_1(clip):
    # the reference: r = clip((A / adv_clip_max) / 2 + 0.5, 0, 1), so -clip -> 0, 0 -> 1/2, +clip -> 1
    raw = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0], [0.1, 0.1, 0.1, 0.1, 0.9]])
    result = optimality_rewards(raw, NFTConfig(advantage_clip=clip))
    assert float(result.advantage.abs().max()) <= clip
    expected = (result.advantage / clip / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(result.reward, expected, atol=1e-6)
    # one outlier among 99 equal rewards has |A| ~ 10 before clipping: it lands on 1 (or 0)
    high = optimality_rewards(torch.tensor([[0.0] * 99 + [1.0]]), NFTConfig(advantage_clip=clip))
    low = optimality_rewards(torch.tensor([[1.0] * 99 + [0.0]]), NFTConfig(advantage_clip=clip))
    assert float(high.reward[0, -1]) == pytest.approx(1.0) and float(low.reward[0, -1]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="advantage_clip"):
        NFTConfig(advantage_clip=0.0)


def test_group_filters_train_informative_prompts_and_retire_solved_ones():
    raw = torch.tensor([
        [0.2, 0.6, 0.4, 0.8],    # std 0.22 > 0.05, mean 0.5 < 0.9  -> trains
        [0.4, 0.4, 0.4, 0.4],    # std 0: no signal                   -> skipped, kept for later
        [1.0, 1.0, 1.0, 1.0],    # std 0, mean 1 > 0.9: solved         -> skipped and retired
        [1.0, 0.8, 1.0, 1.0],    # std 0.087, mean 0.95 >= 0.9         -> skipped, not retired
    ])
    result = optimality_rewards(raw)
    assert result.train.tolist() == [True, False, False, False]
    assert result.retire.tolist() == [False, False, True, False]
    relaxed = optimality_rewards(raw, NFTConfig(group_mean_max=1.01))
    assert relaxed.train.tolist() == [True, False, False, True]


def _hand_loss(v_theta, v_old, v_ref, x0, noise, t, r, beta, scale, kl_weight):
    """The loss written out element by element with Python floats."""
    x_t = [(1 - t) * a + t * e for a, e in zip(x0, noise)]
    terms = []
    for sign in (+1, -1):
        v = [(1 - sign * beta) * o + sign * beta * p for p, o in zip(v_theta, v_old)]
        errors = [xt - t * vv - a for xt, vv, a in zip(x_t, v, x0)]
        mse = sum(e * e for e in errors) / len(errors)
        weight = max(sum(abs(e) for e in errors) / len(errors), 1e-5)
        terms.append(mse / weight)
    kl = sum((p - q) ** 2 for p, q in zip(v_theta, v_ref)) / len(v_theta)
    return scale * (r * terms[0] + (1 - r) * terms[1]) / beta + kl_weight * kl, terms


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_loss_matches_a_hand_computation(beta):
    x0 = torch.tensor([[[0.5], [-1.0]], [[0.25], [2.0]]])
    noise = torch.tensor([[[1.0], [0.5]], [[-0.5], [0.0]]])
    v_theta = torch.tensor([[[0.3], [1.2]], [[-0.8], [-1.5]]], requires_grad=True)
    v_old = torch.tensor([[[0.6], [1.0]], [[-0.5], [-2.5]]])
    v_ref = torch.tensor([[[0.0], [1.0]], [[-1.0], [-2.0]]])
    t = torch.tensor([0.75, 0.25])
    r = torch.tensor([0.9, 0.2])
    config = NFTConfig(beta=beta, kl_weight=0.01)
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
    loss = nft_loss(v_theta, v_old, x_t, x0, t, r, v_ref, config)
    expected = []
    for b in range(2):
        value, (positive, negative) = _hand_loss(
            v_theta[b].flatten().tolist(), v_old[b].flatten().tolist(), v_ref[b].flatten().tolist(),
            x0[b].flatten().tolist(), noise[b].flatten().tolist(), float(t[b]), float(r[b]), beta, 5.0, 0.01)
        expected.append(value)
        assert float(loss.positive[b].detach()) == pytest.approx(positive, rel=1e-5)
        assert float(loss.negative[b].detach()) == pytest.approx(negative, rel=1e-5)
    assert loss.per_sample.detach().tolist() == pytest.approx(expected, rel=1e-5)
    assert float(loss.total.detach()) == pytest.approx(sum(expected) / 2, rel=1e-5)
    loss.total.backward()
    assert v_theta.grad is not None and v_theta.grad.abs().sum() > 0


def test_the_adaptive_weight_is_not_differentiated():
    # d/dv of mse/sg(mae) = 2·err·(-t)/n / mae: the gradient of the (detached) weight is absent
    x0 = torch.tensor([[1.0, 3.0]])
    v_theta = torch.tensor([[0.0, 0.0]], requires_grad=True)
    t = torch.tensor([0.5])
    x_t = torch.tensor([[0.0, 0.0]])
    loss = nft_loss(v_theta, v_theta.detach(), x_t, x0, t, torch.tensor([1.0]), None, NFTConfig(loss_scale=1.0))
    loss.total.backward()
    errors = torch.tensor([-1.0, -3.0])  # x_t - t·v - x0 at v = 0
    mae = errors.abs().mean()
    expected = 2 * errors * (-0.5) / 2 / mae
    assert torch.allclose(v_theta.grad[0], expected)


def test_a_perfect_policy_prefers_high_reward():
    # v_θ pointing exactly at x0 (v = ε − x0) gives L+ = 0 where the old policy is off by δ
    x0, noise = torch.randn(1, 8), torch.randn(1, 8)
    t = torch.tensor([0.6])
    x_t = (1 - t) * x0 + t * noise
    exact = noise - x0
    loss = nft_loss(exact, exact + 0.1, x_t, x0, t, torch.tensor([1.0]), None, NFTConfig(beta=1.0))
    assert float(loss.positive[0]) < 1e-6 and float(loss.negative[0]) > 0.01


def test_loss_timesteps_are_a_per_sample_shuffle_of_the_sampler_steps():
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    times = loss_timesteps(sigmas, 50, 0.99, torch.Generator().manual_seed(0))
    assert times.shape == (50, 5)  # int(6 · 0.99) = 5 of the 6 sampler timesteps
    allowed = set(sigmas[:-1].tolist())
    for row in times.tolist():
        assert set(row) <= allowed and len(set(row)) == 5
    assert len({tuple(row) for row in times.tolist()}) > 10


def test_old_policy_and_ema_schedules():
    assert old_policy_rate(0) == 0.0 and old_policy_rate(100) == pytest.approx(0.1)
    assert old_policy_rate(10_000) == 0.5
    assert ema_decay(0) == pytest.approx(0.1) and ema_decay(8) == pytest.approx(0.5)
    assert ema_decay(1000) == 0.9
    old, new = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    lerp_(old, new, 0.25)
    assert old[0].tolist() == [2.5, 5.0]
