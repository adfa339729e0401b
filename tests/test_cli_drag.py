"""``motionnft drag`` and ``motionnft train-drag``, run through the real ``motionnft.cli.main``."""

from __future__ import annotations

import json

import pytest
import torch

import motionnft.cli as cli
from motionnft.cli.drag import add_drag, add_train_drag
from motionnft.drag import load_flowgen
from motionnft.drag.flow_data import figure_scenes
from motionnft.flow import read_flo, write_flo
from motionnft.image import load_image, save_image
from motionnft.synthetic import FigurePose, render_scene


def register(monkeypatch) -> None:
    """The two commands in the parser (whether or not cli/__init__.py lists them yet)."""
    missing = tuple(add for add in (add_drag, add_train_drag) if add not in cli._COMMANDS)
    monkeypatch.setattr(cli, "_COMMANDS", cli._COMMANDS + missing)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    register(monkeypatch)


def run(argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture
def image(tmp_path):
    return save_image(render_scene(FigurePose(), (72, 96)), tmp_path / "figure.png")  # 96 wide, 72 high


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A dataset folder laid out as the miner writes it: <id>_input/_target.png and <id>_flow.flo."""
    root = tmp_path_factory.mktemp("mined")
    (root / "images").mkdir()
    scenes = figure_scenes(6, 64, seed=3)
    records = []
    for index in range(len(scenes)):
        batch = scenes.batch(torch.tensor([index]))
        sample = f"s{index}"
        save_image(batch.images[0], root / "images" / f"{sample}_input.png")
        save_image(batch.images[0], root / "images" / f"{sample}_target.png")
        write_flo(root / "images" / f"{sample}_flow.flo", batch.flows[0])
        records.append({"id": sample, "prompt": "move", "input_image": f"images/{sample}_input.png",
                        "target_image": f"images/{sample}_target.png"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def trained(mined, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flowgen") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        register(monkeypatch)
        assert run(["train-drag", "--data", mined, "--part", "flowgen", "--out", run_dir, "--steps", "2",
                    "--batch-size", "2", "--quiet"]) == 0
    return run_dir


def test_spline_drag_writes_the_result_the_flow_and_its_picture(image, tmp_path, capsys):
    out, flo, viz = tmp_path / "out" / "moved.png", tmp_path / "f.flo", tmp_path / "viz.png"
    assert run(["drag", "--image", image, "--drags", "40,30,52,34; 20,50,20,44", "--out", out, "--flow-out", flo,
                "--viz", viz]) == 0
    flow = read_flo(flo)
    assert flow.shape == (2, 72, 96)
    # The spline is exact at the drags' sources.
    assert flow[:, 30, 40].tolist() == pytest.approx([12.0, 4.0], abs=1e-3)
    assert flow[:, 50, 20].tolist() == pytest.approx([0.0, -6.0], abs=1e-3)
    source, moved = load_image(image), load_image(out)
    assert moved.shape == source.shape and (moved - source).abs().max() > 0.1
    assert load_image(viz).shape == source.shape
    printed = capsys.readouterr().out
    assert "thin-plate spline" in printed and str(out) in printed


def test_drag_formats_agree(image, tmp_path):
    flows = []
    for index, text in enumerate(["40,30,52,34", "40,30 -> 52,34", json.dumps({"drags": [[40, 30, 52, 34]]}),
                                  json.dumps({"size": [192, 144], "drags": [[80, 60, 104, 68]]})]):
        flo = tmp_path / f"{index}.flo"
        assert run(["drag", "--image", image, "--drags", text, "--out", tmp_path / f"{index}.png",
                    "--flow-out", flo]) == 0
        flows.append(read_flo(flo))
    for flow in flows[1:]:
        assert torch.allclose(flow, flows[0], atol=1e-4)


def test_train_drag_writes_flowgen_weights_that_drag_uses(trained, image, tmp_path, capsys):
    weights = trained / "flowgen.safetensors"
    assert weights.is_file() and (trained / "checkpoints" / "latest").is_file()
    generator = load_flowgen(weights)
    assert generator.config.depth == 6 and generator.working_size == 64
    for fit in ("resize", "pad"):
        out, flo = tmp_path / f"{fit}.png", tmp_path / f"{fit}.flo"
        assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowgen", weights, "--fit", fit,
                    "--out", out, "--flow-out", flo]) == 0
        assert read_flo(flo).shape == (2, 72, 96) and torch.isfinite(read_flo(flo)).all()
        assert load_image(out).shape == (1, 3, 72, 96)
    assert "FlowGen" in capsys.readouterr().out
    # The run folder itself is accepted too (its latest trainer checkpoint).
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowgen", trained, "--out",
                tmp_path / "run.png"]) == 0


def test_train_drag_resumes_a_finished_run_without_training(trained, mined, capsys, monkeypatch):
    from motionnft.drag.train_flowgen import FlowGenTrainer

    def no_training(self):  # a finished run must not take another step (retraining would look the same)
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(FlowGenTrainer, "train_step", no_training)
    before = load_flowgen(trained / "flowgen.safetensors").state_dict()
    assert run(["train-drag", "--data", mined, "--out", trained, "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    after = load_flowgen(trained / "flowgen.safetensors").state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert "step 2" in capsys.readouterr().out


def test_train_drag_on_synthetic_scenes(tmp_path):
    assert run(["train-drag", "--out", tmp_path / "run", "--steps", "1", "--batch-size", "1", "--scenes", "2",
                "--quiet"]) == 0
    assert load_flowgen(tmp_path / "run" / "flowgen.safetensors").working_size == 64


@pytest.fixture
def bad(tmp_path, image, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not weights\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain.txt").write_text("a file\n")
    from safetensors.torch import save_file

    # The header of a FlowDiffusion delta file (what --init reads first) over one tensor.
    save_file({"null_text": torch.zeros(1, 2, 4)}, str(tmp_path / "delta.safetensors"),
              {"format": "motionnft-flowdiffusion", "version": "1", "kind": "delta"})
    return tmp_path


BAD = [
    ("drag --image missing.png --drags 1,1,2,2 --out o.png", "missing.png"),
    ("drag --image figure.png --drags nonsense --out o.png", "--drags"),
    ("drag --image figure.png --drags '' --out o.png", "--drags"),
    ("drag --image figure.png --drags 1,1,2 --out o.png", "--drags"),
    ("drag --image figure.png --drags 200,10,210,10 --out o.png", "outside the 96x72 image"),
    ("drag --image figure.png --drags 1,1,2,2 --method flowgen --out o.png", "--flowgen"),
    ("drag --image figure.png --drags 1,1,2,2 --flowgen none.safetensors --out o.png", "none.safetensors"),
    ("drag --image figure.png --drags 1,1,2,2 --flowgen notes.txt --out o.png", "notes.txt"),
    ("drag --image figure.png --drags 1,1,2,2 --flowgen folder --out o.png", "folder"),
    ("drag --image figure.png --drags 1,1,2,2 --out figure.png", "figure.png"),
    ("drag --image figure.png --drags 1,1,2,2 --out folder", "--out"),
    ("drag --image figure.png --drags 1,1,2,2 --out o.png --flow-out plain.txt/f.flo", "--flow-out"),
    ("train-drag --data nowhere --out run", "nowhere"),
    ("train-drag --data plain.txt --out run", "plain.txt"),
    ("train-drag --out run --size 100", "--size 100"),
    ("train-drag --out run --steps 0", "--steps"),
    ("train-drag --out plain.txt", "plain.txt"),
    ("train-drag --out run --resume elsewhere", "elsewhere"),
    ("train-drag --part flowdiffusion --base nowhere.safetensors --out run", "--base nowhere.safetensors"),
    ("train-drag --part flowdiffusion --base notes.txt --out run", "--base notes.txt"),
    ("train-drag --part flowdiffusion --base folder --out run", "--base folder"),
    ("train-drag --part flowdiffusion --lora-rank 2 --out run", "--lora-rank"),
    ("train-drag --base notes.txt --out run", "--base"),
    ("train-drag --init missing.safetensors --out run", "--init missing.safetensors"),
    ("train-drag --init notes.txt --out run", "--init notes.txt"),
    ("train-drag --init delta.safetensors --out run", "--init delta.safetensors"),
    ("train-drag --lora-rank 8 --out run", "--lora-rank 8"),
    ("train-drag --part flowdiffusion --init missing.safetensors --out run", "--init missing.safetensors"),
    ("train-drag --part flowdiffusion --init delta.safetensors --out run", "--base"),
]


@pytest.mark.parametrize("line, named", BAD, ids=[line for line, _ in BAD])
def test_bad_inputs_exit_2_with_one_line_naming_them(bad, line, named, capsys):
    import shlex

    assert cli.main(shlex.split(line)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err and err.startswith("motionnft "), err
    assert not (bad / "o.png").exists() and not (bad / "run" / "flowgen.safetensors").exists()


def test_flowdiffusion_option_runs_a_trained_flowdiffusion(image, tmp_path):
    """With FlowDiffusion installed, train-drag --part flowdiffusion trains it and drag
    --flowdiffusion edits with it; a folder that holds no run is named."""
    pytest.importorskip("diffusers")
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion", tmp_path / "nothing",
                "--out", tmp_path / "o.png"]) == 2
    assert not (tmp_path / "o.png").exists()
    assert run(["train-drag", "--part", "flowdiffusion", "--out", tmp_path / "fd", "--steps", "1", "--batch-size", "1",
                "--scenes", "2", "--quiet"]) == 0
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion", tmp_path / "fd", "--steps", "2",
                "--out", tmp_path / "edit.png"]) == 0
    assert load_image(tmp_path / "edit.png").shape == (1, 3, 72, 96)
    # The run also left its weights as one file, which drag reads the same way.
    from motionnft.drag.flowdiffusion_files import read_header

    header = read_header(tmp_path / "fd" / "flowdiffusion.safetensors")
    assert (header["kind"], header["prediction_type"]) == ("full", "v_prediction")  # the tiny model's setting
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion",
                tmp_path / "fd" / "flowdiffusion.safetensors", "--steps", "2", "--out", tmp_path / "edit2.png"]) == 0
    assert torch.equal(load_image(tmp_path / "edit2.png"), load_image(tmp_path / "edit.png"))


def test_drag_with_a_flowdiffusion_file_is_the_librarys_edit_for_the_same_seed(image, tmp_path):
    """The CLI's steps, redone with the library: the spline flow (borders pinned), image and flow
    resized to the file's working size, flowdiffusion_edit (DDIM, noise from a CPU generator seeded
    with --seed), the result resized back and saved."""
    pytest.importorskip("diffusers")
    from motionnft.cli.drag import read_drag_option
    from motionnft.drag import drags_to_flow
    from motionnft.drag.flowdiffusion import FlowDiffusion
    from motionnft.drag.flowdiffusion_conditioning import PooledRGBCodec
    from motionnft.drag.flowdiffusion_files import CodecSpec, save_flowdiffusion
    from motionnft.drag.flowdiffusion_sampling import flowdiffusion_edit, make_scheduler
    from motionnft.flow import resize_flow
    from motionnft.image import resize_image

    torch.manual_seed(0)
    model = FlowDiffusion.tiny(16).eval()
    with torch.no_grad():
        model.unet.conv_in.weight.normal_(0, 0.1)  # the conditions matter
    weights = save_flowdiffusion(tmp_path / "fd.safetensors", model, CodecSpec.pooled(2, 2.5), 32)
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion", weights, "--steps", "3",
                "--seed", "7", "--out", tmp_path / "cli.png"]) == 0
    source = load_image(image)
    flow = drags_to_flow(read_drag_option("40,30,52,34").scaled_to(96, 72), 72, 96, smoothness=0.0,
                         pinned_border_points=8)
    edit = flowdiffusion_edit(model, make_scheduler("ddim"), resize_image(source, (32, 32)),
                              resize_flow(flow, (32, 32)), codec=PooledRGBCodec(2, 2.5), steps=3,
                              generator=torch.Generator().manual_seed(7))
    save_image(resize_image(edit, (72, 96))[0], tmp_path / "library.png")
    assert torch.equal(load_image(tmp_path / "cli.png"), load_image(tmp_path / "library.png"))
    assert run(["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion", weights, "--steps", "3",
                "--seed", "8", "--out", tmp_path / "other_seed.png"]) == 0
    assert not torch.equal(load_image(tmp_path / "other_seed.png"), load_image(tmp_path / "cli.png"))


@pytest.fixture(scope="module")
def sd_base(tmp_path_factory):
    """A single-file SD 1.5 checkpoint of SD 1.5's architecture shrunk for the CPU (UNet, 4-level
    VAE, CLIP text model at width 32), in the original layout."""
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from sd_layout import sd_checkpoint_state, tiny_sd_parts

    path = tmp_path_factory.mktemp("sd") / "tiny_sd15.safetensors"
    save_file(sd_checkpoint_state(*tiny_sd_parts()), str(path))
    return path


def fd_outputs(model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    noisy, image = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    flow = torch.randn(2, 2, 8, 8, generator=generator)
    with torch.no_grad():
        return model(noisy, torch.tensor([5, 900]), image, flow)


def trained_on_base(run_dir, base, lora_rank: int = 0):
    """The model of a base run's final checkpoint, rebuilt by hand: from_sd_unet on the base
    (+ the LoRA), its trained tensors loaded."""
    from motionnft.drag.flowdiffusion import from_sd_unet
    from motionnft.drag.sd_checkpoint import load_sd15
    from motionnft.drag.train_flowdiffusion import add_lora, load_trainable_state

    parts = load_sd15(base)
    model = from_sd_unet(parts.unet, parts.null_text)
    if lora_rank:
        add_lora(model, lora_rank, train_conv_in=True)
    state = torch.load(run_dir / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    load_trainable_state(model, state["model"])
    return parts, model.eval()


@pytest.mark.parametrize("lora_rank", [0, 2], ids=["delta", "lora"])
def test_train_drag_from_an_sd15_base_writes_a_file_that_reloads_to_the_trained_model(sd_base, tmp_path, capsys,
                                                                                      lora_rank):
    """--base: FlowDiffusion from the checkpoint's UNet, trained on its VAE's latents (64 px ->
    8 x 8) with ε-prediction; the file (delta, or lora with --lora-rank) on that UNet is the model
    the run trained."""
    from motionnft.drag.flowdiffusion import from_sd_unet
    from motionnft.drag.flowdiffusion_files import load_flowdiffusion_file, read_header

    run_dir = tmp_path / "run"
    argv = ["train-drag", "--part", "flowdiffusion", "--base", sd_base, "--out", run_dir, "--steps", "2",
            "--batch-size", "1", "--size", "64", "--scenes", "2", "--learning-rate", "1e-2", "--quiet"]
    assert run(argv + (["--lora-rank", lora_rank] if lora_rank else [])) == 0
    printed = capsys.readouterr().out
    assert "models/motionnft_drag" in printed and "same SD 1.5 checkpoint" in printed
    path = run_dir / "flowdiffusion.safetensors"
    header = read_header(path)
    kind = "lora" if lora_rank else "delta"
    assert (header["kind"], header["prediction_type"], header["working_size"]) == (kind, "epsilon", "64")
    assert json.loads(header["codec"]) == {"kind": "sd-vae", "factor": 8, "scale": 0.18215}
    settings = json.loads((run_dir / "config.json").read_text())
    assert (settings["codec_factor"], settings["size"], settings["lora_rank"]) == (8, 64, lora_rank)
    parts, trained = trained_on_base(run_dir, sd_base, lora_rank)
    loaded, codec, size = load_flowdiffusion_file(path, parts.unet)
    assert torch.allclose(fd_outputs(loaded), fd_outputs(trained), atol=1e-6)
    assert torch.equal(loaded.null_text, parts.null_text)  # the checkpoint's CLIP on the empty prompt
    untrained = from_sd_unet(parts.unet, parts.null_text).eval()
    assert (fd_outputs(loaded) - fd_outputs(untrained)).abs().max() > 1e-4  # what it holds was trained
    assert loaded.unet.conv_in.weight[:, 4:].abs().max() > 0  # and it reads the image and flow
    # Resuming needs the same base again (the LoRA / delta is nothing without it).
    assert run(["train-drag", "--part", "flowdiffusion", "--out", run_dir, "--steps", "2", "--scenes", "2",
                "--quiet"]) == 2
    assert "--base" in capsys.readouterr().err
    assert run(argv + (["--lora-rank", lora_rank] if lora_rank else [])) == 0
    assert "step 2" in capsys.readouterr().out


@pytest.mark.parametrize("lora_rank", [0, 2], ids=["delta", "lora"])
def test_drag_edits_with_a_base_trained_file_on_its_sd15_checkpoint(sd_base, image, tmp_path, capsys, lora_rank):
    """drag --flowdiffusion FILE --base SD15: the file on the checkpoint's UNet, images through its
    VAE; the library's edit_at_working_size for the same seed. Without --base the error names it."""
    from motionnft.cli.drag import read_drag_option
    from motionnft.drag import drags_to_flow
    from motionnft.drag.flowdiffusion_conditioning import SDVAECodec
    from motionnft.drag.flowdiffusion_files import load_flowdiffusion_file
    from motionnft.drag.flowdiffusion_sampling import edit_at_working_size
    from motionnft.drag.sd_checkpoint import load_sd15

    run_dir = tmp_path / "run"
    train = ["train-drag", "--part", "flowdiffusion", "--base", sd_base, "--out", run_dir, "--steps", "1",
             "--batch-size", "1", "--size", "64", "--scenes", "2", "--quiet", "--device", "cpu"]
    assert run(train + (["--lora-rank", lora_rank] if lora_rank else [])) == 0
    weights = run_dir / "flowdiffusion.safetensors"
    drag = ["drag", "--image", image, "--drags", "40,30,52,34", "--flowdiffusion", weights, "--steps", "2",
            "--seed", "5", "--out", tmp_path / "cli.png"]
    capsys.readouterr()
    assert run(drag) == 2
    assert "give --base" in capsys.readouterr().err
    assert run(drag + ["--base", sd_base, "--device", "cpu"]) == 0
    parts = load_sd15(sd_base)
    model, _, size = load_flowdiffusion_file(weights, parts.unet)
    flow = drags_to_flow(read_drag_option("40,30,52,34").scaled_to(96, 72), 72, 96, smoothness=0.0,
                         pinned_border_points=8)
    edit = edit_at_working_size(model, load_image(image), flow, codec=SDVAECodec(parts.vae), size=size, steps=2,
                                seed=5)
    save_image(edit[0], tmp_path / "library.png")
    assert torch.equal(load_image(tmp_path / "cli.png"), load_image(tmp_path / "library.png"))
