"""The MotionNFT trainer: a short run, exact resume (also after Ctrl-C), judge rewards, config."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from motionnft.lora import load_lora  # noqa: E402
from motionnft.train import (CONFIG_FILE, PRESETS, PromptCursor, TrainConfig, load_config,  # noqa: E402
                             parse_override, train)
from motionnft.training.presets import load_settings, toml_module  # noqa: E402

# A run of a few seconds: the smallest tiny Kontext (random weights, not the preset's pre-trained
# base), 2 prompts × 4 rollouts, 3 sampler steps, no held-out measurement unless a test asks.
# The group filter is relaxed so that every step trains something on this untrained model.
FAST = {"tiny_size": "test", "tiny_codec": "patch", "base_weights": "", "heldout_data": "", "synthetic_samples": 6, "prompts_per_epoch": 2, "rollouts_per_prompt": 4,
        "sampling_steps": 3, "save_every": 2, "group_std_min": 0.0, "group_mean_max": 1.01,
        "sample_grid_every": 2}


def fast_config(tmp_path, name: str, **overrides) -> TrainConfig:
    return load_config("tiny", overrides={**FAST, "output_dir": str(tmp_path / name), **overrides})


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_short_run_writes_a_loadable_lora_metrics_curve_and_checkpoints(tmp_path):
    result = train(fast_config(tmp_path, "run", max_steps=2), resume=None, show_progress=False)
    out = tmp_path / "run"
    assert result.step == 2 and not result.interrupted
    lora = load_lora(out / "motionnft_lora.safetensors")
    assert lora.base == "flux" and lora.metadata["motionnft.step"] == "2"
    assert lora.metadata["motionnft.weights"] == "ema"
    assert all(m.rank == 8 and m.alpha == 16.0 for m in lora.modules.values())
    assert any(name.endswith("attn.to_q") for name in lora.modules)
    assert any(name.endswith("attn.add_k_proj") for name in lora.modules)
    with safe_open(str(out / "motionnft_lora.safetensors"), framework="pt") as handle:
        assert all(key.startswith("transformer.") for key in handle.keys())
    rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    for key in ("reward_mean", "mas_mean", "loss", "kl", "rollout_s", "reward_s", "loss_s", "trained_prompts"):
        assert rows[0][key] != ""
    assert 0.0 <= float(rows[0]["reward_mean"]) <= 1.0
    assert (out / "reward_curve.png").is_file() and (out / "samples" / "step-000002.png").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert (out / "config.toml").is_file()


def test_resuming_reproduces_an_uninterrupted_run_bitwise(tmp_path):
    whole = train(fast_config(tmp_path, "whole", max_steps=3, kl_weight=0.01), resume=None, show_progress=False)
    train(fast_config(tmp_path, "split", max_steps=1, kl_weight=0.01), resume=None, show_progress=False)
    split = train(fast_config(tmp_path, "split", max_steps=3, kl_weight=0.01), resume="auto", show_progress=False)
    assert split.step == 3
    a = load_file(tmp_path / "whole" / "motionnft_lora.safetensors")
    b = load_file(tmp_path / "split" / "motionnft_lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(tmp_path / "whole/checkpoints/step-000003/trainer_state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "split/checkpoints/step-000003/trainer_state.pt", weights_only=True)
    for key in ("policy", "old", "ema"):
        assert all(torch.equal(x, y) for x, y in zip(state_a[key], state_b[key])), key
    assert state_a["cursor"] == state_b["cursor"]
    assert [r["loss"] for r in whole.metrics] == [r["loss"] for r in split.metrics]
    kl = [float(r["kl"]) for r in whole.metrics[1:] if r["kl"] != "nan"]
    assert kl and max(kl) > 0  # the policy has left the base model: the KL term is live


def test_the_ema_steps_with_the_decay_of_the_step_just_completed(tmp_path):
    # the release: global_step += 1, then ema.step(params, global_step), decay min((1+s)/(10+s), 0.9)
    from motionnft.train import Trainer

    trainer = Trainer(fast_config(tmp_path, "ema"), show_progress=False)
    for step in (1, 2):
        before = [e.clone() for e in trainer.ema]
        row = trainer.train_step()
        decay = (1 + step) / (10 + step)  # 2/11 after the first optimiser step, 3/12 after the second
        assert row["step"] == step and row["ema_decay"] == pytest.approx(decay)
        for ema, old, theta in zip(trainer.ema, before, trainer.policies.policy_tensors()):
            assert torch.allclose(ema, decay * old + (1 - decay) * theta.detach().float(), atol=1e-7)


def loss_gradient(trainer, items, global_count, batches, global_batches):
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.loss_phase(items, global_count, batches, None, global_batches)
    return torch.cat([p.grad.flatten() for p in trainer.policies.policy_tensors() if p.grad is not None])


def test_loss_average_weighs_micro_batches_or_sample_timesteps(tmp_path):
    # train_batch_size 2, three sample-timesteps: micro-batches [a, b] and [c]
    from motionnft.train import Trainer

    trainer = Trainer(fast_config(tmp_path, "average", train_batch_size=2, loss_average="all"), show_progress=False)
    entry, model = trainer.prompt(0), trainer.model
    generator = torch.Generator().manual_seed(0)
    x0, noise = model.noise(3, trainer.size, generator), model.noise(3, trainer.size, generator)
    times = [float(trainer.sigmas[k]) for k in (0, 1, 2)]
    items = [(x0[i], times[i], r, entry.condition, noise[i]) for i, r in enumerate((0.9, 0.2, 0.7))]
    alone = [loss_gradient(trainer, [item], 1, 1, 1) for item in items]  # each term's own gradient
    assert all(g.abs().sum() > 0 for g in alone)

    every_term = loss_gradient(trainer, items, 3, 2, 2)
    assert torch.allclose(every_term, (alone[0] + alone[1] + alone[2]) / 3, rtol=1e-4, atol=1e-9)

    trainer.config.loss_average = "micro_batch"  # the release: mean per micro-batch, micro-batches equal
    per_batch = loss_gradient(trainer, items, 3, 2, 2)
    assert torch.allclose(per_batch, ((alone[0] + alone[1]) / 2 + alone[2]) / 2, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(per_batch, every_term, rtol=1e-3)
    # a padding batch (processes with fewer micro-batches run them so DDP lines up) adds nothing
    assert torch.equal(loss_gradient(trainer, items, 3, 3, 2), per_batch)


class RunsCode:
    """Unpickling this calls ``open(path, "w")``: a stand-in for the code a crafted pickle could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_that_would_run_code_when_unpickled_is_refused_naming_the_file(tmp_path):
    train(fast_config(tmp_path, "shared", max_steps=1), resume=None, show_progress=False)
    state_file = tmp_path / "shared" / "checkpoints" / "step-000001" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)  # what we write: tensors and plain containers only
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    marker = tmp_path / "code-ran"
    state["cursor"] = RunsCode(marker)  # someone shares a doctored checkpoint
    torch.save(state, state_file)
    with pytest.raises(ValueError, match="refusing to load") as error:
        train(fast_config(tmp_path, "shared", max_steps=2), resume="auto", show_progress=False)
    assert str(state_file) in str(error.value)
    assert not marker.exists()


