"""The reward-breakdown figure."""

from __future__ import annotations

import pytest
import torch

from motionnft.report import colorize, render_reward_breakdown
from motionnft.reward import motion_reward_from_flows


def test_breakdown_is_an_rgb_figure_wider_than_three_panels():
    flow_target = torch.zeros(1, 2, 40, 60)
    flow_target[:, 0, 10:30, 20:40] = 4.0
    result = motion_reward_from_flows(torch.zeros(1, 2, 40, 60), flow_target)
    image = torch.rand(1, 3, 40, 60)
    figure = render_reward_breakdown(image, image, image, result, panel_width=120)
    assert figure.shape[0] == 3 and figure.shape[2] >= 3 * 120 and figure.shape[1] > 3 * 80
    assert 0 <= float(figure.min()) and float(figure.max()) <= 1
    assert figure.std() > 0.05


def test_breakdown_needs_the_flows_and_a_valid_index():
    result = motion_reward_from_flows(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
    image = torch.rand(3, 8, 8)
    with pytest.raises(IndexError):
        render_reward_breakdown(image, image, image, result, index=1)
    result.flow_edit = None
    with pytest.raises(ValueError, match="flows"):
        render_reward_breakdown(image, image, image, result)


def test_colorize_runs_dark_to_bright():
    ramp = colorize(torch.linspace(0, 1, 10).view(1, 10), 0.0, 1.0)
    brightness = ramp.mean(dim=0)[0]
    assert brightness[0] < 0.1 and brightness[-1] > 0.6
    assert ramp.shape == (3, 1, 10)
