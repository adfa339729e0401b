"""The flow-estimator interface and the OpenCV backends."""

from __future__ import annotations

import pytest
import torch

from motionnft.flow import (
    DISFlow,
    FarnebackFlow,
    available_backends,
    create_estimator,
    estimate_flow,
    warp_backward,
)
from motionnft.synthetic import FigurePose, background, render_scene, scene_flow


def translated_pair(dx: float, dy: float, size: int = 96):
    """A smooth texture and the same texture moved by (dx, dy) pixels: flow = (dx, dy)."""
    big = background(size + 32, size + 32, seed=5).unsqueeze(0)
    frame_b = big[:, :, 16 : 16 + size, 16 : 16 + size]
    # A flow d from A to B means A(x) = B(x + d): A is B warped backward by d.
    flow = torch.zeros(1, 2, size, size)
    flow[:, 0], flow[:, 1] = dx, dy
    frame_a = warp_backward(big, torch.nn.functional.pad(flow, (16, 16, 16, 16), mode="replicate"))
    return frame_a[:, :, 16 : 16 + size, 16 : 16 + size], frame_b, flow


def epe(flow: torch.Tensor, truth: torch.Tensor, margin: int = 8) -> float:
    error = (flow - truth).norm(dim=1)[:, margin:-margin, margin:-margin]
    return float(error.mean())


def test_registry_lists_the_weight_free_backends():
    backends = available_backends()
    assert backends["dis"].presets == ("ultrafast", "fast", "medium")
    assert backends["dis"].default_preset == "medium"
    assert "farneback" in backends
    assert not backends["dis"].needs_weights


def test_estimators_are_built_once_and_reused():
    assert create_estimator("dis", "fast") is create_estimator("dis", "fast")
    assert create_estimator("dis") is create_estimator("dis", "medium")


def test_unknown_backend_and_preset_errors_list_the_choices():
    with pytest.raises(ValueError, match="unknown flow backend 'nope': expected one of dis, farneback"):
        create_estimator("nope")
    with pytest.raises(ValueError, match="no preset 'slow': expected one of ultrafast, fast, medium"):
        create_estimator("dis", "slow")


@pytest.mark.parametrize("preset, tolerance", [("ultrafast", 0.5), ("fast", 0.3), ("medium", 0.15)])
def test_dis_recovers_a_subpixel_translation(preset, tolerance):
    frame_a, frame_b, truth = translated_pair(2.6, -1.3)
    flow = DISFlow(preset)(frame_a, frame_b)
    assert flow.shape == (1, 2, 96, 96) and flow.dtype == torch.float32
    assert epe(flow, truth) < tolerance


def test_farneback_recovers_a_subpixel_translation():
    frame_a, frame_b, truth = translated_pair(1.5, 0.75)
    assert epe(FarnebackFlow()(frame_a, frame_b), truth) < 0.3


def test_dis_follows_the_synthetic_figure():
    start = FigurePose()
    goal = start.moved(dx=0.03)  # the body steps 3.8 px right at 128²
    a = render_scene(start, (128, 128)).unsqueeze(0)
    b = render_scene(goal, (128, 128)).unsqueeze(0)
    truth = scene_flow(start, goal, (128, 128)).unsqueeze(0)
    flow = estimate_flow(a, b)
    torso = truth.norm(dim=1) > 0
    assert float((flow - truth).norm(dim=1)[torso].mean()) < 1.0
    assert float(flow.norm(dim=1)[~torso].mean()) < 0.5


def test_a_single_first_image_is_broadcast_over_a_batch():
    frame_a, frame_b, _ = translated_pair(1.0, 0.0, size=48)
    batch_b = torch.cat([frame_b, frame_a, frame_b])
    flow = estimate_flow(frame_a, batch_b, preset="fast")
    assert flow.shape == (3, 2, 48, 48)
    assert torch.equal(flow[0], flow[2])
    assert flow[1].abs().max() < 0.05  # A to itself


@pytest.mark.parametrize("backend, preset", [("dis", "ultrafast"), ("dis", "fast"), ("dis", "medium"), ("farneback", None)])
def test_any_size_works_including_tiny_and_elongated(backend, preset):
    # 16x300 crashed OpenCV's DIS at the fast presets before the size guard.
    for height, width in ((5, 7), (1, 1), (16, 300), (17, 300), (301, 13), (24, 90), (91, 31)):
        image = torch.rand(2, 3, height, width)
        flow = estimate_flow(image, image, backend=backend, preset=preset)
        assert flow.shape == (2, 2, height, width)
        assert torch.isfinite(flow).all()


def test_a_small_image_does_not_change_the_preset_for_later_calls():
    frame_a, frame_b, _ = translated_pair(2.6, -1.3)
    before = DISFlow("ultrafast")(frame_a, frame_b)
    estimator = DISFlow("ultrafast")
    estimator(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert torch.equal(estimator(frame_a, frame_b), before)


def test_progress_is_reported_per_pair_and_can_cancel():
    images = torch.rand(4, 3, 32, 32)
    seen = []
    estimate_flow(images, images, preset="ultrafast", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Cancelled(Exception):
        pass

    def cancel_after_two(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        estimate_flow(images, images, preset="ultrafast", progress=cancel_after_two)


@pytest.mark.parametrize(
    "image1, image2, message",
    [
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), "image1 is 8x8 but image2 is 9x8"),
        (torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8), "image1 has a batch of 2 and image2 a batch of 3"),
        (torch.rand(1, 4, 8, 8), torch.rand(1, 3, 8, 8), r"image1: expected shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8), "image1: expected a float tensor"),
        (None, torch.rand(1, 3, 8, 8), "image1: expected a torch.Tensor"),
    ],
)
def test_bad_inputs_are_refused_with_the_input_named(image1, image2, message):
    with pytest.raises((ValueError, TypeError), match=message):
        estimate_flow(image1, image2)


def test_a_three_dimensional_image_is_a_batch_of_one():
    image = torch.rand(3, 20, 24)
    assert estimate_flow(image, image).shape == (1, 2, 20, 24)