class CountingJudge:
    """A judge that scores by the edit's brightness; can raise Ctrl-C on a given call."""

    def __init__(self, interrupt_on_call: int | None = None):
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call

    def rate_training_reward(self, input_image, edited_image, instruction):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        assert input_image.shape[0] == 1 and edited_image.shape[0] == 1 and instruction
        return float(edited_image.mean())


def test_with_a_judge_the_raw_reward_is_half_motion_half_judge(tmp_path):
    judge = CountingJudge()
    result = train(fast_config(tmp_path, "judge", max_steps=1), judge=judge, resume=None, show_progress=False)
    row = result.metrics[0]
    assert judge.calls == 2 * 4  # every rollout scored once
    expected = 0.5 * float(row["motion_reward_mean"]) + 0.5 * float(row["judge_mean"])
    assert float(row["reward_mean"]) == pytest.approx(expected, abs=1e-5)
    assert "judge 0.5" in load_lora(tmp_path / "judge" / "motionnft_lora.safetensors").metadata["motionnft.reward"]


def test_ctrl_c_saves_the_last_completed_step_and_resume_continues_exactly(tmp_path):
    train(fast_config(tmp_path, "whole", max_steps=2), judge=CountingJudge(), resume=None, show_progress=False)
    # 8 judge calls per step: the 13th falls inside step 2's rewards
    stopped = train(fast_config(tmp_path, "cut", max_steps=2), judge=CountingJudge(interrupt_on_call=13),
                    resume=None, show_progress=False)
    assert stopped.interrupted and stopped.step == 1
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text().strip() == "step-000001"
    resumed = train(fast_config(tmp_path, "cut", max_steps=2), judge=CountingJudge(), resume="auto",
                    show_progress=False)
    assert resumed.step == 2
    a = load_file(tmp_path / "whole" / "motionnft_lora.safetensors")
    b = load_file(tmp_path / "cut" / "motionnft_lora.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["step"]) for r in read_csv(tmp_path / "cut" / "metrics.csv")] == [1, 2]


def test_a_folder_dataset_is_centre_cropped_to_the_training_size(tmp_path):
    from motionnft.data import DatasetWriter
    from motionnft.synthetic import motion_edit_dataset

    source = motion_edit_dataset(3, size=64, seed=3)
    with DatasetWriter(tmp_path / "ds") as writer:
        for sample in source:  # 64 x 96 images: the trainer crops the centre 64 x 64
            pad = lambda image: torch.cat([image[..., :16].flip(-1), image, image[..., -16:].flip(-1)], dim=-1)  # noqa: E731
            writer.add(sample.id, sample.prompt, pad(sample.input_image()), pad(sample.target_image()))
    result = train(fast_config(tmp_path, "folder", max_steps=1, data=str(tmp_path / "ds")), resume=None,
                   show_progress=False)
    assert result.step == 1
    assert float(result.metrics[0]["mas_mean"]) >= 0


def test_training_pairs_are_cropped_and_resized_with_lanczos_as_the_release_does(tmp_path):
    # reference latents and the ground-truth flow come from these pixels
    import numpy as np
    from PIL import Image

    from motionnft.data import DatasetWriter
    from motionnft.image import pil_to_tensor
    from motionnft.train import Trainer

    noise = np.random.default_rng(1).integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)
    with DatasetWriter(tmp_path / "ds") as writer:
        writer.add("a", "Raise the arm.", pil_to_tensor(Image.fromarray(noise[0])),
                   pil_to_tensor(Image.fromarray(noise[1])))
    trainer = Trainer(fast_config(tmp_path, "lanczos", data=str(tmp_path / "ds"), resolution=32, prompts_per_epoch=1),
                      show_progress=False)
    entry = trainer.prompt(0)
    for image, pixels in ((entry.input_image, noise[0]), (entry.target_image, noise[1])):
        release = Image.fromarray(pixels).crop((16, 0, 80, 64)).resize((32, 32), Image.Resampling.LANCZOS)
        assert float((image - pil_to_tensor(release)).abs().max()) < 1.5 / 255


