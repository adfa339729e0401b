"""The motion reward and MAS, pinned term by term."""

from __future__ import annotations

import math

import pytest
import torch

from motionnft.reward import (
    MASConfig,
    MotionRewardConfig,
    motion_alignment_score,
    motion_reward,
    motion_reward_from_flows,
    motion_terms,
)

PAPER = MotionRewardConfig(variant="paper")
D_MIN = 1e-6**0.4


def uniform_flow(dx: float, dy: float, height: int = 3, width: int = 4, batch: int = 1) -> torch.Tensor:
    flow = torch.empty(batch, 2, height, width)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_d_min_is_the_magnitude_term_of_identical_flows():
    assert MotionRewardConfig().distance_min == pytest.approx(0.0039811, rel=1e-4)
    terms = motion_terms(uniform_flow(2, 1), uniform_flow(2, 1))
    assert float(terms.magnitude) == pytest.approx(D_MIN, rel=1e-5)


@pytest.mark.parametrize("config", [MotionRewardConfig(), PAPER], ids=["code", "paper"])
def test_identical_flows_give_reward_one_and_mas_100(config):
    torch.manual_seed(0)
    flow = torch.randn(2, 2, 24, 32) * 6
    result = motion_reward_from_flows(flow, flow.clone(), config)
    assert result.reward.tolist() == [1.0, 1.0]
    assert result.reward_continuous.tolist() == [1.0, 1.0]
    assert result.mas.score.tolist() == [100.0, 100.0]
    assert result.terms.direction.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_static_edit_of_a_moving_ground_truth_activates_m_move_and_fails_mas():
    target = uniform_flow(5.0, 0.0)  # diagonal 5: normalised motion 1.0 everywhere
    static = torch.zeros_like(target)
    result = motion_reward_from_flows(static, target)
    assert float(result.terms.movement) == pytest.approx(0.01 + 0.5 * 1.0)
    assert bool(result.mas.hard_failure) is True
    assert float(result.mas.score) == 0.0
    assert float(result.mas.movement_ratio) == 0.0


def test_edit_moving_just_over_one_percent_is_not_a_hard_failure():
    target = uniform_flow(5.0, 0.0)
    result = motion_alignment_score(target * 0.011, target)
    assert bool(result.hard_failure) is False
    assert float(result.score) > 0
    assert bool(motion_alignment_score(target * 0.009, target).hard_failure) is True


def test_exactly_opposite_motion_has_direction_error_one():
    target = uniform_flow(3.0, -2.0)
    result = motion_terms(-target, target)
    assert torch.allclose(result.direction_map, torch.ones(1, 3, 4))
    assert float(result.direction) == pytest.approx(1.0)
    assert float(motion_terms(-target, target, PAPER).direction) == pytest.approx(1.0, abs=1e-5)


def test_hand_computed_perpendicular_case_code_variant():
    # 3x4 image: diagonal 5. Ground truth (5, 0) px = (1, 0) normalised; edit (0, 5) = (0, 1).
    result = motion_reward_from_flows(uniform_flow(0.0, 5.0), uniform_flow(5.0, 0.0))
    d_mag = (1.0 + 1e-6) ** 0.4  # |Δ| = 1 in both channels
    assert float(result.terms.magnitude) == pytest.approx(d_mag, rel=1e-6)
    assert float(result.terms.direction) == pytest.approx(0.5)  # cos = 0
    assert float(result.terms.movement) == 0.0  # 0.01 + 0.5·1 − 1 < 0
    distance = 0.7 * d_mag + 0.2 * 0.5
    assert float(result.distance) == pytest.approx(distance, rel=1e-6)
    continuous = 1 - (distance - D_MIN) / (1 - D_MIN)
    assert float(result.reward_continuous) == pytest.approx(continuous, rel=1e-5)
    assert float(result.reward) == pytest.approx(round(5 * continuous) / 5)  # 0.2
    mas = 100 * (1 - ((0.7 * d_mag + 0.3 * 0.5) - D_MIN) / (1 - D_MIN))
    assert float(result.mas.score) == pytest.approx(mas, rel=1e-5)  # ≈ 15.06


def test_hand_computed_perpendicular_case_paper_variant():
    result = motion_reward_from_flows(uniform_flow(0.0, 5.0), uniform_flow(5.0, 0.0), PAPER)
    d_mag = (2.0 + 1e-6) ** 0.4  # ‖Δ‖₁ = 2
    assert float(result.terms.magnitude) == pytest.approx(d_mag, rel=1e-6)
    assert float(result.terms.direction) == pytest.approx(0.5, abs=1e-5)
    assert float(result.reward_continuous) == 0.0  # D = 0.7·1.32 + 0.1 > 1
    assert float(result.reward) == 0.0


