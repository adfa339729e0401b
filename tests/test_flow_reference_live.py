"""This project's RAFT and GMFlow against the reference implementations, run side by side.

Needs what CI does not have, and skips (with the reason) without it:

- torchvision (RAFT large/small): run with a Python that has it, e.g. a ComfyUI venv:
  ``<ComfyUI>/venv/bin/python -m pytest tests/test_flow_reference_live.py``;
- clones of the reference code, outside this repository, named by environment variables:
  ``MOTIONNFT_RAFT_REPO`` (princeton-vl/RAFT), ``MOTIONNFT_UNIMATCH_REPO``
  (autonomousvision/unimatch), ``MOTIONNFT_MOTIONEDIT_REPO`` (elainew728/motion-edit).

Each test builds the reference network with random weights, saves its state dict as the
reference would, loads that file here (strictly: zero missing or unexpected keys) and
compares outputs and image gradients. ``tests/test_flow_learned.py`` checks the same
properties in CI against stored goldens.
"""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from learned_flow_fixtures import image_pair, layout_of, reference_code, seeded_state_dict
from motionnft.flow import RAFTFlow, UniMatchFlow
from motionnft.flow.unimatch import GMFlowSettings
from motionnft.reward import MotionRewardConfig, motion_reward

torchvision_flow = pytest.importorskip(
    "torchvision.models.optical_flow",
    reason="torchvision is not importable here: run these tests with a ComfyUI venv's Python",
)


def clone(variable: str, marker: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"set {variable} to a clone of the reference code to compare against it")
    path = Path(value).expanduser().resolve()
    if not (path / marker).exists():
        pytest.fail(f"{variable}={value} has no {marker}: not the expected clone")
    return path


def assert_close(ours: torch.Tensor, reference: torch.Tensor, what: str, relative: float = 1e-4) -> None:
    """Equal up to float rounding: max |difference| <= 1e-3 + relative x the reference's max."""
    difference = float((ours - reference).abs().max())
    scale = float(reference.abs().max())
    assert difference <= 1e-3 + relative * scale, f"{what}: max |difference| {difference:.3g} (reference max {scale:.3g})"


# Gradients pass through softmaxes and bilinear lookups whose rounding the backward pass
# amplifies more than the forward pass: they are compared to 0.2 % of their largest value.
GRADIENT_TOLERANCE = 2e-3


def gradients(estimate, image1, image2):
    image1, image2 = image1.clone().requires_grad_(True), image2.clone().requires_grad_(True)
    flow = estimate(image1, image2)
    (flow * torch.linspace(-1, 1, flow.numel()).view_as(flow)).sum().backward()
    return flow.detach(), image1.grad, image2.grad


@pytest.mark.parametrize("variant", ["large", "small"])
def test_raft_equals_torchvision_at_every_iteration_and_in_its_gradients(variant, tmp_path):
    build = {"large": torchvision_flow.raft_large, "small": torchvision_flow.raft_small}[variant]
    reference = build(weights=None).eval()
    reference.load_state_dict(seeded_state_dict(layout_of(reference.state_dict()), seed=101))
    path = tmp_path / f"raft_{variant}.pth"
    torch.save(reference.state_dict(), path)  # what torchvision's published files hold
    ours = RAFTFlow(path, variant=variant, iterations=5)  # loads strictly
    image1, image2 = image_pair(2, 128, 168, seed=102)
    with torch.no_grad():
        expected = reference(image1 * 2 - 1, image2 * 2 - 1, num_flow_updates=5)
        mine = ours.model(image1 * 2 - 1, image2 * 2 - 1, 5, all_predictions=True)
    assert len(mine) == len(expected) == 5
    for step, (a, b) in enumerate(zip(mine, expected)):
        assert_close(a, b, f"iteration {step + 1}")
    flow, grad1, grad2 = gradients(ours, image1[:1], image2[:1])
    ref_flow, ref_grad1, ref_grad2 = gradients(
        lambda a, b: reference(a * 2 - 1, b * 2 - 1, num_flow_updates=5)[-1], image1[:1], image2[:1]
    )
    assert_close(flow, ref_flow, "flow")
    assert_close(grad1, ref_grad1, "gradient of image1", GRADIENT_TOLERANCE)
    assert_close(grad2, ref_grad2, "gradient of image2", GRADIENT_TOLERANCE)
    assert float(grad1.abs().sum()) > 0 and float(grad2.abs().sum()) > 0


@pytest.mark.parametrize("small", [False, True])
def test_original_raft_checkpoints_give_the_original_codes_flow(small, tmp_path):
    repo = clone("MOTIONNFT_RAFT_REPO", "core/raft.py")
    with reference_code(repo / "core", fresh=("raft", "update", "extractor", "corr", "utils")):
        from raft import RAFT

        reference = torch.nn.DataParallel(RAFT(Namespace(small=small, mixed_precision=False,
                                                         alternate_corr=False, dropout=0))).eval()
    reference.load_state_dict(seeded_state_dict(layout_of(reference.state_dict()), seed=103))
    path = tmp_path / ("raft-small.pth" if small else "raft-things.pth")
    torch.save(reference.state_dict(), path)  # "module."-prefixed, as the release's files
    ours = RAFTFlow(path, iterations=6)
    assert ours.variant == ("small" if small else "large")
    image1, image2 = image_pair(1, 136, 160, seed=104)
    with torch.no_grad():
        expected = reference.module(image1 * 255, image2 * 255, iters=6, test_mode=True)[1]
        assert_close(ours(image1, image2), expected, "flow")