def test_the_prompt_cursor_walks_passes_and_skips_retired_prompts():
    cursor = PromptCursor([f"s{i}" for i in range(5)], seed=0)
    first = cursor.take(5)
    assert sorted(first) == [0, 1, 2, 3, 4]  # one pass visits each prompt once
    cursor.retired = {"s0", "s1", "s2", "s3"}
    assert cursor.take(3) == [4, 4, 4]
    state = cursor.state()
    other = PromptCursor([f"s{i}" for i in range(5)], seed=0)
    other.load(state)
    assert other.take(2) == cursor.take(2)


def test_the_presets_file_holds_only_presets_of_known_settings_and_they_apply():
    shipped = toml_module().loads(CONFIG_FILE.read_text())
    assert set(shipped) == {"preset"}  # every default is TrainConfig's, declared nowhere else
    assert set(shipped["preset"]) == set(PRESETS)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, table in shipped["preset"].items():
        assert set(table) <= names, name
        assert all(getattr(load_config(name), key) == value for key, value in table.items()), name
    assert load_config("qwen").model == "qwen_image_edit_plus" and load_config("qwen").max_steps == 210
    assert load_config("kontext").rollouts_per_prompt == 8 and load_config("kontext").prompts_per_epoch == 24
    assert load_config(None) == TrainConfig()


