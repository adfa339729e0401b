"""Does MotionNFT raise the motion reward? A small model, pre-trained, then MotionNFT-trained.

    python bench/learning_experiment.py [--pretrain-steps 400] [--nft-steps 24] [--write docs/learning.md]

1. **Pre-training.** The tiny FLUX.1 Kontext of the ``tiny`` preset (real diffusers
   classes, random init) learns the built-in synthetic motion task (figures that raise or
   lower an arm or step left/right, as the instruction says) by plain flow matching:
   ``t ~ U(0, 1)``, ``x_t = (1 − t)·x0 + t·ε``, MSE to ``v = ε − x0``, full fine-tuning.
   A share of its pairs (``--partial-share``) under-move: their target shows only
   ``--partial-scale`` of the instructed motion, so the pre-trained model under-moves too.
2. **Held-out MAS before.** On held-out scenes (backgrounds and textures never trained
   on, full-motion ground truth), K rollouts per prompt with fixed noise, the DPM2 sampler.
3. **MotionNFT.** The trainer (``motionnft.train``) adds a LoRA to the pre-trained model
   and trains it with the motion reward only, against full-motion ground truth of the
   training scenes. **Control:** the same run (same prompts, rollouts and noise draws)
   with each prompt group's rewards randomly permuted, so the reward carries no
   information about which rollout moved as instructed.
4. **Held-out MAS after** with each run's EMA LoRA, same noise; per-prompt paired
   differences with their standard error.

Runs anywhere; the defaults fit a 2-core CPU in well under an hour. ``--device cuda``
scales the same experiment up (``--size``, ``--pretrain-steps``, ...). ``--write``
replaces the ``learning-experiment`` section of a Markdown file and writes the curve.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402
from motionnft.data import DatasetWriter  # noqa: E402
from motionnft.image import save_image  # noqa: E402
from motionnft.models import build_model  # noqa: E402
from motionnft.plot import render_curves  # noqa: E402
from motionnft.reward import motion_reward  # noqa: E402
from motionnft.sampling import sample  # noqa: E402
from motionnft.synthetic import motion_edit_dataset  # noqa: E402
from motionnft.train import Trainer, derived_generator, load_config  # noqa: E402


def pretrain(model, dataset, size, steps: int, batch: int, lr: float, seed: int, log_every: int = 25) -> list:
    """Plain flow matching of the whole transformer; returns [(step, loss)].

    AdamW at a constant ``lr`` after a linear warm-up over the first 5 % of the steps.
    """
    device = model.device
    conditions = [model.encode_condition(s.prompt, s.input_image(), size) for s in dataset]
    targets = torch.cat([model.encode_images(s.target_image()) for s in dataset])
    transformer = model.transformer
    transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    generator = torch.Generator().manual_seed(seed)
    history, running = [], []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(len(dataset), (batch,), generator=generator)
        x0 = targets[index].to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.rand(batch, generator=generator).to(device)
        condition = type(conditions[0]).cat([conditions[i] for i in index.tolist()])
        x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
        loss = (model.velocity(x_t, t, condition) - (noise - x0)).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running.append(float(loss.detach()))
        if step % log_every == 0 or step == steps:
            history.append((step, sum(running) / len(running)))
            print(f"pretrain step {step}/{steps}: loss {history[-1][1]:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
            running = []
    transformer.eval().requires_grad_(False)
    return history


@torch.no_grad()
def x0_error(model, dataset, size, t: float, seed: int) -> tuple[float, float]:
    """Mean squared x0-prediction error at flow time ``t`` on ``dataset`` (latent units), and
    that of copying the input image: whether the model reproduces the scene at all."""
    errors, copies = [], []
    for index, item in enumerate(dataset):
        condition = model.encode_condition(item.prompt, item.input_image(), size)
        x0 = model.encode_images(item.target_image())
        noise = model.noise(1, size, derived_generator(seed, "x0-error", index)).to(model.device)
        x_t = (1 - t) * x0 + t * noise
        prediction = x_t - t * model.velocity(x_t, torch.full((1,), t, device=model.device), condition)
        errors.append(float((prediction - x0).pow(2).mean()))
        copies.append(float((condition.tensors["reference"].to(model.device) - x0).pow(2).mean()))
    return sum(errors) / len(errors), sum(copies) / len(copies)


@torch.no_grad()
def evaluate(model, dataset, size, rollouts: int, steps: int, seed: int, estimator) -> dict:
    """Per-prompt means over ``rollouts`` samples per held-out prompt (fixed noise): MAS, motion
    reward, and ``moved``, the share of rollouts nearer (pixel MSE) the ground truth than the input."""
    sigmas = model.sigmas(steps, size)
    mas, reward, continuous, moved, images = [], [], [], [], []
    for index, item in enumerate(dataset):
        input_image, target_image = item.input_image(), item.target_image()
        condition = model.encode_condition(item.prompt, input_image, size).repeat(rollouts)
        noise = model.noise(rollouts, size, derived_generator(seed, "eval", index)).to(model.device)
        x0 = sample(lambda x, t: model.velocity(x, t, condition), noise, sigmas, "dpm2")
        edits = model.decode_tokens(x0, size).cpu()
        result = motion_reward(input_image, edits, target_image, estimator=estimator)
        mas.append(float(result.mas.score.mean()))
        reward.append(float(result.reward.float().mean()))
        continuous.append(float(result.reward_continuous.float().mean()))
        to_target = (edits - target_image).pow(2).flatten(1).mean(1)
        to_input = (edits - input_image).pow(2).flatten(1).mean(1)
        moved.append(float((to_target < to_input).float().mean()))
        if index < 6:
            images.append(edits[:2])
    return {"mas": mas, "reward": reward, "reward_continuous": continuous, "moved": moved, "grid": images}


def mean_and_error(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n)."""
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, (variance / n) ** 0.5


