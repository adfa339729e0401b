"""Held-out evaluation: what counts as performing the motion, and paired before/after statistics."""

from __future__ import annotations

import math

import pytest
import torch

from motionnft.heldout import (HeldoutScores, format_comparison, mean_and_error, paired_change, performed_motion,
                               score_heldout)


def square_moving_right(pixels: float) -> torch.Tensor:
    """``(1, 2, 16, 16)``: a 6×6 square moving ``pixels`` to the right, the rest still."""
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0, 5:11, 5:11] = pixels
    return flow


def test_an_edit_performs_the_motion_when_its_error_is_under_half_the_motion_on_the_moving_pixels():
    target = square_moving_right(8.0)
    edits = torch.cat((
        square_moving_right(8.0),   # exact
        square_moving_right(5.0),   # error 3 < 4: most of the way
        square_moving_right(3.0),   # error 5 > 4: under half the way
        torch.zeros_like(target),   # no motion: error 8
        square_moving_right(-8.0),  # the wrong way: error 16
    ))
    assert performed_motion(edits, target).tolist() == [True, True, False, False, False]
    # motion outside the target's moving pixels does not count against the edit
    extra = square_moving_right(8.0)
    extra[:, 1, 0:3, 0:3] = 5.0
    assert performed_motion(extra, target).tolist() == [True]


def test_a_still_target_is_performed_only_by_a_still_edit():
    still = torch.zeros(1, 2, 16, 16)
    assert performed_motion(torch.cat((still, square_moving_right(30.0))), still).tolist() == [True, False]


def test_performed_motion_names_a_flow_of_the_wrong_shape():
    with pytest.raises(ValueError, match="flow_target"):
        performed_motion(torch.zeros(2, 2, 16, 16), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="flow_edit"):
        performed_motion(torch.zeros(2, 3, 16, 16), torch.zeros(1, 2, 16, 16))


def scores(step: int, mas: list[list[float]]) -> HeldoutScores:
    values = torch.tensor(mas)
    return HeldoutScores([f"p{i}" for i in range(len(mas))], step,
                         {"reward": values / 100, "reward_continuous": values / 100, "mas": values,
                          "performed": (values > 50).float()})


def test_the_change_is_paired_per_prompt_with_its_standard_error():
    before = scores(0, [[10, 30], [60, 80], [40, 40]])  # per prompt 20, 70, 40
    after = scores(5, [[30, 30], [70, 90], [50, 60]])   # per prompt 30, 80, 55: changes 10, 10, 15
    mean, error = paired_change(before, after, "mas")
    assert mean == pytest.approx(35 / 3)
    assert error == pytest.approx(math.sqrt(((10 - 35 / 3) ** 2 * 2 + (15 - 35 / 3) ** 2) / 2 / 3))
    # the paired error is far smaller than the spread between prompts
    assert error < mean_and_error(after.per_prompt("mas"))[1]
    with pytest.raises(ValueError, match="different prompts"):
        paired_change(before, scores(5, [[1, 1], [1, 1]]), "mas")
    table = format_comparison(before, after)
    assert "3 prompts x 2 rollouts" in table and "+11.67 ± 1.67" in table


def test_scores_survive_a_round_trip_through_json_data():
    original = scores(3, [[10, 70], [60, 20]])
    again = HeldoutScores.from_dict(original.to_dict())
    assert again.ids == original.ids and again.step == 3
    assert all(torch.equal(again.scores[k], original.scores[k]) for k in original.scores)


def test_score_heldout_runs_every_prompt_and_keeps_the_first_images():
    calls = []

    def rollouts(index):
        calls.append(index)
        return torch.full((3, 3, 4, 4), index / 10)

    def score(index, edits):
        value = edits.flatten(1).mean(1)
        return {"reward": value, "reward_continuous": value, "mas": 100 * value, "performed": value > 0.05}

    result = score_heldout(["a", "b", "c"], rollouts, score, step=7, keep_images=2)
    assert calls == [0, 1, 2] and result.images.shape == (2, 3, 3, 4, 4)
    assert result.per_prompt("mas") == pytest.approx([0.0, 10.0, 20.0])
    assert result.per_prompt("performed") == [0.0, 1.0, 1.0]