def test_the_nft_constants_are_the_settings():
    from motionnft.nft import NFTConfig

    assert TrainConfig().nft() == NFTConfig()  # NFTConfig's defaults are the settings' defaults
    tuned = load_config("tiny", overrides={"beta": 0.5, "kl_weight": 0.0, "ema_max_decay": 0.8}).nft()
    assert (tuned.beta, tuned.kl_weight, tuned.ema_max_decay) == (0.5, 0.0, 0.8)
    assert tuned.group_mean_max == load_config("tiny").group_mean_max  # the preset's, not the default


def test_unknown_settings_and_presets_are_refused_with_the_valid_names(tmp_path):
    from re import escape

    with pytest.raises(ValueError, match=escape("unknown preset 'tinyy' (did you mean 'tiny'?): expected one of "
                                                "kontext, qwen, tiny")):
        load_config("tinyy")
    refusals = {
        "flat.toml": ("max_step = 3\n", "unknown setting 'max_step' (did you mean 'max_steps'?); the settings are: "),
        # a preset of the user's file is checked even when another preset is chosen
        "preset.toml": ("[preset.mine]\nlora_rnak = 4\n", "preset mine: unknown setting 'lora_rnak' (did you mean"),
        "typed.toml": ("[preset.mine]\nlora_rank = \"eight\"\n", "lora_rank = 'eight': expected an integer"),
    }
    for name, (text, message) in refusals.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=escape(message)) as error:
            load_config("tiny", tmp_path / name)
        assert "unknown" not in message or "max_steps, save_every" in str(error.value)  # the valid names are listed
    with pytest.raises(ValueError, match=escape("--set max_step=3: unknown setting 'max_step' (did you mean")):
        load_config("tiny", overrides=["max_step=3"])
    # a presets file holds presets only: a [defaults] table there would be a second source of defaults
    (tmp_path / "shipped.toml").write_text("[defaults]\nmax_steps = 3\n[preset.tiny]\nmax_steps = 2\n")
    with pytest.raises(ValueError, match=escape("only [preset.NAME] tables belong here")):
        load_settings(TrainConfig, tmp_path / "shipped.toml", "tiny")


def test_config_files_and_overrides(tmp_path):
    (tmp_path / "mine.toml").write_text('lora_rank = 4\nsampler = "euler"\n[preset.small]\nresolution = 32\n')
    config = load_config("small", tmp_path / "mine.toml", ["max_steps=7", "output_dir=some/where", "lora_targets=['to_q']"])
    assert (config.lora_rank, config.sampler, config.resolution, config.max_steps) == (4, "euler", 32, 7)
    assert config.output_dir == "some/where" and config.lora_targets == ["to_q"]
    assert parse_override("beta = 0.5") == ("beta", 0.5)
    with pytest.raises(ValueError, match="unknown setting"):
        load_config("tiny", overrides=["nope=1"])
    with pytest.raises(ValueError, match="max_steps expects an integer"):
        load_config("tiny", overrides=["max_steps='many'"])
    with pytest.raises(ValueError, match="sampler"):
        load_config("tiny", overrides=["sampler='heun'"])
    with pytest.raises(ValueError, match="judge"):
        load_config("tiny", overrides=["judge_weight=0.5"]).reward_weights(has_judge=False)


def test_set_values_are_read_as_the_type_of_their_setting():
    assert parse_override("model=tiny_flux_kontext") == ("model", "tiny_flux_kontext")  # a bare word
    assert parse_override("judge_url=http://127.0.0.1:8000/v1") == ("judge_url", "http://127.0.0.1:8000/v1")
    assert parse_override('output_dir="runs/a b"') == ("output_dir", "runs/a b")
    assert parse_override("beta=1") == ("beta", 1.0) and isinstance(parse_override("beta=1")[1], float)
    assert parse_override("lora_targets=['to_q', 'to_k']") == ("lora_targets", ["to_q", "to_k"])
    assert parse_override("gradient_checkpointing=false") == ("gradient_checkpointing", False)


