"""TPSMM training (motionnft.animation.train, .losses): fast, one thread, synthetic frames."""

from __future__ import annotations

import math

import pytest
import torch

from motionnft.animation.losses import (VGG19_FILE, L1Pyramid, PerceptualPyramidLoss, RandomTPS, VGG19Features,
                                        equivariance_loss, load_vgg19)
from motionnft.animation.model import TPSMM
from motionnft.animation.config import TPSMMConfig
from motionnft.animation.train import AnimationTrainConfig, AnimationTrainer, VideoFrames, reconstruction_l1

torch.set_num_threads(1)
SIZE = 64


def blob_video(frames: int = 8, size: int = SIZE) -> torch.Tensor:
    """``(T, 3, S, S)`` uint8: a bright textured disc moving right over a gradient."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    video = []
    for t in range(frames):
        cx = -0.4 + 0.8 * t / max(frames - 1, 1)
        disc = torch.sigmoid((0.35 - ((x - cx) ** 2 + y**2).sqrt()) * 30)
        texture = 0.5 + 0.5 * torch.sin(8 * (x - cx)) * torch.cos(8 * y)
        image = torch.stack([0.2 + 0.3 * (x + 1) / 2, 0.3 + 0.2 * (y + 1) / 2, 0.4 * torch.ones_like(x)])
        image = image * (1 - disc) + disc * torch.stack([texture, 0.8 * torch.ones_like(x), 1 - texture])
        video.append((image * 255).round().to(torch.uint8))
    return torch.stack(video)


def config(**overrides) -> AnimationTrainConfig:
    settings = dict(perceptual="l1_pyramid", batch_size=2, steps=4, save_every=2, log_every=1, holdout=0.25)
    return AnimationTrainConfig(**{**settings, **overrides})


def data() -> VideoFrames:
    return VideoFrames([blob_video()], holdout=0.25)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    trainer = AnimationTrainer(config(steps=100, learning_rate=1e-3), data(), tmp_path, show_progress=False)
    fixed = trainer.batch(0)
    trainer.batch = lambda step: fixed

    def total() -> float:
        with torch.no_grad():
            terms = trainer.losses(*fixed, 50)  # step 50: background on, dropout fixed by the step
        return sum(float(v) for k, v in terms.items() if k != "l1")

    before = total()
    for _ in range(8):
        trainer.train_step()
    after = total()
    assert after < 0.9 * before, (before, after)


def test_equivariance_is_zero_for_the_identity_and_grows_with_deformation():
    torch.manual_seed(0)
    detector = TPSMM(TPSMMConfig.tiny()).kp_detector.eval()
    driving = blob_video(1).float()[:1] / 255
    with torch.no_grad():
        kp = detector(driving)
        identity = RandomTPS(1, 0.0, 0.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(identity.transform_frame(driving), driving) or \
            (identity.transform_frame(driving) - driving).abs().max() < 1e-5
        values = [float(equivariance_loss(detector, driving, kp, RandomTPS(
            1, sigma, sigma / 10, generator=torch.Generator().manual_seed(1)))) for sigma in (0.0, 0.02, 0.1, 0.3)]
    assert values[0] < 1e-5, values
    assert values[0] < values[1] < values[2] < values[3], values
    assert values[3] > 0.05, values


def test_random_tps_moves_points_the_frame_moves():
    """A frame sampled at T(p) shows at p what the original shows at T(p)."""
    transform = RandomTPS(1, 0.05, 0.005, generator=torch.Generator().manual_seed(3))
    frame = blob_video(1).float()[:1] / 255
    warped = transform.transform_frame(frame)
    point = torch.tensor([[[0.1, -0.2]]])
    moved = transform.warp_coordinates(point)
    sample = lambda image, p: torch.nn.functional.grid_sample(image, p[:, None], align_corners=True)[0, :, 0, 0]
    assert torch.allclose(sample(warped, point), sample(frame, moved), atol=2e-2)


def test_exact_resume(tmp_path):
    straight = AnimationTrainer(config(), data(), tmp_path / "a", show_progress=False)
    straight.run(None)
    first = AnimationTrainer(config(), data(), tmp_path / "b", show_progress=False)
    first.train_step()
    first.train_step()
    first.save_checkpoint()
    torch.manual_seed(123)  # the resumed process starts with other global RNG states
    torch.rand(7)
    resumed = AnimationTrainer(config(), data(), tmp_path / "b", show_progress=False)
    result = resumed.run("auto")
    assert result.step == 4
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert [r["loss"] for r in straight_rows(tmp_path / "a")][2:] == [r["loss"] for r in straight_rows(tmp_path / "b")]


def straight_rows(run):
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_ctrl_c_saves_the_state(tmp_path):
    trainer = AnimationTrainer(config(), data(), tmp_path, show_progress=False)
    step = trainer.train_step

    def interrupted():
        if trainer.step == 1:
            raise KeyboardInterrupt
        return step()

    trainer.train_step = interrupted
    result = trainer.run(None)
    assert result.interrupted and result.step == 1
    assert (tmp_path / "checkpoints" / "step-000001" / "trainer_state.pt").is_file()


def test_missing_vgg_file_is_named(tmp_path):
    missing = tmp_path / "weights" / VGG19_FILE
    with pytest.raises(FileNotFoundError) as error:
        AnimationTrainer(config(perceptual="vgg19", vgg19=str(missing)), data(), tmp_path / "run", show_progress=False)
    assert str(missing) in str(error.value) and VGG19_FILE in str(error.value) and "l1_pyramid" in str(error.value)


def test_vgg_file_with_torchvision_keys_loads(tmp_path):
    torch.manual_seed(0)
    state = VGG19Features().state_dict()
    convs = sorted({int(k.split(".")[1]) for k in state})
    assert convs == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28]  # torchvision's vgg19().features indices
    path = tmp_path / VGG19_FILE
    torch.save({**state, "classifier.0.weight": torch.zeros(1)}, path)
    loss = PerceptualPyramidLoss(load_vgg19(path), scales=(1.0, 0.5))
    image = torch.rand(1, 3, 32, 32)
    assert float(loss(image, image)) == 0
    assert float(loss(image, torch.rand(1, 3, 32, 32))) > 0


def test_l1_pyramid_and_reconstruction_protocol():
    image = torch.rand(1, 3, SIZE, SIZE)
    assert float(L1Pyramid()(image, image)) == 0
    frames = data()
    held = frames.held_out(0)
    assert len(held) == 2 and frames.train_counts == [6]
    torch.manual_seed(0)
    result = reconstruction_l1(TPSMM(TPSMMConfig.tiny()), held)
    assert result["frames"] == 1
    assert math.isclose(result["static"], float((held[1] - held[0]).abs().mean()), rel_tol=1e-6)


def test_pairs_never_use_held_out_frames():
    frames = VideoFrames([torch.arange(10).view(10, 1, 1, 1).expand(10, 3, 2, 2).to(torch.uint8)], holdout=0.3)
    source, driving = frames.pairs(200, torch.Generator().manual_seed(0))
    indices = torch.cat([source, driving]).mul(255).round()
    assert indices.max() <= 6 and (source <= driving).all()


def test_motion_error_is_near_zero_for_the_driving_video_itself_and_the_flow_length_for_a_still():
    from motionnft.animation.evaluation import motion_error
    from motionnft.flow import create_estimator

    video = blob_video(frames=5).float() / 255  # the disc moves 0.2 of the width (12.8 px) per frame
    source, driving = video[:1], video[1:]
    estimator = create_estimator("dis", "medium")
    perfect = motion_error(source, driving, driving, estimator)
    still = motion_error(source, driving, source.expand_as(driving), estimator)
    assert perfect["static"] == still["static"] > 3.0  # the video moves: |flow(source -> driving)| in pixels
    assert perfect["epe"] < 0.05 * perfect["static"]  # the same frames: the same flow
    assert still["epe"] == pytest.approx(still["static"], rel=0.1)  # nothing moved: the whole motion is missing