def test_hand_computed_direction_weights_differ_between_variants():
    # Two moving pixels: A moves 1.0 (normalised) and the edit goes the opposite way
    # (error 1); B moves 0.5 and the edit matches it (error 0). The rest is static.
    target = torch.zeros(1, 2, 3, 4)
    edit = torch.zeros(1, 2, 3, 4)
    target[0, 0, 0, 0], edit[0, 0, 0, 0] = 5.0, -5.0
    target[0, 1, 2, 3], edit[0, 1, 2, 3] = 2.5, 2.5
    code = motion_terms(edit, target)
    paper = motion_terms(edit, target, PAPER)
    assert float(code.direction) == pytest.approx((1 + 0) / 2)
    assert float(paper.direction) == pytest.approx((1.0 * 1 + 0.5 * 0) / 1.5, rel=1e-5)
    assert code.direction_weight.sum() == 2  # the static pixels are outside the mask


def test_hand_computed_magnitude_map_code_variant():
    target = torch.zeros(1, 2, 3, 4)
    edit = torch.zeros(1, 2, 3, 4)
    edit[0, 0, 1, 2] = 1.0  # Δx = 0.2 normalised at one pixel
    terms = motion_terms(edit, target)
    eps_q = 1e-6**0.4
    expected_pixel = ((0.2 + 1e-6) ** 0.4 + eps_q) / 2
    assert float(terms.magnitude_map[0, 1, 2]) == pytest.approx(expected_pixel, rel=1e-5)
    assert float(terms.magnitude) == pytest.approx((expected_pixel + 11 * eps_q) / 12, rel=1e-5)


def test_hand_computed_movement_term():
    # 4x3 image (diagonal 5). The ground truth moves 1.0 (normalised) on one column, a
    # third of the pixels; the edit moves 0.05 everywhere: M_move = 0.01 + 0.5/3 − 0.05.
    target = torch.zeros(1, 2, 4, 3)
    target[0, 0, :, 0] = 5.0
    edit = uniform_flow(0.25, 0.0, height=4, width=3)
    terms = motion_terms(edit, target)
    mean_target = 4 / 12 * 1.0
    assert float(terms.motion_target) == pytest.approx(mean_target)
    assert float(terms.movement) == pytest.approx(0.01 + 0.5 * mean_target - 0.05)


@pytest.mark.parametrize("config", [MotionRewardConfig(), PAPER], ids=["code", "paper"])
def test_ground_truth_without_motion_gives_defined_values(config):
    static = torch.zeros(1, 2, 8, 8)
    moving = uniform_flow(1.0, 1.0, 8, 8)
    for edit in (static, moving):
        result = motion_reward_from_flows(edit, static, config)
        values = [result.terms.magnitude, result.terms.direction, result.terms.movement, result.distance,
                  result.reward, result.mas.score]
        assert all(torch.isfinite(v).all() for v in values)
        assert float(result.terms.direction) == 0.0  # empty direction mask
        assert bool(result.mas.hard_failure) is False
    assert float(motion_reward_from_flows(static, static, config).reward) == 1.0


def test_quantised_reward_rounds_half_to_even_like_the_reference():
    # Only the direction term counts and D_min is ~0, so perpendicular motion (D_dir = 0.5
    # exactly, in float64) gives r_cont = 0.5 and 5·0.5 = 2.5, which rounds to 2.
    config = MotionRewardConfig(eps=1e-300, weight_magnitude=0.0, weight_direction=1.0, weight_movement=0.0)
    result = motion_reward_from_flows(uniform_flow(0.0, 5.0).double(), uniform_flow(5.0, 0.0).double(), config)
    assert float(result.reward_continuous) == 0.5
    assert float(result.reward) == 0.4


def test_quantised_reward_takes_six_levels():
    torch.manual_seed(2)
    result = motion_reward_from_flows(torch.randn(64, 2, 6, 8) * 20, torch.randn(64, 2, 6, 8) * 20)
    steps = result.reward * 5
    assert torch.allclose(steps, steps.round()) and steps.min() >= 0 and steps.max() <= 5
    assert torch.allclose(result.reward, torch.round(5 * result.reward_continuous) / 5)


def test_batch_is_scored_sample_by_sample():
    torch.manual_seed(1)
    edits = torch.randn(3, 2, 16, 20) * 3
    targets = torch.randn(3, 2, 16, 20) * 3
    batched = motion_reward_from_flows(edits, targets).records()
    for index in range(3):
        single = motion_reward_from_flows(edits[index : index + 1], targets[index : index + 1]).records()[0]
        assert single == pytest.approx(batched[index], rel=1e-5)


def test_one_target_flow_broadcasts_over_a_batch_of_edits():
    target = uniform_flow(2.0, 0.0)
    edits = torch.cat([target, -target])
    result = motion_reward_from_flows(edits, target)
    assert result.reward.shape == (2,)
    assert float(result.reward[0]) == 1.0 and float(result.reward[1]) < 1.0


def test_reward_is_differentiable_in_the_edit_flow():
    target = uniform_flow(3.0, 1.0)
    edit = (target + 0.5 * torch.randn_like(target)).requires_grad_(True)
    motion_reward_from_flows(edit, target).reward_continuous.sum().backward()
    assert edit.grad is not None and torch.isfinite(edit.grad).all() and edit.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"variant": "other"}, "variant"), ({"q": 0}, "q must"), ({"levels": 0}, "levels")],
)
def test_bad_reward_constants_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MotionRewardConfig(**kwargs)