@pytest.mark.parametrize(("text", "expected"), [
    ('model_path="/models/FLUX.1-Kontext-dev', "a string"),  # unterminated: not silently '"/models/...'
    ("flow_preset=[fast", "a string"),
    ("max_steps=1O", "an integer"),
    ("max_steps=true", "an integer"),
    ("beta=.5", "a number"),
    ("lora_targets=[to_q", "a list"),
    ("gradient_checkpointing=yes", "a boolean"),
])
def test_a_malformed_set_value_is_an_error_naming_the_setting_the_value_and_the_type(text, expected):
    key, value = text.split("=", 1)
    with pytest.raises(ValueError) as error:
        load_config("tiny", overrides=[text])
    message = str(error.value)
    assert f"{key} expects {expected}" in message and value in message


def test_the_cli_trains_the_tiny_preset(tmp_path, capsys):
    from motionnft.cli import main

    args = ["train", "--output-dir", str(tmp_path / "cli"), "--max-steps", "1"]
    for key, value in FAST.items():
        args += ["--set", f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"]
    assert main(args) == 0
    assert (tmp_path / "cli" / "motionnft_lora.safetensors").is_file()
    assert "done at step 1" in capsys.readouterr().out
    assert main(["train", "--set", "sampler='heun'"]) == 2


def test_the_cli_takes_a_preset_of_the_users_config_and_names_the_valid_ones(tmp_path, capsys):
    from motionnft.cli import main

    (tmp_path / "mine.toml").write_text("[preset.mine]\nmax_steps = 7\n")
    assert main(["train", "--preset", "mine", "--config", str(tmp_path / "mine.toml"), "--print-config"]) == 0
    assert "max_steps = 7" in capsys.readouterr().out
    assert main(["train", "--preset", "kontex", "--print-config"]) == 2
    assert "unknown preset 'kontex' (did you mean 'kontext'?): expected one of kontext, qwen, tiny" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["tiny_flux_kontext", "tiny_qwen_image_edit"])
