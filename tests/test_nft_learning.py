"""DiffusionNFT moves a policy toward the rewarded mode: a 2-D toy with a known ranking.

A small velocity network is pre-trained by flow matching on two equally likely modes,
x0 ≈ (−1, 0) and x0 ≈ (+1, 0). The reward prefers the right-hand mode. A few NFT steps
(the project's own rollout sampler, optimality rewards, loss and old-policy update) must
push the share of samples in the right-hand mode well up; the same steps with the
reward ignored must leave it where it was, and with the loss's sign flipped must push it
down. The last two are the controls that show the first assertion can fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

from motionnft.nft import NFTConfig, lerp_, loss_timesteps, nft_loss, old_policy_rate, optimality_rewards
from motionnft.sampling import sample

SIGMAS = torch.linspace(1.0, 0.0, 11)
PROMPTS, ROLLOUTS = 4, 8


class Velocity(torch.nn.Module):
    """``v(x, t)`` for points ``x`` ``(B, 2)`` at flow times ``t`` ``(B,)``."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                       torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((x, t.view(-1, 1)), dim=1))


def two_modes(count: int, generator: torch.Generator) -> torch.Tensor:
    side = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    return torch.stack((side, torch.zeros(count)), dim=1) + 0.05 * torch.randn(count, 2, generator=generator)


def right_mode(x0: torch.Tensor) -> torch.Tensor:
    """The known ranking: 1 in the right-hand mode, 0 in the left-hand one."""
    return (x0[:, 0] > 0).float()


@pytest.fixture(scope="module")
def base() -> Velocity:
    torch.manual_seed(0)
    model = Velocity()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(800):
        x0 = two_modes(256, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.rand(256, generator=generator)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
        loss = (model(x_t, t) - (noise - x0)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.requires_grad_(False)


@torch.no_grad()
def right_share(model: Velocity) -> float:
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(123))
    return float(right_mode(sample(model, noise, SIGMAS, "euler")).mean())


def nft_steps(base: Velocity, steps: int, reward_of, loss_sign: float = 1.0) -> Velocity:
    """``steps`` DiffusionNFT updates of a copy of ``base``: rollouts from the old policy,
    optimality rewards per group, one sampler timestep per rollout, the NFT loss with the
    KL anchor to ``base``, AdamW, then the old-policy soft update."""
    config = NFTConfig()
    policy, old = copy.deepcopy(base).requires_grad_(True), copy.deepcopy(base)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        with torch.no_grad():
            x0 = sample(old, torch.randn(PROMPTS * ROLLOUTS, 2, generator=generator), SIGMAS, "euler")
        reward = optimality_rewards(reward_of(x0).view(PROMPTS, ROLLOUTS), config).reward.view(-1)
        t = loss_timesteps(SIGMAS, x0.shape[0], config.timestep_fraction, generator)[:, 0]
        noise = torch.randn(x0.shape, generator=generator)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * noise
        with torch.no_grad():
            v_old, v_ref = old(x_t, t), base(x_t, t)
        loss = nft_loss(policy(x_t, t), v_old, x_t, x0, t, reward, v_ref, config)
        optimizer.zero_grad()
        (loss_sign * loss.total).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        lerp_(old.parameters(), policy.parameters(), old_policy_rate(step, config))
    return policy


def test_the_pretrained_toy_samples_both_modes(base):
    assert 0.4 < right_share(base) < 0.6


def test_nft_moves_the_policy_to_the_rewarded_mode(base):
    assert right_share(nft_steps(base, 30, right_mode)) > 0.9


def test_with_the_reward_ignored_the_same_steps_leave_the_modes_as_they_were(base):
    ignored = nft_steps(base, 30, lambda x0: torch.full((x0.shape[0],), 0.5))
    assert abs(right_share(ignored) - right_share(base)) < 0.1


def test_with_the_loss_sign_flipped_the_policy_leaves_the_rewarded_mode(base):
    assert right_share(nft_steps(base, 30, right_mode, loss_sign=-1.0)) < 0.3
