"""The feature-decoupling paper's parts (motion optimisation, decoupling, adversarial loss) and
the paper model's training, saving and loading: tiny models, synthetic frames, one thread."""

from __future__ import annotations

import pytest
import torch

from motionnft.animation import load_official_checkpoint
from motionnft.animation.adversarial import (MultiScaleDiscriminator, discriminator_gan_loss, feature_matching_loss,
                                             generator_gan_loss)
from motionnft.animation.checkpoint import read_animation_config, save_converted, save_model
from motionnft.animation.decoupling import (DecouplingConfig, FeatureDecoupling, decoupling_loss, gram_schmidt,
                                            subspace_overlap)
from motionnft.animation.model import NETWORKS, TPSMM
from motionnft.animation.motion_optimization import (MotionOptimizationConfig, MotionOptimizer, SwinBlock,
                                                     shifted_window_mask, window_partition, window_reverse)
from motionnft.animation.paper_model import AnimationModelConfig, DecoupledTPSMM, build_model
from motionnft.animation.train import AnimationTrainer
from test_animation_train import config, data, straight_rows

torch.set_num_threads(1)


def frames(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 64, 64, generator=generator), torch.rand(batch, 3, 64, 64, generator=generator)


@pytest.mark.parametrize("switches", [(True, True), (True, False), (False, True)])
def test_fresh_paper_model_equals_tpsmm_with_the_same_weights(switches):
    torch.manual_seed(0)
    paper = DecoupledTPSMM(AnimationModelConfig.preset("tiny", *switches)).eval()
    plain = TPSMM(paper.config).eval()
    result = plain.load_state_dict(paper.state_dict(), strict=False)
    assert not result.missing_keys
    source, driving = frames()
    with torch.no_grad():
        kp_source, kp_driving = plain.kp_detector(source), plain.kp_detector(driving)
        expected = plain(source, kp_source, kp_driving).prediction
        got = paper(source, kp_source, kp_driving).prediction
    assert torch.equal(expected, got)


def test_switches_remove_the_parts():
    names = {switches: {key.split(".")[0] for key in build_model(AnimationModelConfig.preset("tiny", *switches))
                        .state_dict()}
             for switches in [(True, True), (True, False), (False, True), (False, False)]}
    assert {"motion_optimizer", "decoupling"} <= names[(True, True)]
    assert "motion_optimizer" in names[(True, False)] and "decoupling" not in names[(True, False)]
    assert "decoupling" in names[(False, True)] and "motion_optimizer" not in names[(False, True)]
    assert names[(False, False)] == set(NETWORKS) - {"avd_network"}
    assert type(build_model(AnimationModelConfig.preset("tiny", False, False))) is TPSMM


def test_motion_optimizer_is_the_identity_at_init_and_not_after_a_change():
    torch.manual_seed(0)
    module = MotionOptimizer(MotionOptimizationConfig.tiny(), context_channels=5)
    deformation = torch.rand(2, 16, 16, 2) * 2 - 1
    context, source = torch.rand(2, 5, 16, 16), torch.rand(2, 3, 64, 64)
    assert torch.equal(module(deformation, context, source), deformation)
    torch.nn.init.normal_(module.head.weight)
    refined = module(deformation, context, source)
    assert refined.shape == deformation.shape and not torch.allclose(refined, deformation)


def test_window_partition_round_trip_and_shift_mask():
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).view(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 3)
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    assert torch.isinf(mask[-1]).any()  # the bottom-right one mixes wrapped regions
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # every token sees itself


def test_shifted_windows_do_not_mix_wrapped_tokens():
    """A change at the left edge must not reach the right edge through the cyclic shift."""
    torch.manual_seed(0)
    block = SwinBlock(8, 2, window=4, shifted=True).eval()
    x = torch.randn(1, 8, 8, 8)
    changed = x.clone()
    changed[:, :, 0] += 5.0  # column 0
    with torch.no_grad():
        difference = (block(changed) - block(x)).abs().amax(dim=(0, 1, 3))
    assert difference[-2:].max() == 0  # after the roll, columns 6-7 share windows with column 0 only through the mask
    assert difference[:2].max() > 0