GMFLOW_CASES = [
    # model kwargs, inference settings, size (not multiples of the padding factor)
    (dict(num_scales=1, upsample_factor=8, reg_refine=False), GMFlowSettings(16, (2,), (-1,), (-1,)), (70, 100)),
    (dict(num_scales=2, upsample_factor=4, reg_refine=False), GMFlowSettings(32, (2, 8), (-1, 4), (-1, 1)), (70, 100)),
    (dict(num_scales=2, upsample_factor=4, reg_refine=True), GMFlowSettings(32, (2, 8), (-1, 4), (-1, 1), 6), (70, 100)),
    (dict(num_scales=1, upsample_factor=8, reg_refine=True), GMFlowSettings(16, (2,), (-1,), (-1,), 3), (70, 100)),
]


@pytest.mark.parametrize("kwargs, settings, size", GMFLOW_CASES, ids=["scale1", "scale2", "scale2-regrefine6", "scale1-regrefine3"])
def test_gmflow_equals_official_unimatch(kwargs, settings, size, tmp_path):
    repo = clone("MOTIONNFT_UNIMATCH_REPO", "unimatch/unimatch.py")
    with reference_code(repo, fresh=("unimatch", "utils")):
        from unimatch.unimatch import UniMatch

        reference = UniMatch(feature_channels=128, num_head=1, ffn_dim_expansion=4, num_transformer_layers=6,
                             task="flow", **kwargs).eval()
    # Gain 0.5: a network calm enough for float rounding not to move its output (see seeded_state_dict).
    reference.load_state_dict(seeded_state_dict(layout_of(reference.state_dict()), seed=105, gain=0.5))
    path = tmp_path / "gmflow.pth"
    torch.save({"model": reference.state_dict()}, path)  # the official checkpoints' format
    ours = UniMatchFlow(path, settings=settings)

    def official(image1, image2):
        height, width = image1.shape[-2:]
        pads = (0, (-width) % settings.padding_factor, 0, (-height) % settings.padding_factor)
        result = reference(F.pad(image1 * 255, pads), F.pad(image2 * 255, pads), attn_type="swin",
                           attn_splits_list=list(settings.attn_splits), corr_radius_list=list(settings.corr_radius),
                           prop_radius_list=list(settings.prop_radius), num_reg_refine=settings.num_reg_refine,
                           pred_bidir_flow=False, task="flow")
        return result["flow_preds"][-1][:, :, :height, :width]

    image1, image2 = image_pair(2, *size, seed=106)
    with torch.no_grad():
        assert_close(ours(image1, image2), official(image1, image2), "flow")
    flow, grad1, grad2 = gradients(ours, image1[:1], image2[:1])
    ref_flow, ref_grad1, ref_grad2 = gradients(official, image1[:1], image2[:1])
    assert_close(flow, ref_flow, "flow")
    assert_close(grad1, ref_grad1, "gradient of image1", GRADIENT_TOLERANCE)
    assert_close(grad2, ref_grad2, "gradient of image2", GRADIENT_TOLERANCE)


def test_motionedit_reward_equals_ours_with_the_unimatch_backend(tmp_path):
    repo = clone("MOTIONNFT_MOTIONEDIT_REPO", "train/flow_grpo/motionedit_scorer.py")
    with reference_code(repo / "train" / "scripts", repo / "train", fresh=("unimatch", "flow_grpo")):
        from flow_grpo.motionedit_scorer import MotionEditScorer

        scorer = MotionEditScorer(torch.device("cpu"), cfg={"ckpt_path": None})
    # Gain 0.5: a calm network, so the edit's flow is not noise (see seeded_state_dict).
    weights = seeded_state_dict(layout_of(scorer.model.state_dict()), seed=107, gain=0.5)
    scorer.model.load_state_dict(weights)
    path = tmp_path / "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth"
    torch.save({"model": weights}, path)
    ours = UniMatchFlow(path)
    source, target = image_pair(1, 72, 104, seed=108)
    edits = [target, source.flip(-1), (source + target) / 2]
    quantize = lambda t: (t * 255).round() / 255  # noqa: E731 - MotionEdit reads 8-bit images
    source, target = quantize(source), quantize(target)
    rewards = []
    for edit in map(quantize, edits):
        with torch.no_grad():
            flow_edit = scorer._flow(source * 255, edit * 255)
            flow_target = scorer._flow(source * 255, target * 255)
            expected_d_mag = float(scorer._flow_diff(flow_edit[0].permute(1, 2, 0), flow_target[0].permute(1, 2, 0)))
            expected_reward = scorer(edit[0], source[0], target[0])
            result = motion_reward(source, edit, target, estimator=ours, config=MotionRewardConfig(variant="code"))
        assert_close(result.flow_edit, flow_edit, "flow of the edit")
        assert abs(float(result.terms.magnitude[0]) - expected_d_mag) < 1e-5
        assert float(result.reward[0]) == pytest.approx(expected_reward)
        rewards.append(expected_reward)
    assert len(set(rewards)) > 1  # the edits were told apart, so agreeing was not trivial
