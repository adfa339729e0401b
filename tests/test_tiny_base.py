"""The tiny preset's shipped base: reproducible by its script, loaded by the preset, performing the task sometimes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors import safe_open  # noqa: E402

from motionnft.models.configured import build_from_config, resolve_base_weights  # noqa: E402
from motionnft.train import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pretrain_script():
    spec = importlib.util.spec_from_file_location("pretrain_tiny_base", ROOT / "tools" / "pretrain_tiny_base.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_noise_chooses_the_moved_target_for_the_asked_share_of_noises():
    script = pretrain_script()
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 64, 48, generator=generator)
    chosen = script.performed_choice(noise, 0.35)
    assert abs(float(chosen.float().mean()) - 0.35) < 0.015  # 3.5 standard errors of 20000 draws
    # one decision per image, from the whole noise: flipping the sign of the first channel flips it
    flipped = noise.clone()
    flipped[:, :, 0] *= -1
    both = chosen & script.performed_choice(flipped, 0.35)
    assert not bool(both.any())


def test_the_pretraining_script_is_reproducible(tmp_path):
    script = pretrain_script()
    steps = ["--samples", "6", "--copy-steps", "2", "--mixture-steps", "2", "--choice-steps", "2",
             "--settle-steps", "2", "--batch", "4", "--threads", "1"]
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert script.main(steps + ["--out", str(first)]) == 0
    assert script.main(steps + ["--out", str(second)]) == 0
    with safe_open(str(first), framework="pt") as a, safe_open(str(second), framework="pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
        assert a.metadata()["made_by"] == "tools/pretrain_tiny_base.py"
        assert {key.split(".")[0] for key in a.keys()} == {"transformer", "text_encoder", "text_encoder_2"}


def test_the_tiny_preset_loads_the_shipped_base_with_its_text_encoders():
    config = load_config("tiny")
    file = resolve_base_weights(config.base_weights)
    assert file.parent == ROOT / "motionnft" / "configs" and file.stat().st_size < 10_000_000
    model = build_from_config(config)
    with safe_open(str(file), framework="pt") as stored:
        weight = stored.get_tensor("transformer.x_embedder.weight")
        text = stored.get_tensor("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.weight")
    assert torch.equal(model.transformer.x_embedder.weight, weight)
    assert torch.equal(model.text_pipeline.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight, text)
