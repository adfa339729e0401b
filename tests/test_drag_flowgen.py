"""FlowGen: network sizes and units, pseudo-drags, losses, training and exact resume."""

from __future__ import annotations

import pytest
import torch

from motionnft.data import DatasetWriter
from motionnft.drag.flow_data import FlowPairFolder, figure_scenes
from motionnft.flow.flo import write_flo
from motionnft.image import save_image
from motionnft.drag.flowgen import FlowGen, FlowGenConfig, PatchDiscriminator, pack_inputs, parameter_count
from motionnft.drag.flowgen_losses import flow_l1, reconstruction_weights
from motionnft.drag.pseudo_drags import STRATEGIES, drags_to_sparse, moving_mask, sample_pseudo_drags
from motionnft.drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer, load_generator, make_batch


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes():
    return figure_scenes(6, 64, seed=3)


def test_tiny_networks_give_flow_and_patch_logits():
    config = FlowGenConfig.tiny()
    torch.manual_seed(0)
    generator, discriminator = FlowGen(config), PatchDiscriminator(config)
    image, sparse = torch.rand(2, 3, 64, 64), torch.zeros(2, 2, 64, 64)
    sparse[:, :, 20, 30] = torch.tensor([4.0, -2.0])
    flow = generator(image, sparse)
    assert flow.shape == (2, 2, 64, 64) and flow.dtype == torch.float32
    assert discriminator(image, sparse, flow).shape == (2, 1, 6, 6)
    assert 1.5e6 < parameter_count(generator) < 2.2e6 and parameter_count(discriminator) < 0.3e6
    with pytest.raises(ValueError, match="multiples of 64"):
        generator(torch.rand(1, 3, 48, 64), torch.zeros(1, 2, 48, 64))


def test_full_configuration_has_the_papers_size():
    with torch.device("meta"):  # no memory: shapes only
        config = FlowGenConfig.full()
        generator, discriminator = FlowGen(config), PatchDiscriminator(config)
    assert parameter_count(generator) == pytest.approx(54.4e6, rel=0.005)
    assert parameter_count(discriminator) == pytest.approx(15.4e6, rel=0.005)
    assert config.depth == 8 and config.base_channels == 64 and config.multiple == 256
    assert any(isinstance(m, torch.nn.GroupNorm) for m in generator.modules())


def test_drags_are_normalised_per_channel_and_the_output_is_in_their_pixels():
    torch.manual_seed(1)
    image, sparse = torch.rand(1, 3, 64, 64), torch.zeros(1, 2, 64, 64)
    sparse[0, :, 10, 12] = torch.tensor([6.0, -1.5])
    sparse[0, :, 40, 33] = torch.tensor([-3.0, 0.5])
    packed, scale = pack_inputs(image, sparse)
    assert packed[:, 3:].abs().amax(dim=(2, 3)).tolist() == [[1.0, 1.0]]
    assert packed[:, :3].min() >= -1 and packed[:, :3].max() <= 1 and packed[:, :3].min() < -0.9
    assert scale.flatten().tolist() == [6.0, 1.5]
    generator = FlowGen(FlowGenConfig.tiny()).eval()
    with torch.no_grad():
        flow = generator(image, sparse)
        # Longer drags, same shape: the same normalised input, so the flow scales with them.
        assert torch.allclose(generator(image, 3 * sparse), 3 * flow, atol=1e-5)
    bound = generator.config.output_gain * scale.view(2, 1, 1)
    assert (flow[0].abs() <= bound + 1e-6).all()


def test_pseudo_drags_lie_inside_the_moving_region(scenes):
    flows = scenes.flows
    moving = moving_mask(flows)
    for strategy in STRATEGIES:
        drags = sample_pseudo_drags(flows, (1, 5), strategy, maps_per_target=3, generator=torch.Generator().manual_seed(0))
        assert drags.sparse.shape == (18, 2, 64, 64) and drags.source.tolist() == [i // 3 for i in range(18)]
        counts = drags.counts()
        assert ((counts >= 1) & (counts <= 5)).all() and len(set(counts.tolist())) > 1
        for index in range(18):
            points = drags.points[index][drags.valid[index]]
            xs, ys = points[:, 0], points[:, 1]
            assert moving[drags.source[index], ys, xs].all(), strategy
            assert len({tuple(p) for p in points.tolist()}) == len(points)  # distinct pixels
            expected = flows[drags.source[index]][:, ys, xs].T
            assert torch.equal(drags.displacements[index][drags.valid[index]], expected)
            # The sparse map holds exactly those drags and nothing else.
            assert int((drags.sparse[index].abs().sum(0) > 0).sum()) == len(points)
        rebuilt = drags_to_sparse(drags.points.float(), drags.displacements, 64, 64, drags.valid)
        assert torch.equal(rebuilt, drags.sparse)


def test_a_given_mask_narrows_the_region_and_topk_takes_the_largest_motion():
    flow = torch.zeros(1, 2, 32, 32)
    flow[0, 0, 4:28, 4:28] = torch.linspace(1, 24, 24)  # motion grows to the right
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, :, :16] = True
    drags = sample_pseudo_drags(flow, 3, "topk", mask=mask, generator=torch.Generator().manual_seed(0))
    xs = drags.points[0, :, 0]
    assert (xs < 16).all() and xs[0] == 15 and drags.counts().tolist() == [3]
    still = sample_pseudo_drags(torch.zeros(2, 2, 8, 8), 2, "random")
    assert still.counts().tolist() == [0, 0] and still.sparse.abs().sum() == 0