def test_gram_schmidt_is_orthonormal_and_differentiable():
    vectors = torch.randn(6, 16, dtype=torch.float64, requires_grad=True)
    basis = gram_schmidt(vectors)
    assert torch.allclose(basis @ basis.T, torch.eye(6, dtype=torch.float64), atol=1e-10)
    assert torch.autograd.gradcheck(gram_schmidt, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))
    basis.sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_bases_are_orthonormal_at_every_pass_and_the_check_catches_raw_parameters():
    torch.manual_seed(0)
    module = FeatureDecoupling(DecouplingConfig.tiny(), channels=32)
    identity, motion = module.bases()
    for basis in (identity, motion):
        assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)
    raw = module.identity_basis  # what an implementation without Gram-Schmidt would use
    assert not torch.allclose(raw @ raw.T, torch.eye(4), atol=1e-2)
    with torch.no_grad():  # an optimiser step moves the raw vectors: the next pass orthonormalises them anew
        module.identity_basis.add_(torch.randn_like(module.identity_basis))
    moved, _ = module.bases()
    assert torch.allclose(moved @ moved.T, torch.eye(4), atol=1e-5)
    assert not torch.allclose(moved, identity, atol=1e-3)  # not a basis kept from an earlier pass


def test_decoupling_loss_zero_for_orthogonal_bases_and_positive_otherwise():
    eye = torch.eye(8)
    identity_basis, motion_basis = eye[:4], eye[4:]
    codes = type("Codes", (), {})()
    codes.identity, codes.motion = torch.rand(2, 4), torch.rand(2, 4)
    codes.identity_basis, codes.motion_basis = identity_basis, motion_basis
    assert float(subspace_overlap(identity_basis, motion_basis)) == 0
    assert float(decoupling_loss(codes, codes.identity.clone())) == 0
    codes.motion_basis = gram_schmidt(eye[3:7] + 0.1)  # shares a direction with the identity basis
    assert float(subspace_overlap(identity_basis, codes.motion_basis)) > 0.5
    codes.motion_basis = motion_basis
    assert float(decoupling_loss(codes, codes.identity + 0.1)) == pytest.approx(4 * 0.01, rel=1e-4)  # 4 coefficients off by 0.1


def test_decoupling_gradients_reach_the_bases_and_the_attention_starts_as_identity():
    torch.manual_seed(0)
    module = FeatureDecoupling(DecouplingConfig.tiny(), channels=32)
    warped, source = torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)
    fused, codes = module(warped, source)
    assert torch.equal(fused, warped)
    assert codes.identity.shape == (2, 4) and codes.motion.shape == (2, 4)
    (decoupling_loss(codes, module.identity_code(torch.randn(2, 32, 8, 8))) + fused.sum()).backward()
    assert module.identity_basis.grad.abs().sum() > 0 and module.motion_basis.grad.abs().sum() > 0
    assert module.attention.out.weight.grad.abs().sum() > 0  # the zero-initialised layer still learns


def test_gan_loss_signs():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(num_channels=3, block_expansion=8, max_features=32)
    real, fake = frames()
    out_real, out_fake = discriminator(real), discriminator(fake)
    assert [s.shape[1] for s in out_real.scores] == [1, 1]
    judged = type(out_real)([torch.ones_like(s) for s in out_real.scores], out_real.features)
    rejected = type(out_real)([torch.zeros_like(s) for s in out_real.scores], out_real.features)
    assert float(generator_gan_loss(judged)) == 0 and float(generator_gan_loss(rejected)) == 2
    assert float(discriminator_gan_loss(judged, rejected)) == 0  # a perfect discriminator
    assert float(discriminator_gan_loss(rejected, judged)) == 4  # the worst one (2 scales x (1 + 1))
    assert float(feature_matching_loss(out_real, out_real).detach()) == 0
    assert float(feature_matching_loss(out_real, out_fake).detach()) > 0


def paper_config(**overrides):
    return config(**{"adversarial_weight": 1.0, "feature_matching_weight": 10.0, **overrides})


