"""Scene fine-tuning (``train-drag --init [--lora-rank R]``): a run starts from the trained file's
weights, a LoRA trains only itself, the exported file is the trained model, resume is exact and
only on the same init."""

from __future__ import annotations

import pytest
import torch

import motionnft.cli as cli
from motionnft.cli.drag import add_drag, add_train_drag
from motionnft.drag import load_flowgen
from motionnft.drag.finetune import (InitRecord, add_conv_lora, check_same_init, load_flowgen_init, merged_state,
                                     state_signature)
from motionnft.drag.flow_data import figure_scenes
from motionnft.drag.flowgen import FlowGen, FlowGenConfig
from motionnft.drag.inference import save_flowgen
from motionnft.drag.train_flowgen import FlowGenTrainConfig, FlowGenTrainer, plain_generator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    missing = tuple(add for add in (add_drag, add_train_drag) if add not in cli._COMMANDS)
    monkeypatch.setattr(cli, "_COMMANDS", cli._COMMANDS + missing)


def run(argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def scenes():
    return figure_scenes(4, 64, seed=7)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A trained tiny FlowGen's file (random weights moved off their initial values)."""
    torch.manual_seed(11)
    generator = FlowGen(FlowGenConfig.tiny())
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return save_flowgen(tmp_path_factory.mktemp("init") / "flowgen.safetensors", generator)


def probe(generator) -> torch.Tensor:
    generator.eval()
    generator_inputs = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 64, 64, generator=generator_inputs)
    sparse = torch.zeros(2, 2, 64, 64)
    sparse[:, :, 20, 30] = torch.tensor([5.0, -3.0])
    with torch.no_grad():
        return generator(image, sparse)


def config(**changes) -> FlowGenTrainConfig:
    return FlowGenTrainConfig(**{**dict(steps=3, batch_size=2, save_every=1, log_every=1, seed=4), **changes})


def test_an_init_run_starts_from_the_files_weights_and_its_export_moves_off_them(pretrained, tmp_path):
    # One Adam step moves each weight by about the learning rate (2e-4): starting from the file,
    # the export is within a few steps of it; from fresh weights it would be ~0.1 away.
    assert run(["train-drag", "--init", pretrained, "--out", tmp_path / "run", "--steps", "1", "--batch-size", "2",
                "--scenes", "2", "--quiet"]) == 0
    before, after = load_flowgen(pretrained).state_dict(), load_flowgen(tmp_path / "run" / "flowgen.safetensors")
    moved = max(float((after.state_dict()[name] - value).abs().max()) for name, value in before.items())
    assert 0 < moved < 1e-3
    assert after.working_size == 64