def test_the_l1_weights_the_moving_region_and_ignores_unknown_flow():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, 0, 0] = 4.0
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, 3, 3] = False
    weights = reconstruction_weights(target, valid, moving_mask(target), moving_weight=4.0)
    assert weights[0, 0, 0] == 5 and weights[0, 1, 1] == 1 and weights[0, 3, 3] == 0
    prediction = torch.zeros_like(target)
    prediction[0, 1, 3, 3] = 100.0  # wrong, but where the flow is unknown
    assert flow_l1(prediction, target, weights) == pytest.approx((4 / 4) * 5 / (5 + 14))


def small_config(**changes) -> FlowGenTrainConfig:
    settings = dict(steps=4, batch_size=2, maps_per_target=2, save_every=2, log_every=1, seed=5)
    return FlowGenTrainConfig(**{**settings, **changes})


def test_training_steps_lower_the_loss_on_a_fixed_batch(scenes, tmp_path):
    trainer = FlowGenTrainer(small_config(learning_rate=1e-3), scenes, tmp_path, show_progress=False)
    batch = make_batch(scenes.batch(torch.arange(4)), trainer.config, torch.Generator().manual_seed(0))
    trainer.batch = lambda step: batch

    def l1() -> float:
        with torch.no_grad():
            return float(flow_l1(trainer.generator.eval()(batch.images, batch.sparse), batch.flows, batch.weights))

    before = l1()
    for _ in range(12):
        trainer.train_step()
    assert l1() < 0.7 * before


def test_resume_after_an_interruption_is_exact(scenes, tmp_path, monkeypatch):
    straight = FlowGenTrainer(small_config(), scenes, tmp_path / "straight", show_progress=False)
    straight.run(None)

    interrupted = FlowGenTrainer(small_config(), scenes, tmp_path / "resumed", show_progress=False)
    step = interrupted.train_step

    def killed_at_step_3():
        if interrupted.step == 3:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(interrupted, "train_step", killed_at_step_3)
    result = interrupted.run(None)
    assert result.interrupted and result.step == 3
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step-000003"

    resumed = FlowGenTrainer(small_config(), scenes, tmp_path / "resumed", show_progress=False)
    with torch.no_grad():  # whatever a new process starts from, the checkpoint replaces it
        for parameter in [*resumed.generator.parameters(), *resumed.discriminator.parameters()]:
            parameter.add_(0.5)
    resumed.run("auto")
    assert resumed.step == 4
    for mine, theirs in ((resumed.generator, straight.generator), (resumed.discriminator, straight.discriminator)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    for mine, theirs in ((resumed.optimizer_g, straight.optimizer_g), (resumed.optimizer_d, straight.optimizer_d)):
        assert all(torch.equal(mine.state[p]["exp_avg_sq"], theirs.state[q]["exp_avg_sq"])
                   for p, q in zip(mine.state, theirs.state))
    loaded = load_generator(tmp_path / "straight")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), straight.generator.state_dict().values()))


def test_a_mined_folder_with_flow_files_feeds_the_trainer(scenes, tmp_path):
    root = tmp_path / "mined"
    with DatasetWriter(root) as writer:
        for index in range(3):
            image = scenes.images[index].float() / 255
            writer.add(f"pair{index}", "", image, image)
    flow = scenes.flows[0].clone()
    flow[:, 0, 0] = 1e10  # Middlebury's "unknown"
    write_flo(root / "images" / "pair0_flow.flo", flow)
    write_flo(root / "images" / "pair1_flow.flo", scenes.flows[1])
    mask = torch.zeros(1, 3, 64, 64)
    mask[..., 32:] = 1
    save_image(mask, root / "images" / "pair1_mask.png")  # pair2 has no flow: left out
    folder = FlowPairFolder(root, (64, 64))
    assert len(folder) == 2
    pairs = folder.batch(torch.tensor([0, 1]))
    assert pairs.images.shape == (2, 3, 64, 64) and pairs.flows.shape == (2, 2, 64, 64)
    assert not pairs.valid[0, 0, 0] and pairs.valid[0, 1, 1] and pairs.flows[0, :, 0, 0].abs().max() == 0
    assert pairs.masks[0].all() and pairs.masks[1, :, 32:].all() and not pairs.masks[1, :, :32].any()
    batch = make_batch(pairs, small_config(), torch.Generator().manual_seed(0))
    assert (batch.weights[0, 0, 0] == 0) and batch.sparse[2:, :, :, :32].abs().sum() == 0  # drags only where masked
    with DatasetWriter(tmp_path / "no_flow") as writer:
        writer.add("lonely", "", scenes.images[0].float() / 255, scenes.images[0].float() / 255)
    with pytest.raises(FileNotFoundError, match="_flow.flo"):
        FlowPairFolder(tmp_path / "no_flow", (64, 64))