def summary(before: dict, after: dict) -> dict:
    """Means of ``after`` and paired per-prompt changes from ``before``, each ± standard error."""
    out = {}
    for key in ("mas", "reward", "reward_continuous", "moved"):
        out[key] = mean_and_error(after[key])
        out[key + "_change"] = mean_and_error([a - b for a, b in zip(after[key], before[key])])
    return out


def grid(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)


class ShuffledRewardTrainer(Trainer):
    """The control: each prompt group's rewards randomly permuted before the NFT update.

    Rewards keep their values, spread and group statistics, but no longer say which
    rollout earned them; the logged motion reward / MAS stay the true ones.
    """

    def rewards(self, entry, images, prompt):
        rows = super().rewards(entry, images, prompt)
        order = torch.randperm(rows["raw"].shape[0], generator=derived_generator(self.config.seed, "control", self.step,
                                                                                  prompt, float(rows["raw"].sum())))
        return rows | {"raw": rows["raw"][order]}


def nft_run(trainer_class, config, heldout, size, args):
    """MotionNFT from the pre-trained weights; returns (trainer result, held-out after, seconds)."""
    trainer = trainer_class(config, show_progress=False)
    began = time.perf_counter()
    result = trainer.run(resume=None)
    seconds = time.perf_counter() - began
    with torch.no_grad():
        for target, source in zip(trainer.policies.policy_tensors(), trainer.ema):
            target.copy_(source)
    trainer.policies.use("policy")
    after = evaluate(trainer.model, heldout, size, args.eval_rollouts, config.sampling_steps, args.seed,
                     trainer.estimator)
    return trainer, result, after, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train-samples", type=int, default=256)
    parser.add_argument("--train-scenes", type=int, default=8)
    parser.add_argument("--partial-share", type=float, default=0.5,
                        help="share of pre-training pairs whose target under-moves")
    parser.add_argument("--partial-scale", type=float, default=0.0,
                        help="share of the instructed motion those targets show (0: none)")
    parser.add_argument("--heldout-samples", type=int, default=48)
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--nft-steps", type=int, default=24)
    parser.add_argument("--nft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainer settings for both MotionNFT runs")
    parser.add_argument("--no-control", action="store_true", help="skip the shuffled-reward control run")
    parser.add_argument("--eval-rollouts", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("learning-experiment"))
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose section is replaced")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    size = (args.size, args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    # 1. pre-training on pairs of which a share under-move
    model = build_model("tiny_flux_kontext", tiny_size="demo", dtype=torch.float32, seed=args.seed)
    model.to(args.device)
    train_set = motion_edit_dataset(args.train_samples, args.size, seed=args.seed, scenes=args.train_scenes,
                                    partial_share=args.partial_share, partial_scale=args.partial_scale)
    # held-out: scenes 1000… (backgrounds and textures never trained on), full motion
    heldout = motion_edit_dataset(args.heldout_samples, args.size, seed=args.seed + 1000, scenes=1000,
                                  first_scene=1000)
    base_file = args.work / "pretrained_transformer.safetensors"
    history = pretrain(model, train_set, size, args.pretrain_steps, args.pretrain_batch, args.pretrain_lr, args.seed)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.transformer.state_dict().items()}, str(base_file))
    x0_err = x0_error(model, heldout, size, 0.9, args.seed)
    pretrain_s = time.perf_counter() - began
    print(f"pre-trained in {pretrain_s / 60:.1f} min; held-out x0 error at t=0.9: {x0_err[0]:.4f} "
          f"(copying the input: {x0_err[1]:.4f})", flush=True)
    del model

    # MotionNFT data: the training scenes, full-motion ground truth (a fresh draw)
    nft_data = args.work / "nft-data"
    if nft_data.exists():
        import shutil

        shutil.rmtree(nft_data)
    with DatasetWriter(nft_data) as writer:
        for item in motion_edit_dataset(args.train_samples, args.size, seed=args.seed + 1, scenes=args.train_scenes):
            writer.add(item.id, item.prompt, item.input_image(), item.target_image(), category=item.category)

    def config_for(name: str):
        overrides = {"output_dir": str(args.work / name), "base_weights": str(base_file), "max_steps": args.nft_steps,
                     "data": str(nft_data), "resolution": args.size, "seed": args.seed,
                     "save_every": args.nft_steps, "sample_grid_every": 0,
                     "prompts_per_epoch": 6, "rollouts_per_prompt": 8, "rollout_batch_size": 8}
        return load_config("tiny", overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()] + args.nft_set)

    # 2. held-out before: the pre-trained model (a fresh LoRA is zero)
    config = config_for("nft")
    probe = Trainer(config, show_progress=False)
    probe.policies.use("policy")
    before = evaluate(probe.model, heldout, size, args.eval_rollouts, config.sampling_steps, args.seed, probe.estimator)
    print(f"held-out before MotionNFT: MAS {mean_and_error(before['mas'])[0]:.2f}, "
          f"reward {mean_and_error(before['reward'])[0]:.3f}", flush=True)
    del probe

    # 3.-4. MotionNFT with the motion reward, and the shuffled-reward control
    runs = {}
    for name, trainer_class in (("nft", Trainer), ("control", ShuffledRewardTrainer)):
        if name == "control" and args.no_control:
            continue
        _, result, after, seconds = nft_run(trainer_class, config_for(name), heldout, size, args)
        runs[name] = {"result": result, "after": after, "seconds": seconds}
        stats = summary(before, after)
        print(f"held-out after {name} ({result.step} steps, {seconds / 60:.1f} min): MAS {stats['mas'][0]:.2f} "
              f"(change {stats['mas_change'][0]:+.2f} ± {stats['mas_change'][1]:.2f}), "
              f"reward {stats['reward'][0]:.3f} "
              f"(change {stats['reward_change'][0]:+.3f} ± {stats['reward_change'][1]:.3f})", flush=True)

    images = Path("docs/images") if args.write else args.work
    labels = {"nft": "MotionNFT", "control": "control (shuffled rewards)"}
    curves = {}
    for name, run in runs.items():
        metrics = run["result"].metrics
        curves[f"{labels[name]}: train motion reward"] = [(float(r["step"]), float(r["motion_reward_mean"]))
                                                         for r in metrics]
        curves[f"{labels[name]}: train MAS / 100"] = [(float(r["step"]), float(r["mas_mean"]) / 100) for r in metrics]
        curves[f"{labels[name]}: held-out MAS / 100"] = [
            (0.0, mean_and_error(before["mas"])[0] / 100),
            (float(run["result"].step), mean_and_error(run["after"]["mas"])[0] / 100)]
    curve = render_curves(curves, title="MotionNFT on a pre-trained, under-moving tiny FLUX.1 Kontext (synthetic, CPU)",
                          x_label="MotionNFT optimiser step", y_range=(0.0, 1.0))
    save_image(curve, images / "learning_curve.png")
    rows = []
    for index, item in enumerate(heldout[:len(before["grid"])]):
        row = [item.input_image(), item.target_image(), before["grid"][index]]
        row += [run["after"]["grid"][index] for run in runs.values()]
        rows.append(torch.cat(row, dim=0))
    save_image(grid(rows), images / "learning_samples.png")
    numbers = {"before": {k: mean_and_error(v) for k, v in before.items() if k != "grid"},
               "runs": {name: {"summary": summary(before, run["after"]), "seconds": run["seconds"],
                               "steps": run["result"].step, "metrics": run["result"].metrics}
                        for name, run in runs.items()},
               "per_prompt": {"before": {k: v for k, v in before.items() if k != "grid"},
                              **{name: {k: v for k, v in run["after"].items() if k != "grid"}
                                 for name, run in runs.items()}},
               "x0_error_t0.9": x0_err, "pretrain_loss": history, "pretrain_s": pretrain_s,
               "total_s": time.perf_counter() - began,
               "config": vars(args) | {"work": str(args.work), "write": str(args.write)}}
    (args.work / "result.json").write_text(json.dumps(numbers, indent=2, default=str))
    command = "python bench/learning_experiment.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    section = markdown(numbers, command, config)
    print(section)
    if args.write:
        write_section(args.write, "learning-experiment", section, "Does MotionNFT learn?")
        print(f"wrote {args.write}, {images / 'learning_curve.png'}, {images / 'learning_samples.png'}")
    return 0


