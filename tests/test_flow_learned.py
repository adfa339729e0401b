"""The learned flow backends (RAFT large/small, UniMatch GMFlow) without the references.

Their outputs are checked against goldens that the reference implementations produced on
the same deterministic random weights and inputs (``tests/reference/make_flow_goldens.py``;
``tests/test_flow_reference_live.py`` compares against the references directly where they
can be imported).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learned_flow_fixtures import image_pair, load_golden, load_layout, seeded_state_dict
from motionnft.flow import (
    RAFT,
    GMFlow,
    RAFTFlow,
    UniMatchFlow,
    available_backends,
    convert_original_raft_state_dict,
    create_estimator,
)
from motionnft.flow.raft import RAFT_CONFIGS, RAFT_LARGE_FILES, RAFT_SMALL_FILES
from motionnft.flow.unimatch import UNIMATCH_FILES, GMFlowConfig, GMFlowSettings, gmflow_config_of

RAFT_GOLDENS = ["raft_large_torchvision", "raft_small_torchvision", "raft_large_original", "raft_small_original"]
GMFLOW_GOLDENS = ["gmflow_scale1", "gmflow_scale2", "gmflow_scale2_regrefine6", "gmflow_scale1_regrefine2"]
MOTIONEDIT_CHECKPOINT = "gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth"


def layout(state_dict) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state_dict.items()}


def golden_weights(name: str) -> dict[str, torch.Tensor]:
    golden = load_golden(name)
    return seeded_state_dict(load_layout(name), int(golden["weights_seed"]), float(golden.get("weights_gain", 1.0)))


def golden_inputs(name: str, batch: int = 2):
    golden = load_golden(name)
    return image_pair(batch, *(int(v) for v in golden["size"]), seed=int(golden["image_seed"]))


def relative_epe(flow: torch.Tensor, reference: torch.Tensor) -> float:
    return float((flow - reference).norm(dim=1).mean() / reference.norm(dim=1).mean())


@pytest.fixture(scope="module")
def raft_small_weights():
    return golden_weights("raft_small_torchvision")


@pytest.fixture(scope="module")
def gmflow_weights():
    return golden_weights("gmflow_scale2_regrefine6")


# -- registry ------------------------------------------------------------------------------


def test_registry_lists_the_learned_backends_with_their_files():
    backends = available_backends()
    for name, files in (("raft_large", RAFT_LARGE_FILES), ("raft_small", RAFT_SMALL_FILES), ("unimatch", UNIMATCH_FILES)):
        info = backends[name]
        assert info.needs_weights and info.weight_files == files
        assert info.precisions == ("fp32", "bf16", "fp16")
    assert backends["raft_large"].presets == ("fast", "medium", "accurate")
    assert backends["raft_large"].default_preset == "medium"
    assert backends["unimatch"].weight_files[0] == MOTIONEDIT_CHECKPOINT
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in RAFT_LARGE_FILES and "raft-things.pth" in RAFT_LARGE_FILES
    assert "raft_small_C_T_V2-01064c6d.pth" in RAFT_SMALL_FILES and "raft-small.pth" in RAFT_SMALL_FILES


# -- key layouts: zero missing, zero unexpected --------------------------------------------


@pytest.mark.parametrize("variant", ["large", "small"])
def test_raft_has_exactly_torchvisions_keys_and_shapes(variant):
    assert layout(RAFT(RAFT_CONFIGS[variant]).state_dict()) == {
        k: tuple(v) for k, v in load_layout(f"raft_{variant}_torchvision").items()
    }


@pytest.mark.parametrize("variant", ["large", "small"])
@pytest.mark.parametrize("prefix", ["module.", ""])
def test_original_raft_checkpoints_map_onto_every_key(variant, prefix):
    original = {k[len("module."):]: v for k, v in load_layout(f"raft_{variant}_original").items()}
    state_dict = {prefix + k: torch.zeros(v) for k, v in original.items()}
    converted = convert_original_raft_state_dict(state_dict)
    assert layout(converted) == layout(RAFT(RAFT_CONFIGS[variant]).state_dict())


@pytest.mark.parametrize("name", GMFLOW_GOLDENS)
def test_gmflow_has_exactly_the_official_keys_and_reads_its_architecture(name):
    official = {k: tuple(v) for k, v in load_layout(name).items()}
    config = gmflow_config_of({k: torch.zeros(v) for k, v in official.items()})
    expected = {
        "gmflow_scale1": GMFlowConfig(num_scales=1, upsample_factor=8, reg_refine=False),
        "gmflow_scale2": GMFlowConfig(num_scales=2, upsample_factor=4, reg_refine=False),
        "gmflow_scale2_regrefine6": GMFlowConfig(num_scales=2, upsample_factor=4, reg_refine=True),
        "gmflow_scale1_regrefine2": GMFlowConfig(num_scales=1, upsample_factor=8, reg_refine=True),
    }[name]
    assert config == expected
    assert layout(GMFlow(config).state_dict()) == official


# -- outputs equal the references' ---------------------------------------------------------


def assert_matches_golden(flow: torch.Tensor, name: str) -> None:
    golden = load_golden(name)
    step = int(golden["sample_step"])
    np.testing.assert_allclose(flow[:, :, ::step, ::step].numpy(), golden["flow_sampled"], rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(flow.mean(dim=(2, 3)).numpy(), golden["flow_mean"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(flow.abs().mean(dim=(2, 3)).numpy(), golden["flow_abs_mean"], rtol=1e-4, atol=1e-4)
    assert float(flow.abs().mean()) > 0.5  # the comparison is not between two zero fields


@pytest.mark.parametrize("name", RAFT_GOLDENS)
def test_raft_equals_the_reference_on_the_same_random_weights(name):
    estimator = RAFTFlow(golden_weights(name), iterations=int(load_golden(name)["iterations"]))
    with torch.no_grad():
        flow = estimator(*golden_inputs(name))
    assert_matches_golden(flow, name)


@pytest.mark.parametrize("name", GMFLOW_GOLDENS)
def test_gmflow_equals_the_official_code_with_motionedit_padding(name):
    # 56x90 inputs: zero-padded at the bottom/right to the padding factor and cropped back.
    golden = load_golden(name)
    estimator = UniMatchFlow(golden_weights(name), num_reg_refine=int(golden["num_reg_refine"]))
    assert estimator.settings.padding_factor == int(golden["padding_factor"])
    with torch.no_grad():
        flow = estimator(*golden_inputs(name))
    assert flow.shape == (2, 2, 56, 90)
    assert_matches_golden(flow, name)


def test_motionedits_checkpoint_gets_motionedits_inference_settings(tmp_path, gmflow_weights):
    path = tmp_path / MOTIONEDIT_CHECKPOINT
    torch.save({"model": gmflow_weights, "step": 1}, path)  # the official files wrap the weights
    estimator = UniMatchFlow(path)
    assert estimator.settings == GMFlowSettings(
        padding_factor=32, attn_splits=(2, 8), corr_radius=(-1, 4), prop_radius=(-1, 1), num_reg_refine=6
    )
    assert estimator.config == GMFlowConfig(num_scales=2, upsample_factor=4, reg_refine=True)
    scale1 = tmp_path / "gmflow-scale1-things-e9887eda.pth"
    torch.save({"model": golden_weights("gmflow_scale1")}, scale1)
    assert UniMatchFlow(scale1).settings == GMFlowSettings(16, (2,), (-1,), (-1,), 0)


# -- gradients, batches, sizes, precisions -------------------------------------------------


@pytest.mark.parametrize("backend", ["raft_small", "unimatch"])
def test_gradients_reach_both_images(backend, raft_small_weights, gmflow_weights):
    if backend == "raft_small":
        estimator, size = RAFTFlow(raft_small_weights, iterations=2), (64, 72)
    else:
        estimator, size = UniMatchFlow(gmflow_weights, num_reg_refine=2), (40, 48)
    image1, image2 = (t.clone().requires_grad_(True) for t in image_pair(1, *size, seed=5))
    flow = estimator(image1, image2)
    assert flow.requires_grad
    flow.square().mean().backward()
    for image in (image1, image2):
        assert image.grad is not None and torch.isfinite(image.grad).all()
        assert float(image.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in estimator.model.parameters())


def test_without_inputs_that_need_gradients_no_graph_is_kept(raft_small_weights):
    image1, image2 = image_pair(1, 32, 32, seed=1)
    assert not RAFTFlow(raft_small_weights, iterations=1)(image1, image2).requires_grad
    with torch.inference_mode():  # how ComfyUI runs nodes
        assert RAFTFlow(raft_small_weights, iterations=1)(image1, image2).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("backend", ["raft_small", "unimatch"])
def test_pairs_are_independent_of_their_batch_and_chunking(backend, raft_small_weights, gmflow_weights):
    make = (lambda **kw: RAFTFlow(raft_small_weights, iterations=2, **kw)) if backend == "raft_small" else (
        lambda **kw: UniMatchFlow(gmflow_weights, num_reg_refine=1, **kw))
    image1, image2 = image_pair(3, 32, 40, seed=9)
    seen = []
    together = make(max_batch=8)(image1, image2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    one_by_one = make(max_batch=1)(image1, image2)
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-3)
    alone = make()(image1[1:2], image2[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-3)
    broadcast = make()(image1[:1], image2)  # one first image for every second image
    torch.testing.assert_close(broadcast[0], together[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["raft_small", "unimatch"])
def test_any_image_size_works_including_tiny_and_elongated(backend, raft_small_weights, gmflow_weights):
    estimator = RAFTFlow(raft_small_weights, iterations=1) if backend == "raft_small" else UniMatchFlow(
        gmflow_weights, num_reg_refine=1)
    for height, width in ((1, 1), (5, 7), (9, 200), (33, 47), (129, 31)):
        image = torch.rand(1, 3, height, width)
        flow = estimator(image, image.flip(-1))
        assert flow.shape == (1, 2, height, width) and flow.dtype == torch.float32
        assert torch.isfinite(flow).all()


def test_raft_pads_by_replicating_the_edges_around_the_image(raft_small_weights):
    # A 120x130 image padded to 128x136 (centred) must give the flow of the padded image, cropped.
    estimator = RAFTFlow(raft_small_weights, iterations=2)
    image1, image2 = image_pair(1, 120, 130, seed=3)
    flow = estimator(image1, image2)
    pad = (3, 3, 4, 4)
    padded = [torch.nn.functional.pad(t, pad, mode="replicate") for t in (image1, image2)]
    expected = estimator(*padded)[:, :, 4:124, 3:133]
    torch.testing.assert_close(flow, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "backend, precision, bound",
    [("raft_small", "bf16", 0.02), ("raft_small", "fp16", 0.005), ("unimatch", "bf16", 0.12), ("unimatch", "fp16", 0.02)],
)
def test_lower_precisions_stay_close_to_float32(backend, precision, bound):
    # Weights at gain 0.5 (see seeded_state_dict): a network whose output is not chaotic in
    # its input, so that the precision's rounding is what the comparison measures.
    if backend == "raft_small":
        weights = seeded_state_dict(load_layout("raft_small_torchvision"), seed=12, gain=0.5)
        make = lambda p: RAFTFlow(weights, iterations=3, precision=p)  # noqa: E731
        image1, image2 = image_pair(1, 128, 128, seed=21)
    else:
        weights = seeded_state_dict(load_layout("gmflow_scale1"), seed=31, gain=0.5)
        make = lambda p: UniMatchFlow(weights, precision=p)  # noqa: E731
        image1, image2 = image_pair(1, 32, 48, seed=21)
    reference = make("fp32")(image1, image2)
    flow = make(precision)(image1, image2)
    assert flow.dtype == torch.float32 and torch.isfinite(flow).all()
    assert relative_epe(flow, reference) < bound


def test_an_explicit_device_returns_the_flow_on_the_first_images_device(raft_small_weights):
    estimator = RAFTFlow(raft_small_weights, iterations=1, device="cpu")
    image1, image2 = image_pair(1, 24, 24, seed=2)
    assert estimator(image1, image2).device == image1.device


# -- weights from files --------------------------------------------------------------------


def test_a_mismatched_or_foreign_checkpoint_is_refused_with_a_reason(tmp_path, raft_small_weights, gmflow_weights):
    small = tmp_path / "raft_small_C_T_V2-01064c6d.pth"
    torch.save(raft_small_weights, small)
    with pytest.raises(ValueError, match="holds RAFT small, not RAFT large: use the raft_small backend"):
        RAFTFlow(small, variant="large")
    with pytest.raises(ValueError, match="is not a RAFT checkpoint"):
        RAFTFlow(gmflow_weights)
    with pytest.raises(ValueError, match="not a UniMatch/GMFlow checkpoint"):
        UniMatchFlow(raft_small_weights)
    broken = dict(gmflow_weights)
    broken.pop("refine.flow_head.conv2.bias")
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys: refine.flow_head.conv2.bias; unexpected keys: extra.weight"):
        UniMatchFlow(broken)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        RAFTFlow(not_a_checkpoint)


def test_original_checkpoint_files_load_by_key_mapping(tmp_path):
    weights = golden_weights("raft_small_original")  # "module."-prefixed, as the release's files
    path = tmp_path / "raft-small.pth"
    torch.save(weights, path)
    estimator = RAFTFlow(path, iterations=int(load_golden("raft_small_original")["iterations"]))
    assert estimator.variant == "small" and "raft-small.pth" in repr(estimator)
    with torch.no_grad():
        assert_matches_golden(estimator(*golden_inputs("raft_small_original")), "raft_small_original")


def test_create_estimator_builds_learned_backends_from_a_path_and_caches_them(tmp_path, raft_small_weights):
    path = tmp_path / "mine.pth"
    torch.save(raft_small_weights, path)
    estimator = create_estimator("raft_small", "fast", weights=path)
    assert isinstance(estimator, RAFTFlow) and estimator.iterations == 6
    assert create_estimator("raft_small", "fast", weights=str(path)) is estimator
    assert create_estimator("raft_small", "fast", weights=path, precision="bf16") is not estimator
    assert create_estimator("raft_small", weights=path).iterations == 12
    with pytest.raises(ValueError, match="has no precision 'fp8': expected one of fp32, bf16, fp16"):
        create_estimator("raft_small", weights=path, precision="fp8")
    with pytest.raises(ValueError, match="holds RAFT small, not RAFT large"):
        create_estimator("raft_large", weights=path)