def test_every_lora_parameter_receives_a_gradient(kind):
    # DDP stalls on trainable parameters without gradients (Qwen's last block discards
    # its text stream: those modules are excluded from the LoRA)
    from motionnft.models import build_model
    from motionnft.train import LoraPolicies

    model = build_model(kind, tiny_size="test", dtype=torch.float32)
    policies = LoraPolicies(model.transformer, 4, 4.0, list(model.lora_target_modules), model.lora_exclusions())
    with torch.no_grad():
        for param in policies.policy.values():
            param.normal_(std=0.1)
    condition = model.encode_condition("Raise the arm.", torch.rand(1, 3, 64, 64), (64, 64)).repeat(2)
    x = model.noise(2, (64, 64), torch.Generator().manual_seed(0))
    model.velocity(x, torch.tensor([0.5, 0.5]), condition).pow(2).mean().backward()
    silent = [name for name, p in policies.policy.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
    assert all(p.grad is None for p in policies.old.values())


def test_qwen_image_edit_plus_trains_and_saves_in_comfyui_layout(tmp_path):
    result = train(fast_config(tmp_path, "qwen", max_steps=1, model="tiny_qwen_image_edit_plus", lora_rank=4,
                               lora_alpha=4.0), resume=None, show_progress=False)
    assert result.step == 1
    lora = load_lora(tmp_path / "qwen" / "motionnft_lora.safetensors")
    assert lora.base == "qwen_image" and lora.metadata["motionnft.model_kind"] == "tiny_qwen_image_edit_plus"
    with safe_open(str(tmp_path / "qwen" / "motionnft_lora.safetensors"), framework="pt") as handle:
        assert all(key.startswith("diffusion_model.") for key in handle.keys())


def test_a_run_with_heldout_data_scores_the_same_noise_before_and_after(tmp_path):
    import json

    config = fast_config(tmp_path, "heldout", max_steps=2, heldout_data="synthetic", heldout_samples=3,
                         heldout_rollouts=2)
    result = train(config, resume=None, show_progress=False)
    out = tmp_path / "heldout"
    saved = json.loads((out / "heldout.json").read_text())
    before, after = saved["before"], saved["after"]
    assert before["step"] == 0 and after["step"] == 2
    assert before["ids"] == after["ids"] and len(before["ids"]) == 3
    for scores in (before, after):
        assert set(scores["scores"]) == {"reward", "reward_continuous", "mas", "performed"}
        assert all(len(row) == 2 for row in scores["scores"]["mas"])
    assert result.heldout_before.summary()["mas"][0] == pytest.approx(
        sum(sum(row) / 2 for row in before["scores"]["mas"]) / 3)
    assert (out / "samples" / "heldout.png").is_file() and (out / "samples" / "heldout-before.png").is_file()
    # the held-out prompts are scenes the run does not train on
    from motionnft.train import open_heldout_data, open_training_data

    trained = {s.extra["scene"] for s in open_training_data(config)}
    assert not trained & {s.extra["scene"] for s in open_heldout_data(config)}


def test_a_resumed_run_keeps_its_first_heldout_measurement(tmp_path):
    import json

    config = fast_config(tmp_path, "resume", max_steps=1, heldout_data="synthetic", heldout_samples=2,
                         heldout_rollouts=2)
    train(config, resume=None, show_progress=False)
    out = tmp_path / "resume"
    first = json.loads((out / "heldout.json").read_text())["before"]
    # tamper with the stored "before" so that a re-measurement would show
    saved = json.loads((out / "heldout.json").read_text())
    saved["before"]["scores"]["mas"] = [[-1.0, -1.0], [-1.0, -1.0]]
    (out / "heldout.json").write_text(json.dumps(saved))
    result = train(dataclasses.replace(config, max_steps=2), resume="auto", show_progress=False)
    assert result.heldout_before.scores["mas"].tolist() == [[-1.0, -1.0], [-1.0, -1.0]]
    assert result.heldout_before.ids == first["ids"] and result.heldout_after.step == 2


def test_the_checkpoint_store_refuses_to_keep_none():
    from motionnft.training.checkpoints import Checkpoints

    for keep in (0, -1, 1.5):
        with pytest.raises(ValueError, match=r"checkpoints to keep: expected an integer >= 1"):
            Checkpoints("run", keep)
    assert Checkpoints("run", 1).keep == 1


def test_a_checkpoints_latest_file_resolves_only_inside_its_run(tmp_path):
    from motionnft.training.checkpoints import Checkpoints

    store = Checkpoints(tmp_path / "run", 2)
    store.root.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("../../elsewhere", str(tmp_path / "elsewhere"), "step-1/../.."):
        (store.root / "latest").write_text(name + "\n")
        for resume in ("auto", tmp_path / "run"):
            with pytest.raises(ValueError, match=r"latest: checkpoint name .*cannot name a file"):
                store.find(resume)
    (store.root / "latest").write_text("step-000004\n")
    assert store.find("auto") == store.root / "step-000004"


def test_temporaries_left_by_a_killed_writer_are_removed_on_the_next_write(tmp_path):
    import os
    import subprocess
    import sys

    from motionnft.files import atomic_write, remove_stale_temporaries
    from motionnft.training.checkpoints import Checkpoints

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    live = str(os.getppid())
    store = Checkpoints(tmp_path / "run", 2)
    store.root.mkdir(parents=True)
    killed = {store.root / f".step.{dead}.000002.tmp": "dir", tmp_path / f".lora.safetensors.{dead}.x1y2.tmp": "file"}
    running = {store.root / f".step.{live}.000002.tmp": "dir", tmp_path / f".lora.safetensors.{live}.a1b2.tmp": "file"}
    for path, kind in {**killed, **running}.items():
        path.mkdir() if kind == "dir" else path.write_bytes(b"\0" * 64)
    (tmp_path / ".lora.safetensors.notapid.tmp").write_text("not ours")
    with atomic_write(tmp_path / "lora.safetensors") as handle:
        assert [p.name.split(".")[3] for p in tmp_path.glob(".lora.safetensors.*.tmp")].count(str(os.getpid())) == 1
        handle.write(b"x")
    remove_stale_temporaries(tmp_path, ".lora.safetensors.")  # what save_lora does before it writes
    store.save(1, {"step": 1})
    assert not any(path.exists() for path in killed)
    assert all(path.exists() for path in running) and (tmp_path / ".lora.safetensors.notapid.tmp").exists()
    assert (store.root / "step-000001").is_dir() and (tmp_path / "lora.safetensors").read_bytes() == b"x"


def test_a_config_file_that_is_not_toml_is_named_with_its_line(tmp_path):
    (tmp_path / "bad.toml").write_text("max_steps = 3\nlora_rank = = 4\n")
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML \(.*line 2"):
        load_config("tiny", tmp_path / "bad.toml")