def markdown(numbers: dict, command: str, config) -> str:
    cfg = numbers["config"]
    before = numbers["before"]
    n = cfg["heldout_samples"]
    rows = [f"| pre-trained (before) | {before['mas'][0]:.2f} ± {before['mas'][1]:.2f} | | "
            f"{before['reward'][0]:.3f} ± {before['reward'][1]:.3f} | | "
            f"{before['reward_continuous'][0]:.4f} | | {before['moved'][0]:.3f} | |"]
    labels = {"nft": "after MotionNFT (motion reward)", "control": "after control (shuffled rewards)"}
    for name, run in numbers["runs"].items():
        s = run["summary"]
        rows.append(f"| {labels[name]} | {s['mas'][0]:.2f} ± {s['mas'][1]:.2f} | "
                    f"{s['mas_change'][0]:+.2f} ± {s['mas_change'][1]:.2f} | "
                    f"{s['reward'][0]:.3f} ± {s['reward'][1]:.3f} | "
                    f"{s['reward_change'][0]:+.3f} ± {s['reward_change'][1]:.3f} | "
                    f"{s['reward_continuous'][0]:.4f} | {s['reward_continuous_change'][0]:+.4f} ± "
                    f"{s['reward_continuous_change'][1]:.4f} | {s['moved'][0]:.3f} | "
                    f"{s['moved_change'][0]:+.3f} ± {s['moved_change'][1]:.3f} |")
    nft_minutes = sum(run["seconds"] for run in numbers["runs"].values()) / 60
    columns = " + ".join(["input", "ground truth", "2 rollouts before"]
                         + [f"2 after {'MotionNFT' if k == 'nft' else 'the control'}" for k in numbers["runs"]])
    return "\n".join([
        "<!-- learning-experiment:start -->",
        "## CPU-scale run: an under-moving pre-trained tiny Kontext, MotionNFT and a control",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {cfg['device']}; "
        f"{numbers['total_s'] / 60:.1f} min in all. Model: the `tiny` preset's FLUX.1 Kontext (2+2 blocks, width 256, "
        f"exact 4×4 pixel-patch codec), {cfg['size']}² images. Pre-training: {cfg['pretrain_steps']} flow-matching "
        f"steps of batch {cfg['pretrain_batch']} (lr {cfg['pretrain_lr']:g}) on {cfg['train_samples']} synthetic pairs "
        f"over {cfg['train_scenes']} scenes, of which a share {cfg['partial_share']:g} show only "
        f"{cfg['partial_scale']:g} of the instructed motion ({numbers['pretrain_s'] / 60:.1f} min, final loss "
        f"{numbers['pretrain_loss'][-1][1]:.4f}; held-out x0-prediction error at t = 0.9: "
        f"{numbers['x0_error_t0.9'][0]:.4f}, against {numbers['x0_error_t0.9'][1]:.4f} for copying the input). "
        f"MotionNFT: {config.max_steps} optimiser steps per run ({nft_minutes:.1f} min for all runs), "
        f"{config.prompts_per_epoch} prompts × {config.rollouts_per_prompt} rollouts of the training scenes with "
        f"full-motion ground truth, {config.sampler} {config.sampling_steps} steps, LoRA r={config.lora_rank}, "
        f"lr {config.learning_rate:g}, motion reward only (flow: {config.flow_backend} "
        f"{config.flow_preset or 'default'}). Control: the same run with each prompt group's rewards randomly "
        f"permuted. Held-out: {n} prompts on unseen scenes × {cfg['eval_rollouts']} rollouts, the same noise for "
        f"every model; ± is the standard error over the {n} prompts (changes: paired per prompt). *Moved*: the "
        f"share of rollouts nearer (pixel MSE) the ground truth than the input image.",
        "",
        "| held-out | MAS | MAS change | motion reward | reward change | continuous reward | continuous change "
        "| moved | moved change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "![training curve](images/learning_curve.png)",
        "",
        f"Rows: held-out prompts; columns: {columns} (same noise).",
        "",
        "![samples](images/learning_samples.png)",
        "<!-- learning-experiment:end -->",
    ])


if __name__ == "__main__":
    sys.exit(main())