def test_bad_mas_constants_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        MASConfig(alpha=1.5)
    with pytest.raises(ValueError, match="d_max"):
        MASConfig(d_min=1.0, d_max=0.5)


@pytest.mark.parametrize(("eps", "q"), [(1e-6, 0.4), (1e-4, 0.4), (1e-6, 0.5)])
def test_mas_d_min_follows_the_reward_config_it_is_computed_with(eps, q):
    # identical flows: D_mag = eps^q = d_min and D_dir = 0, so MAS is 100 whatever eps and q are
    config = MotionRewardConfig(eps=eps, q=q)
    flow = uniform_flow(3.0, -2.0, 8, 8)
    result = motion_reward_from_flows(flow, flow, config)
    assert result.mas.config.d_min == pytest.approx(eps**q)
    assert float(result.mas.score) == pytest.approx(100.0)
    assert float(motion_alignment_score(flow, flow, terms_config=config).score) == pytest.approx(100.0)
    assert f"d_min={eps**q:.6g}" in result.mas.config.describe()


def test_an_explicit_mas_d_min_is_kept_and_the_default_prints_as_eps_to_the_q():
    flow = uniform_flow(3.0, -2.0, 8, 8)
    result = motion_reward_from_flows(flow, flow, MotionRewardConfig(eps=1e-4), MASConfig(d_min=0.01))
    assert result.mas.config.d_min == 0.01 and not result.mas.config.d_min_from_reward
    assert MASConfig().d_min == pytest.approx(D_MIN) and MASConfig().d_min_from_reward
    assert MASConfig().for_reward(MotionRewardConfig(q=0.5)).d_min == pytest.approx(1e-6**0.5)


def test_flows_of_different_sizes_are_refused_with_names():
    with pytest.raises(ValueError, match="flow_edit is .* but flow_target"):
        motion_terms(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="flow_target: expected a flow"):
        motion_terms(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


class ConstantFlow:
    """A fake estimator: flow = (image2 − image1) mean brightness × 10 px to the right."""

    def __init__(self):
        self.calls = []

    def __call__(self, image1, image2, progress=None):
        self.calls.append((image1.shape, image2.shape))
        shift = (image2 - image1).mean(dim=(1, 2, 3)) * 10
        flow = torch.zeros(image1.shape[0], 2, *image1.shape[-2:])
        flow[:, 0] = shift.view(-1, 1, 1)
        return flow


def test_motion_reward_resizes_input_and_target_to_the_edited_size():
    estimator = ConstantFlow()
    source = torch.zeros(1, 3, 20, 30)
    edited = torch.full((2, 3, 10, 15), 0.5)
    target = torch.full((1, 3, 40, 60), 0.5)
    result = motion_reward(source, edited, target, estimator=estimator)
    assert estimator.calls == [((4, 3, 10, 15), (4, 3, 10, 15))]  # one batched call, both flows
    assert result.flow_edit.shape == (2, 2, 10, 15)
    assert result.reward.tolist() == [1.0, 1.0]


def test_motion_reward_reuses_a_precomputed_target_flow():
    estimator = ConstantFlow()
    source = torch.zeros(1, 3, 8, 8)
    edited = torch.full((1, 3, 8, 8), 0.2)
    target_flow = uniform_flow(2.0, 0.0, 8, 8)
    result = motion_reward(source, edited, source, estimator=estimator, flow_target=target_flow)
    assert len(estimator.calls) == 1
    assert torch.equal(result.flow_target, target_flow)


def test_motion_reward_names_the_input_with_a_wrong_batch():
    with pytest.raises(ValueError, match="target_image has a batch of 3 but edited_image has 2"):
        motion_reward(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.zeros(3, 3, 8, 8), ConstantFlow())
    with pytest.raises(ValueError, match=r"input_image: expected shape \(B, 3, H, W\)"):
        motion_reward(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), ConstantFlow())


def test_motion_reward_is_refused_without_a_flow_estimator():
    """The caller chooses (and builds) the flow: no default estimator, no backend names."""
    images = (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="estimator"):
        motion_reward(*images)
    for estimator in (None, "dis"):
        with pytest.raises(TypeError, match=r"estimator: expected a flow estimator, callable as estimator\(source"):
            motion_reward(*images, estimator=estimator)


def test_dis_reward_ranks_the_demo_edits():
    from motionnft.flow import create_estimator
    from motionnft.synthetic import demo_sample

    sample = demo_sample(size=128)
    estimator = create_estimator("dis", "medium")
    scores = {name: motion_reward(sample.input, edit, sample.target, estimator=estimator)
              for name, edit in sample.edits.items()}
    continuous = {name: float(r.reward_continuous) for name, r in scores.items()}
    assert continuous["faithful"] > continuous["half_way"] > max(continuous["opposite"], continuous["unchanged"])
    assert float(scores["unchanged"].mas.score) == 0.0
    assert math.isclose(float(scores["faithful"].reward), 1.0)
