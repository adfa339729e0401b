"""FlowGen at inference (motionnft/drag/inference.py): any image size, drags scaled both ways,
and the single-file weight format."""

from __future__ import annotations

import json

import pytest
import torch

from motionnft.drag import DragList, FlowGen, FlowGenConfig, flowgen_flow, load_flowgen, parse_drags, save_flowgen
from motionnft.drag.inference import FILE_NAME, working_size


class EchoFlowGen(FlowGen):
    """A tiny FlowGen whose output is the sum of its sparse map, everywhere: with one drag, a
    constant flow equal to that drag in working-size pixels. Records what it was given."""

    def forward(self, image, sparse):
        self.seen = (image.clone(), sparse.clone(), self.training)
        return sparse.sum(dim=(2, 3), keepdim=True).expand_as(sparse).clone()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return FlowGen(FlowGenConfig.tiny()).eval()


def one_drag(x0, y0, x1, y1, size=None) -> DragList:
    return DragList(torch.tensor([[x0, y0]], dtype=torch.float64), torch.tensor([[x1, y1]], dtype=torch.float64), size)


@pytest.mark.parametrize("fit", ["resize", "pad"])
@pytest.mark.parametrize("shape", [(48, 80), (64, 64), (100, 30)])
def test_shapes_for_any_image_size(tiny, fit, shape):
    image = torch.rand(2, 3, *shape)
    flow = flowgen_flow(tiny, image, parse_drags("5,5 -> 12,9; 20,20 -> 18,25"), fit=fit)
    assert flow.shape == (2, 2, *shape) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


@pytest.mark.parametrize("fit, padded", [("resize", (64, 64)), ("pad", (64, 64))])
def test_drag_is_scaled_to_the_working_size_and_back(fit, padded):
    generator = EchoFlowGen(FlowGenConfig.tiny())
    generator.train()
    image = torch.rand(1, 3, 48, 80)
    flow = flowgen_flow(generator, image, one_drag(40, 24, 60, 34), fit=fit)
    seen_image, sparse, was_training = generator.seen
    assert not was_training and generator.training  # run in eval mode, put back as it was
    assert tuple(seen_image.shape[-2:]) == padded
    # Working size: resize -> 64 x 64 (x * 64/80, y * 64/48); pad -> 38 x 64 (x, y * 0.8), padded to 64.
    sx, sy = (64 / 80, 64 / 48) if fit == "resize" else (0.8, 38 / 48)
    (index,) = sparse[0, 0].flatten().nonzero()
    assert divmod(int(index), 64) == (round(24 * sy), round(40 * sx))
    assert sparse[0, :, round(24 * sy), round(40 * sx)].tolist() == pytest.approx([20 * sx, 10 * sy], abs=1e-5)
    # The constant flow comes back in pixels of the 80 x 48 image: the drag itself.
    assert flow[0, 0].flatten().tolist() == pytest.approx([20.0] * 48 * 80, abs=1e-4)
    assert flow[0, 1].flatten().tolist() == pytest.approx([10.0] * 48 * 80, abs=1e-4)


def test_mask_confines_the_flow():
    generator = EchoFlowGen(FlowGenConfig.tiny())
    mask = torch.zeros(40, 60)
    mask[:, :30] = 1.0
    flow = flowgen_flow(generator, torch.rand(2, 3, 40, 60), one_drag(10, 10, 14, 10), mask=mask)
    assert flow.shape == (2, 2, 40, 60)
    assert torch.allclose(flow[:, 0, :, :30], torch.full((2, 40, 30), 4.0), atol=1e-4)
    assert (flow[:, :, :, 30:] == 0).all()
    with pytest.raises(ValueError, match="mask"):
        flowgen_flow(generator, torch.rand(2, 3, 40, 60), one_drag(10, 10, 14, 10), mask=torch.ones(3, 40, 60))


def test_pad_fills_with_edge_pixels_and_crops_the_flow():
    generator = EchoFlowGen(FlowGenConfig.tiny())
    image = torch.zeros(1, 3, 32, 64)
    image[..., -1, :] = 1.0  # the bottom row is white: the padding below repeats it
    flowgen_flow(generator, image, one_drag(10, 10, 12, 10), fit="pad")
    seen = generator.seen[0]
    assert seen.shape[-2:] == (64, 64)
    # The white bottom row, repeated over the padding.
    assert torch.allclose(seen[0, :, 32:, :], torch.ones_like(seen[0, :, 32:, :]))