def test_a_training_step_lowers_the_paper_models_loss_on_a_fixed_batch(tmp_path):
    trainer = AnimationTrainer(config(steps=100, learning_rate=1e-3), data(), tmp_path, show_progress=False)
    assert trainer.model.motion_optimizer is not None and trainer.model.decoupling is not None
    fixed = trainer.batch(0)
    trainer.batch = lambda step: fixed

    def total() -> float:
        with torch.no_grad():
            terms = trainer.losses(*fixed, 50)
        return sum(float(v) for k, v in terms.items() if k != "l1")

    before = total()
    for _ in range(8):
        trainer.train_step()
    assert total() < 0.9 * before


def test_exact_resume_of_the_paper_model_with_the_discriminator(tmp_path):
    straight = AnimationTrainer(paper_config(), data(), tmp_path / "a", show_progress=False)
    straight.run(None)
    first = AnimationTrainer(paper_config(), data(), tmp_path / "b", show_progress=False)
    first.train_step()
    first.train_step()
    first.save_checkpoint()
    torch.manual_seed(123)
    resumed = AnimationTrainer(paper_config(), data(), tmp_path / "b", show_progress=False)
    assert resumed.run("auto").step == 4
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    resumed_weights = dict(resumed.adversary.discriminator.named_parameters())
    for name, value in straight.adversary.discriminator.named_parameters():  # (the scale-1 blur buffer is NaN, unused)
        assert torch.equal(value, resumed_weights[name]), name
    assert [r["loss"] for r in straight_rows(tmp_path / "a")][2:] == [r["loss"] for r in straight_rows(tmp_path / "b")]
    with pytest.raises(ValueError, match="decoupling"):
        AnimationTrainer(paper_config(decoupling=False), data(), tmp_path / "b", show_progress=False).run("auto")


def test_without_accelerate_the_run_is_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # both runs on the CPU, also on a machine with a GPU
    runs = []
    for use, folder in ((True, "a"), (False, "b")):
        trainer = AnimationTrainer(config(steps=2, accelerate=use), data(), tmp_path / folder, show_progress=False)
        assert (trainer.accelerator is not None) == use
        trainer.run(None)
        runs.append(trainer.model.state_dict())
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]), name


def test_save_load_round_trip_reads_the_kind_from_the_file(tmp_path):
    torch.manual_seed(0)
    model = DecoupledTPSMM(AnimationModelConfig.preset("tiny", True, True)).eval()
    torch.nn.init.normal_(model.motion_optimizer.head.weight, std=0.01)  # not the identity any more
    path = tmp_path / "paper.safetensors"
    save_model(model, path)
    assert read_animation_config(path) == model.model_config
    loaded = load_official_checkpoint(path)
    assert isinstance(loaded, DecoupledTPSMM) and loaded.model_config == model.model_config
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    source, driving = frames()
    with torch.no_grad():
        kp_s, kp_d = model.kp_detector(source), model.kp_detector(driving)
        assert torch.equal(model(source, kp_s, kp_d).prediction, loaded(source, kp_s, kp_d).prediction)
    # A plain TPSMM file stays a TPSMM; paper networks in a file without a config are refused.
    plain = tmp_path / "plain.safetensors"
    save_model(TPSMM(model.config), plain)
    assert type(load_official_checkpoint(plain)) is TPSMM
    converted = tmp_path / "converted.safetensors"
    save_converted({name: getattr(model, name).state_dict() for name in NETWORKS if getattr(model, name, None)}
                   | {"motion_optimizer": model.motion_optimizer.state_dict()}, converted)
    assert type(load_official_checkpoint(converted)) is TPSMM  # save_converted keeps TPSMM's networks only
    from safetensors.torch import load_file, save_file

    mixed = tmp_path / "mixed.safetensors"  # paper tensors, but no config saying which model they belong to
    save_file(load_file(str(path)), str(mixed), metadata={"format": "tpsmm"})
    with pytest.raises(ValueError, match="another model kind"):
        load_official_checkpoint(mixed)


def test_without_the_accelerate_package_the_plain_loop_runs(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "accelerate", None)  # "import accelerate" raises ImportError
    trainer = AnimationTrainer(config(steps=1), data(), tmp_path, show_progress=False)
    assert trainer.accelerator is None and trainer.run(None).step == 1
