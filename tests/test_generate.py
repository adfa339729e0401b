"""Edits generated from a base model + LoRA: sampling, true CFG, LoRA merging, resume, the CLI chain."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from PIL import Image  # noqa: E402

from motionnft.cli import main  # noqa: E402
from motionnft.data import open_dataset  # noqa: E402
from motionnft.evaluate import ProducedEdits  # noqa: E402
from motionnft.generate import (  # noqa: E402
    EditGenerator,
    GenerationSettings,
    edit_generator,
    true_cfg,
    working_size,
)
from motionnft.lora import LoraModule, LoraWeights, load_lora, lora_from_peft_state_dict, merge_lora, save_lora  # noqa: E402
from motionnft.models import build_from_config, build_model  # noqa: E402
from motionnft.synthetic import motion_edit_dataset  # noqa: E402
from motionnft.train import load_config  # noqa: E402

SIZE = 64
FAST = GenerationSettings(steps=2, resolution=SIZE)


@pytest.fixture(scope="module")
def samples():
    return list(motion_edit_dataset(count=3, size=SIZE, seed=7))


def tiny_kontext():
    return build_model("tiny_flux_kontext", tiny_size="test", dtype=torch.float32)


def add_trainer_lora(transformer, targets, rank: int = 4, alpha: float = 8.0, seed: int = 0, base: str = "flux"):
    """A LoRA as the trainer makes one, without training: PEFT adapter ``default`` on ``targets``
    with random A and B, read back through ``lora_from_peft_state_dict`` (as ``training.policies`` does).

    The adapter stays active on ``transformer``, so it also runs the LoRA the PEFT way."""
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), adapter_name="default")
    generator = torch.Generator().manual_seed(seed)
    named = {}
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
                named[name] = param
    return lora_from_peft_state_dict({k: v.detach().clone() for k, v in named.items()}, alpha=alpha, base=base)


# Pure pieces -----------------------------------------------------------------------------------------
def test_the_working_size_keeps_the_aspect_ratio_on_the_token_grid():
    assert working_size(64, 64, 64, 8) == (64, 64)  # square inputs: the trainer's resolution x resolution
    assert working_size(480, 640, 512, 16) == (448, 592)  # 4:3 at ~512^2 px, multiples of 16
    assert working_size(1080, 1920, 1024, 16) == (768, 1360)
    assert working_size(10, 1000, 64, 8) == (8, 640)  # at least one multiple


def test_true_cfg_combines_then_rescales_each_token_to_the_conditional_norm():
    v_pos = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    v_neg = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    out = true_cfg(v_pos, v_neg, 2.0)
    # token 0: comb = (6, 8), rescaled to norm 5; token 1: comb = (0,1) + 2·(1,−1) = (2, −1), rescaled to norm 1
    expected = torch.tensor([[[3.0, 4.0], [2 / math.sqrt(5), -1 / math.sqrt(5)]]])
    assert torch.allclose(out, expected, atol=1e-6)
    v_pos, v_neg = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert torch.allclose(true_cfg(v_pos, v_neg, 1.0), v_pos, atol=1e-6)  # scale 1: the conditional prediction
    assert torch.allclose(true_cfg(v_pos, v_neg, 4.0).norm(dim=-1), v_pos.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match=r"v_pos \(2, 5, 8\) and v_neg \(2, 5, 7\)"):
        true_cfg(v_pos, v_neg[..., :7], 4.0)


def test_each_sample_noise_is_seeded_by_seed_and_sample_id_only():
    draw = lambda seed, sample_id: torch.randn(4, generator=edit_generator(seed, sample_id))  # noqa: E731
    assert torch.equal(draw(0, "a"), draw(0, "a"))
    assert not torch.equal(draw(0, "a"), draw(0, "b")) and not torch.equal(draw(0, "a"), draw(1, "a"))


# Sampling --------------------------------------------------------------------------------------------
def test_edits_do_not_depend_on_the_batch_size_or_the_order(samples):
    model = tiny_kontext()
    one = EditGenerator(model, FAST, kind="tiny_flux_kontext")(samples)
    three = EditGenerator(model, GenerationSettings(steps=2, resolution=SIZE, batch_size=3),
                          kind="tiny_flux_kontext")(samples[::-1])[::-1]
    assert [tuple(e.shape) for e in one] == [(1, 3, SIZE, SIZE)] * 3
    for a, b in zip(one, three):
        assert torch.allclose(a, b, atol=1e-5)
    assert (one[0] - one[1]).abs().max() > 1e-3  # different samples, different edits


def test_qwen_true_cfg_is_the_pipeline_combination_at_every_step(samples):
    model = build_model("tiny_qwen_image_edit", tiny_size="test", dtype=torch.float32)
    sample = samples[0]
    generator = EditGenerator(model, GenerationSettings(steps=1, resolution=SIZE), kind="tiny_qwen_image_edit")
    assert generator.settings.true_cfg == 4.0 and generator.settings.negative_prompt == " "  # Qwen's defaults
    edit = generator([sample])[0]
    # by hand: one Euler step from the sample's noise with the guided velocity
    size = (SIZE, SIZE)
    reference = generator.reference(sample)
    positive = model.encode_condition(sample.prompt, reference, size)
    negative = model.encode_condition(" ", reference, size)
    noise = model.noise(1, size, edit_generator(0, sample.id))
    sigmas = model.sigmas(1, size)
    t = torch.full((1,), float(sigmas[0]))
    with torch.no_grad():
        v_pos, v_neg = model.velocity(noise, t, positive), model.velocity(noise, t, negative)
    combined = v_neg + 4.0 * (v_pos - v_neg)
    velocity = combined * v_pos.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True)
    expected = model.decode_tokens(noise + float(sigmas[1] - sigmas[0]) * velocity, size)
    assert torch.allclose(edit, expected, atol=1e-5)
    unguided = EditGenerator(model, GenerationSettings(steps=1, resolution=SIZE, true_cfg=1.0),
                             kind="tiny_qwen_image_edit")([sample])[0]
    assert (unguided - edit).abs().max() > 1e-3


# LoRA ------------------------------------------------------------------------------------------------
def test_merge_lora_adds_strength_times_scale_times_up_down():
    layer = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False))
    weight = layer[0].weight.detach().clone()
    down, up = torch.randn(2, 3), torch.randn(2, 2)
    lora = LoraWeights({"0": LoraModule(down, up, alpha=4.0)}, "flux")
    assert merge_lora(layer, lora, strength=0.5) == ["0"]
    assert torch.allclose(layer[0].weight, weight + 0.5 * (4.0 / 2) * up @ down, atol=1e-6)
    merge_lora(layer, lora, strength=0.0)
    assert torch.allclose(layer[0].weight, weight + 0.5 * (4.0 / 2) * up @ down, atol=1e-6)


def test_a_lora_that_does_not_fit_is_refused_and_changes_nothing():
    transformer = tiny_kontext().transformer
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    fits = LoraModule(torch.zeros(2, width), torch.ones(width, 2), 2.0)
    wide = LoraModule(torch.zeros(2, width * 2), torch.ones(width, 2), 2.0)
    with pytest.raises(ValueError, match=r"transformer_blocks\.0\.attn\.to_k: LoRA delta \(out, in\) = "
                                         rf"\({width}, {2 * width}\).*layer weight \({width}, {width}\)"):
        merge_lora(transformer, LoraWeights({"transformer_blocks.0.attn.to_q": fits,
                                             "transformer_blocks.0.attn.to_k": wide}, "flux"))
    with pytest.raises(ValueError, match=r"1 of 2 LoRA modules match no linear layer.*transformer_blocks\.7\.attn"):
        merge_lora(transformer, LoraWeights({"transformer_blocks.0.attn.to_q": fits,
                                             "transformer_blocks.7.attn.to_q": fits}, "flux"))
    assert all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())


def test_editing_with_a_trainer_lora_equals_the_merged_weights_and_peft(samples, tmp_path):
    peft_model = tiny_kontext()
    lora = add_trainer_lora(peft_model.transformer, peft_model.lora_target_modules)
    path = save_lora(tmp_path / "motionnft_lora.safetensors", lora)
    assert len(lora.modules) == 8 + 3  # the double block's 8 attention projections, the single block's q/k/v
    with_lora = EditGenerator.load("tiny_flux_kontext", tiny_size="test", lora=path, steps=2, resolution=SIZE)
    by_peft = EditGenerator(peft_model, FAST, kind="tiny_flux_kontext")
    merged_by_hand = tiny_kontext()
    layers = dict(merged_by_hand.transformer.named_modules())
    with torch.no_grad():
        for name, module in lora.modules.items():
            layers[name].weight += (8.0 / 4) * module.up @ module.down
    by_hand = EditGenerator(merged_by_hand, FAST, kind="tiny_flux_kontext")
    base = EditGenerator.load("tiny_flux_kontext", tiny_size="test", steps=2, resolution=SIZE)
    off = EditGenerator.load("tiny_flux_kontext", tiny_size="test", lora=path, lora_scale=0.0, steps=2, resolution=SIZE)
    edits = {name: g(samples[:2]) for name, g in
             (("lora", with_lora), ("peft", by_peft), ("hand", by_hand), ("base", base), ("off", off))}
    for index in range(2):
        assert torch.allclose(edits["lora"][index], edits["hand"][index], atol=1e-5)
        assert torch.allclose(edits["lora"][index], edits["peft"][index], atol=1e-4)
        assert torch.equal(edits["off"][index], edits["base"][index])  # --lora-scale 0 is the base model
        assert (edits["lora"][index] - edits["base"][index]).abs().max() > 1e-3
    assert with_lora.describe()["lora_scale"] == 1.0 and len(with_lora.describe()["lora_sha256"]) == 16


def test_a_lora_of_the_other_base_is_refused(tmp_path):
    qwen = build_model("tiny_qwen_image_edit", tiny_size="test", dtype=torch.float32).transformer
    layer = dict(qwen.named_modules())["transformer_blocks.0.img_mod.1"]
    module = LoraModule(torch.zeros(2, layer.in_features), torch.zeros(layer.out_features, 2), 2.0)
    path = save_lora(tmp_path / "qwen.safetensors", LoraWeights({"transformer_blocks.0.img_mod.1": module}, "qwen_image"))
    with pytest.raises(ValueError, match="made for Qwen-Image-Edit.*not for FLUX.1 Kontext"):
        EditGenerator.load("tiny_flux_kontext", tiny_size="test", lora=path)


# The tiny preset's model ------------------------------------------------------------------------------
def test_model_tiny_is_the_tiny_preset_with_its_base_weights(tmp_path, monkeypatch):
    import motionnft.training.settings as train
    from safetensors.torch import save_file

    shipped = train.load_config
    preset = shipped("tiny")
    preset.tiny_size, preset.base_weights = "test", ""
    pretrained = build_from_config(preset).transformer.state_dict()
    pretrained = {k: v + 0.01 for k, v in pretrained.items()}
    save_file(pretrained, str(tmp_path / "tiny_base.safetensors"))
    preset.base_weights = "tiny_base.safetensors"  # relative, as a preset names a shipped file
    monkeypatch.setattr(train, "load_config", lambda name=None, *a, **k: preset if name == "tiny" else shipped(name, *a, **k))
    monkeypatch.chdir(tmp_path)
    generator = EditGenerator.load("tiny")
    state = generator.model.transformer.state_dict()
    assert generator.settings.resolution == preset.resolution and generator.model.dtype == torch.float32
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())
    record = generator.describe()
    assert record["model"] == "tiny" and record["base_weights"] == str(tmp_path / "tiny_base.safetensors")
    preset.base_weights = "missing.safetensors"
    with pytest.raises(FileNotFoundError) as error:
        EditGenerator.load("tiny")
    message = str(error.value)
    for place in (tmp_path / "missing.safetensors", "motionnft/configs/missing.safetensors", "motionnft/missing.safetensors"):
        assert str(place) in message


# Resume and batches through ProducedEdits -----------------------------------------------------------
class Interrupting:
    """A batched producer that raises KeyboardInterrupt (Ctrl-C) on its ``stop_at``-th batch."""

    batched = True

    def __init__(self, inner, stop_at=None):
        self.inner, self.stop_at, self.batches = inner, stop_at, []
        self.batch_size = inner.batch_size

    def describe(self):
        return self.inner.describe()

    def __call__(self, samples, progress=None):
        self.batches.append([s.id for s in samples])
        if len(self.batches) == self.stop_at:
            raise KeyboardInterrupt
        return self.inner(samples, progress)


def test_an_interrupted_then_resumed_run_equals_a_full_run(samples, tmp_path):
    model = tiny_kontext()
    settings = GenerationSettings(steps=2, resolution=SIZE, batch_size=2)
    full = ProducedEdits("full", tmp_path / "full", EditGenerator(model, settings, kind="tiny_flux_kontext"))
    assert full.produce(samples) == (3, 0)
    first = Interrupting(EditGenerator(model, settings, kind="tiny_flux_kontext"), stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        ProducedEdits("cut", tmp_path / "cut", first).produce(samples)
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.png")) == ["synthetic-00000.png", "synthetic-00001.png"]
    second = Interrupting(EditGenerator(model, settings, kind="tiny_flux_kontext"))
    assert ProducedEdits("cut", tmp_path / "cut", second).produce(samples) == (1, 2)
    assert second.batches == [["synthetic-00002"]]  # only the missing edit
    for sample in samples:
        name = f"{sample.id}.png"
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_a_folder_made_with_other_settings_is_refused(samples, tmp_path):
    model = tiny_kontext()
    ProducedEdits("a", tmp_path / "e", EditGenerator(model, FAST, kind="tiny_flux_kontext")).produce(samples[:1])
    other = EditGenerator(model, GenerationSettings(steps=3, resolution=SIZE), kind="tiny_flux_kontext")
    ProducedEdits("a", tmp_path / "e", EditGenerator(model, FAST, kind="tiny_flux_kontext"))  # same settings: fine
    with pytest.raises(ValueError, match=r"holds edits made with other settings \(steps: 2 -> 3\)"):
        ProducedEdits("a", tmp_path / "e", other)


# Command line --------------------------------------------------------------------------------------------
def test_data_synthetic_then_edit_base_and_lora_then_eval(tmp_path, capsys):
    data, base, tuned, report = (tmp_path / name for name in ("data", "base", "lora", "eval"))
    assert main(["data", "synthetic", "--count", "3", "--seed", "7", "--out", str(data), "--quiet"]) == 0
    lines = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    reference = list(motion_edit_dataset(count=3, size=SIZE, seed=7))
    assert [r["id"] for r in lines] == [s.id for s in reference]
    assert [r["prompt"] for r in lines] == [s.prompt for s in reference]
    for record, sample in zip(lines, reference):  # the extra fields and the category are kept
        assert {k: record[k] for k in sample.extra} == json.loads(json.dumps(sample.extra))
        assert record["category"] == sample.category
    read_back = open_dataset(data)
    assert torch.equal(read_back[0].input_image(), reference[0].input_image())
    assert main(["data", "synthetic", "--count", "3", "--seed", "7", "--out", str(data), "--quiet"]) == 0  # resumes
    assert "(0 written now, 3 already there)" in capsys.readouterr().out
    assert main(["data", "synthetic", "--count", "3", "--seed", "8", "--out", str(data), "--quiet"]) == 2
    assert "holds a synthetic dataset of count 3, size 64, seed 7: choose another --out" in capsys.readouterr().err

    lora_model = build_from_config(load_config("tiny"))
    lora = add_trainer_lora(lora_model.transformer, lora_model.lora_target_modules)
    lora_file = save_lora(tmp_path / "motionnft_lora.safetensors", lora)

    edit = ["edit", "--model", "tiny", "--data", str(data), "--steps", "1", "--quiet"]
    assert main(edit + ["--out", str(base), "--batch", "2"]) == 0
    assert main(edit + ["--out", str(tuned), "--lora", str(lora_file)]) == 0
    for folder in (base, tuned):
        assert sorted(p.name for p in folder.glob("*.png")) == [f"{s.id}.png" for s in reference]
        with Image.open(folder / f"{reference[0].id}.png") as image:
            assert image.size == (SIZE, SIZE)
    assert json.loads((tuned / "produced_by.json").read_text())["lora"] == str(lora_file.resolve())
    out = capsys.readouterr().out
    assert "LoRA: " in out and f"{2 * 8 + 2 * 3} modules merged, rank 4, scale alpha/rank 2 x strength 1" in out
    assert f"score them: motionnft eval {data} --edits lora={tuned}" in out

    assert main(["eval", str(data), "--edits", f"base={base}", "--edits", f"lora={tuned}", "--out", str(report),
                 "--preset", "fast", "--quiet"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["systems"]) == {"base", "lora"}
    assert len((report / "per_sample.csv").read_text().splitlines()) == 1 + 6


def test_cli_edit_resumes_and_stops_cleanly_on_ctrl_c(tmp_path, capsys, monkeypatch):
    data, out = tmp_path / "data", tmp_path / "edits"
    assert main(["data", "synthetic", "--count", "3", "--seed", "7", "--out", str(data), "--quiet"]) == 0
    edit = ["edit", "--model", "tiny_flux_kontext", "--tiny-size", "test", "--data", str(data), "--out", str(out),
            "--steps", "1", "--quiet"]
    calls = []
    real = EditGenerator.edit_batch

    def interrupt_second(self, batch, *args, **kwargs):
        calls.append([s.id for s in batch])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(EditGenerator, "edit_batch", interrupt_second)
    assert main(edit) == 130
    assert "interrupted: 1 of 3 edits are in" in capsys.readouterr().err
    first = out / "synthetic-00000.png"
    stamp = first.stat().st_mtime_ns
    assert main(edit) == 0
    assert calls[2:] == [["synthetic-00001"], ["synthetic-00002"]]  # only the missing ones
    assert first.stat().st_mtime_ns == stamp
    assert main(edit) == 0 and "all 3 edits exist; nothing to do" in capsys.readouterr().out
    assert len(calls) == 4


def test_cli_edit_explains_every_missing_or_unfitting_input(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["data", "synthetic", "--count", "1", "--seed", "7", "--out", str(data), "--quiet"]) == 0
    capsys.readouterr()
    out = ["--out", str(tmp_path / "edits"), "--steps", "1", "--quiet"]
    tiny = ["edit", "--model", "tiny_flux_kontext", "--tiny-size", "test", "--data", str(data)] + out

    def error(args) -> str:
        assert main(args) == 2
        return capsys.readouterr().err

    assert f"dataset not found: {tmp_path / 'nowhere'}" in error(
        ["edit", "--model", "tiny", "--data", str(tmp_path / "nowhere")] + out)
    assert f"looked for {tmp_path / 'no-model' / 'model_index.json'}" in error(
        ["edit", "--model", "flux_kontext", "--model-path", str(tmp_path / "no-model"), "--data", str(data)] + out)
    assert "no model folder given" in error(["edit", "--model", "qwen_image_edit", "--data", str(data)] + out)
    assert f"LoRA not found: {tmp_path / 'no.safetensors'}" in error(tiny + ["--lora", str(tmp_path / "no.safetensors")])
    qwen = build_model("tiny_qwen_image_edit", tiny_size="test", dtype=torch.float32)
    qwen_lora = add_trainer_lora(qwen.transformer, ["img_mod.1"], base="qwen_image")
    save_lora(tmp_path / "qwen.safetensors", qwen_lora)
    assert "made for Qwen-Image-Edit" in error(tiny + ["--lora", str(tmp_path / "qwen.safetensors")])
    small = tiny_kontext()
    save_lora(tmp_path / "test_size.safetensors", add_trainer_lora(small.transformer, small.lora_target_modules))
    message = error(["edit", "--model", "tiny", "--data", str(data), "--lora", str(tmp_path / "test_size.safetensors")] + out)
    assert "does not fit tiny FLUX.1 Kontext (base" in message
    assert "transformer_blocks.0.attn.add_k_proj: LoRA delta (out, in) = (32, 32)" in message
    assert "layer weight (128, 128)" in message
    message = error(tiny + ["--base-weights", "nope.safetensors"])
    assert "base_weights 'nope.safetensors': file not found; looked for" in message and "motionnft/configs" in message
    assert "Qwen-Image-Edit has no embedded guidance" in error(
        ["edit", "--model", "qwen_image_edit", "--guidance", "3", "--data", str(data)] + out)
    assert not (tmp_path / "edits").exists() or not list((tmp_path / "edits").glob("*.png"))