def test_a_flowgen_lora_trains_only_itself_and_exports_merged(pretrained, scenes, tmp_path):
    generator, init = load_flowgen_init(pretrained)
    trainer = FlowGenTrainer(config(lora_rank=4, learning_rate=1e-2), scenes, tmp_path, show_progress=False,
                             generator=generator, init=init)
    assert torch.equal(probe(trainer.generator), probe(load_flowgen(pretrained)))  # B = 0: the file's model
    trained = {name for name, parameter in trainer.generator.named_parameters() if parameter.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    base = {name: value.clone() for name, value in trainer.generator.state_dict().items() if "lora_" not in name}
    discriminator = [parameter.clone() for parameter in trainer.discriminator.parameters()]
    trainer.train_step()
    assert all(torch.equal(trainer.generator.state_dict()[name], value) for name, value in base.items())
    assert any(not torch.equal(a, b) for a, b in zip(trainer.discriminator.parameters(), discriminator))

    save_flowgen(tmp_path / "merged.safetensors", plain_generator(trainer.generator), size=64)
    merged = load_flowgen(tmp_path / "merged.safetensors")
    assert torch.allclose(probe(merged), probe(trainer.generator), atol=1e-4)
    assert (probe(merged) - probe(load_flowgen(pretrained))).abs().max() > 1e-3


def test_the_lora_covers_every_conv2d_and_no_transposed_conv():
    # peft 0.21 has no LoRA layer for ConvTranspose2d: the decoder stays as the file has it.
    generator = FlowGen(FlowGenConfig.tiny())
    names = add_conv_lora(generator, 2)
    adapted = {name.split(".lora_")[0] for name in names}
    assert adapted == {name for name, layer in FlowGen(FlowGenConfig.tiny()).named_modules()
                       if type(layer) is torch.nn.Conv2d}
    assert set(merged_state(generator)) == set(FlowGen(FlowGenConfig.tiny()).state_dict())


def test_a_lora_run_resumes_exactly_and_only_on_the_same_init(pretrained, scenes, tmp_path, monkeypatch):
    def trainer(out, init=pretrained):
        generator, record = load_flowgen_init(init)
        return FlowGenTrainer(config(lora_rank=4), scenes, out, show_progress=False, generator=generator,
                              init=record)

    straight = trainer(tmp_path / "straight")
    straight.run(None)
    interrupted = trainer(tmp_path / "resumed")
    step = interrupted.train_step

    def killed_at_step_2():
        if interrupted.step == 2:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(interrupted, "train_step", killed_at_step_2)
    assert interrupted.run(None).interrupted
    resumed = trainer(tmp_path / "resumed")
    resumed.run("auto")
    assert resumed.step == 3
    for (name, a), b in zip(resumed.generator.state_dict().items(), straight.generator.state_dict().values()):
        assert torch.equal(a, b), name

    other = tmp_path / "other.safetensors"
    save_flowgen(other, FlowGen(FlowGenConfig.tiny()))
    with pytest.raises(ValueError, match="other weights"):
        trainer(tmp_path / "resumed", other).run("auto")
    scratch = FlowGenTrainer(config(), scenes, tmp_path / "resumed", show_progress=False)
    with pytest.raises(ValueError, match="--init"):
        scratch.run("auto")


def test_a_signature_tells_weights_apart():
    state = FlowGen(FlowGenConfig.tiny()).state_dict()
    changed = dict(state, **{"downs.0.block.0.weight": state["downs.0.block.0.weight"] + 1e-3})
    assert state_signature(changed) != state_signature(state)
    same, other = InitRecord("a", state_signature(state)), InitRecord("b", state_signature(changed))
    check_same_init(same.as_dict(), InitRecord("copy", state_signature(dict(state))), "run")  # same weights: passes
    with pytest.raises(ValueError, match="other weights"):
        check_same_init(same.as_dict(), other, "run")


def test_cli_lora_run_exports_a_plain_flowgen_equal_to_the_checkpoint(pretrained, tmp_path, capsys):
    argv = ["train-drag", "--init", pretrained, "--lora-rank", "8", "--out", tmp_path / "run", "--steps", "2",
            "--batch-size", "2", "--scenes", "2", "--quiet"]
    assert run(argv) == 0
    assert "LoRA rank 8 merged" in capsys.readouterr().out
    exported = load_flowgen(tmp_path / "run" / "flowgen.safetensors")
    from motionnft.drag.train_flowgen import load_generator

    assert torch.allclose(probe(exported), probe(load_generator(tmp_path / "run")), atol=1e-5)
    other = tmp_path / "other.safetensors"
    save_flowgen(other, FlowGen(FlowGenConfig.tiny()))
    assert run(argv[:2] + [other] + argv[3:]) == 2
    assert "other weights" in capsys.readouterr().err


# FlowDiffusion ------------------------------------------------------------------------------------

def fd_outputs(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    noisy, image = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    flow = torch.randn(2, 2, 8, 8, generator=generator)
    with torch.no_grad():
        return model.eval()(noisy, torch.tensor([5, 900]), image, flow)


def rebuilt(start, run_dir, rank: int, step: int = 2):
    """The model a LoRA run trained, by hand: its start, the LoRA added, the checkpoint loaded."""
    from motionnft.drag.train_flowdiffusion import add_lora, load_trainable_state

    add_lora(start, rank)
    state = torch.load(run_dir / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt", weights_only=True)
    load_trainable_state(start, state["model"])
    return start.eval()


def test_flowdiffusion_lora_on_a_tiny_file_exports_a_full_file_of_the_trained_model(tmp_path, capsys):
    pytest.importorskip("diffusers")
    from motionnft.drag.flowdiffusion_files import load_flowdiffusion_file, read_header

    small = ["--steps", "2", "--batch-size", "1", "--size", "16", "--scenes", "2", "--quiet"]
    assert run(["train-drag", "--part", "flowdiffusion", "--out", tmp_path / "a"] + small) == 0
    init = tmp_path / "a" / "flowdiffusion.safetensors"
    assert run(["train-drag", "--part", "flowdiffusion", "--init", init, "--lora-rank", "2", "--learning-rate",
                "1e-2", "--out", tmp_path / "b", "--steps", "2", "--batch-size", "1", "--scenes", "2",
                "--quiet"]) == 0
    exported = tmp_path / "b" / "flowdiffusion.safetensors"
    assert (read_header(exported)["kind"], read_header(exported)["working_size"]) == ("full", "16")
    assert read_header(exported)["prediction_type"] == read_header(init)["prediction_type"] == "v_prediction"
    trained = rebuilt(load_flowdiffusion_file(init).model, tmp_path / "b", 2)
    loaded = load_flowdiffusion_file(exported).model
    assert torch.allclose(fd_outputs(loaded), fd_outputs(trained), atol=1e-5)
    assert (fd_outputs(loaded) - fd_outputs(load_flowdiffusion_file(init).model)).abs().max() > 1e-4
    # A LoRA file keeps no weights of its start: resuming on another start is refused.
    assert run(["train-drag", "--part", "flowdiffusion", "--out", tmp_path / "b", "--steps", "3", "--scenes", "2",
                "--lora-rank", "2", "--quiet"]) == 2
    assert "--init" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from sd_layout import sd_checkpoint_state, tiny_sd_parts

    path = tmp_path_factory.mktemp("sd") / "tiny_sd15.safetensors"
    save_file(sd_checkpoint_state(*tiny_sd_parts()), str(path))
    return path


def test_a_scene_lora_on_a_delta_exports_a_delta_that_reloads_on_the_base_to_the_trained_model(sd_base, tmp_path):
    from motionnft.drag.flowdiffusion import from_sd_unet
    from motionnft.drag.flowdiffusion_files import load_flowdiffusion_file, read_header
    from motionnft.drag.sd_checkpoint import load_sd15

    small = ["--steps", "2", "--batch-size", "1", "--size", "64", "--scenes", "2", "--learning-rate", "1e-2",
             "--quiet"]
    assert run(["train-drag", "--part", "flowdiffusion", "--base", sd_base, "--out", tmp_path / "a"] + small) == 0
    init = tmp_path / "a" / "flowdiffusion.safetensors"
    assert run(["train-drag", "--part", "flowdiffusion", "--base", sd_base, "--init", init, "--lora-rank", "2",
                "--out", tmp_path / "b"] + small) == 0
    exported = tmp_path / "b" / "flowdiffusion.safetensors"
    assert read_header(exported)["kind"] == "delta"
    parts = load_sd15(sd_base)
    start = from_sd_unet(parts.unet, parts.null_text)
    start.load_state_dict(merged_state(load_flowdiffusion_file(init, parts.unet).model))
    trained = rebuilt(start, tmp_path / "b", 2)
    loaded = load_flowdiffusion_file(exported, parts.unet).model
    assert torch.allclose(fd_outputs(loaded), fd_outputs(trained), atol=1e-6)
    assert (fd_outputs(loaded) - fd_outputs(load_flowdiffusion_file(init, parts.unet).model)).abs().max() > 1e-5