def test_drags_in_editor_pixels_are_rescaled_to_the_image(tiny):
    generator = EchoFlowGen(FlowGenConfig.tiny())
    # Drawn on a 160 x 96 preview; applied to the 80 x 48 image: half.
    flow = flowgen_flow(generator, torch.rand(1, 3, 48, 80), one_drag(80, 48, 120, 68, size=(160, 96)))
    assert flow[0, :, 0, 0].tolist() == pytest.approx([20.0, 10.0], abs=1e-4)


def test_untrained_generator_stays_within_the_gain(tiny):
    # Only a smoke of the plumbing: within ± output_gain · the largest drag per channel.
    flow = flowgen_flow(tiny, torch.rand(1, 3, 40, 40), one_drag(20, 20, 30, 20))
    assert flow[:, 0].abs().max() <= 2 * 10 + 1e-4
    assert flow[:, 1].abs().max() <= 2 * 1 + 1e-4  # scale floor 1 px on y


def test_errors_name_the_input(tiny):
    with pytest.raises(ValueError, match="image"):
        flowgen_flow(tiny, torch.rand(3, 40, 40), one_drag(1, 1, 2, 2))
    with pytest.raises(ValueError, match="no drag"):
        flowgen_flow(tiny, torch.rand(1, 3, 40, 40), parse_drags(""))
    with pytest.raises(ValueError, match="outside"):
        flowgen_flow(tiny, torch.rand(1, 3, 40, 40), one_drag(50, 5, 60, 5))
    with pytest.raises(ValueError, match="size"):
        flowgen_flow(tiny, torch.rand(1, 3, 40, 40), one_drag(5, 5, 6, 5), size=48)
    with pytest.raises(ValueError, match="fit"):
        flowgen_flow(tiny, torch.rand(1, 3, 40, 40), one_drag(5, 5, 6, 5), fit="crop")


def test_file_round_trip(tiny, tmp_path):
    path = save_flowgen(tmp_path / "sub" / "drag.safetensors", tiny, size=128)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["drag.safetensors"]  # no temporaries
    header = json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    assert header["format"] == "motionnft-flowgen" and header["working_size"] == "128"
    assert json.loads(header["config"])["depth"] == 6
    loaded = load_flowgen(path)
    assert not loaded.training and loaded.config == tiny.config and working_size(loaded) == 128
    image, drags = torch.rand(1, 3, 50, 70), parse_drags("10,10 -> 20,15")
    assert torch.equal(flowgen_flow(loaded, image, drags, size=64), flowgen_flow(tiny, image, drags, size=64))
    # A folder holding flowgen.safetensors (what train-drag leaves) loads too.
    save_flowgen(tmp_path / "run" / FILE_NAME, tiny)
    assert working_size(load_flowgen(tmp_path / "run")) == 64


def test_trainer_run_and_checkpoint_folders_load(tmp_path):
    from motionnft.drag.flow_data import figure_scenes
    from motionnft.drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer

    config = FlowGenTrainConfig(steps=1, batch_size=2, save_every=1, log_every=1)
    trainer = FlowGenTrainer(config, figure_scenes(4, 64), tmp_path / "run", show_progress=False)
    trainer.run(resume=None)
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "step-000001",
                   tmp_path / "run" / "checkpoints" / "step-000001" / "trainer_state.pt"):
        loaded = load_flowgen(source)
        assert torch.equal(loaded.downs[0].block[0].weight, trainer.generator.downs[0].block[0].weight)


def test_load_errors_name_the_path(tiny, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_flowgen(tmp_path / "nowhere.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*flowgen.safetensors"):
        load_flowgen(tmp_path / "empty")
    text = tmp_path / "text.safetensors"
    text.write_text("not weights at all, just text")
    with pytest.raises(ValueError, match="text.safetensors: not a safetensors file"):
        load_flowgen(text)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="other.safetensors: not a FlowGen file"):
        load_flowgen(other)
    wrong = tmp_path / "wrong.safetensors"
    save_flowgen(wrong, tiny)
    data = wrong.read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_size])
    config = json.loads(header["__metadata__"]["config"])
    config["base_channels"] = 8
    header["__metadata__"]["config"] = json.dumps(config)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    wrong.write_bytes(len(new).to_bytes(8, "little") + new + data[8 + header_size:])
    with pytest.raises(ValueError, match="wrong.safetensors: weights do not match"):
        load_flowgen(wrong)
