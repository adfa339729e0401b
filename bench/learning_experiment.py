"""Does MotionNFT raise the motion reward? A small model, pre-trained, then MotionNFT-trained.

    python bench/learning_experiment.py [--pretrain-steps 1500] [--nft-steps 30] [--write docs/learning.md]

1. **Pre-training.** The tiny FLUX.1 Kontext of the ``tiny`` preset (real diffusers
   classes, random init) learns the built-in synthetic motion task (figures that raise or
   lower an arm or step left/right, as the instruction says) by plain flow matching:
   ``t ~ U(0, 1)``, ``x_t = (1 − t)·x0 + t·ε``, MSE to ``v = ε − x0``, full fine-tuning.
2. **Held-out MAS before.** On held-out scenes (other seeds), K rollouts per prompt with
   fixed noise, the DPM2 sampler: mean MAS and motion reward.
3. **MotionNFT.** The trainer (``motionnft.train``) adds a LoRA to the pre-trained model
   and trains it with the motion reward only.
4. **Held-out MAS after** with the EMA LoRA, same noise.

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
from motionnft.image import save_image  # noqa: E402
from motionnft.models import build_model  # noqa: E402
from motionnft.plot import render_curves  # noqa: E402
from motionnft.reward import motion_reward  # noqa: E402
from motionnft.sampling import sample  # noqa: E402
from motionnft.synthetic import motion_edit_dataset  # noqa: E402
from motionnft.train import Trainer, derived_generator, load_config  # noqa: E402


def pretrain(model, dataset, size, steps: int, batch: int, lr: float, seed: int, log_every: int = 25) -> list:
    """Plain flow matching of the whole transformer; returns [(step, loss)]."""
    device = model.device
    conditions = [model.encode_condition(s.prompt, s.input_image(), size) for s in dataset]
    targets = torch.cat([model.encode_images(s.target_image()) for s in dataset])
    transformer = model.transformer
    transformer.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
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
def evaluate(model, dataset, size, rollouts: int, steps: int, seed: int, estimator, velocity=None) -> dict:
    """Mean MAS / motion reward of ``rollouts`` samples per held-out prompt (fixed noise)."""
    sigmas = model.sigmas(steps, size)
    mas, reward, continuous, images = [], [], [], []
    for index, item in enumerate(dataset):
        input_image, target_image = item.input_image(), item.target_image()
        condition = model.encode_condition(item.prompt, input_image, size).repeat(rollouts)
        noise = model.noise(rollouts, size, derived_generator(seed, "eval", index)).to(model.device)
        x0 = sample(lambda x, t: model.velocity(x, t, condition), noise, sigmas, "dpm2")
        edits = model.decode_tokens(x0, size).cpu()
        result = motion_reward(input_image, edits, target_image, estimator=estimator)
        mas += result.mas.score.tolist()
        reward += result.reward.tolist()
        continuous += result.reward_continuous.tolist()
        if index < 6:
            images.append(torch.cat([input_image, target_image, edits[:3]], dim=0))
    return {"mas": sum(mas) / len(mas), "reward": sum(reward) / len(reward),
            "reward_continuous": sum(continuous) / len(continuous), "grid": images}


def grid(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train-samples", type=int, default=512)
    parser.add_argument("--heldout-samples", type=int, default=32)
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--nft-steps", type=int, default=30)
    parser.add_argument("--nft-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra trainer settings for the MotionNFT phase")
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

    # 1. pre-training
    model = build_model("tiny_flux_kontext", tiny_size="demo", dtype=torch.float32, seed=args.seed)
    model.to(args.device)
    train_set = motion_edit_dataset(args.train_samples, args.size, seed=args.seed)
    heldout = motion_edit_dataset(args.heldout_samples, args.size, seed=args.seed + 1000, scenes=1000)
    base_file = args.work / "pretrained_transformer.safetensors"
    history = pretrain(model, train_set, size, args.pretrain_steps, args.pretrain_batch, args.pretrain_lr, args.seed)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.transformer.state_dict().items()}, str(base_file))
    pretrain_s = time.perf_counter() - began

    # 2.-4. MotionNFT on the pre-trained model, held-out MAS before and after
    overrides = {"output_dir": str(args.work / "nft"), "base_weights": str(base_file), "max_steps": args.nft_steps,
                 "synthetic_samples": args.train_samples, "resolution": args.size, "seed": args.seed,
                 "save_every": 10, "sample_grid_every": 10}
    config = load_config("tiny", overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()] + args.nft_set)
    trainer = Trainer(config, show_progress=False)
    model = trainer.model
    trainer.policies.use("policy")  # a fresh LoRA is zero: the policy is the pre-trained model
    before = evaluate(model, heldout, size, args.eval_rollouts, config.sampling_steps, args.seed, trainer.estimator)
    print(f"held-out before MotionNFT: MAS {before['mas']:.2f}, reward {before['reward']:.3f}", flush=True)
    nft_began = time.perf_counter()
    result = trainer.run(resume=None)
    nft_s = time.perf_counter() - nft_began
    with torch.no_grad():
        for target, source in zip(trainer.policies.policy_tensors(), trainer.ema):
            target.copy_(source)
    trainer.policies.use("old")
    trainer.policies.use("policy")
    after = evaluate(model, heldout, size, args.eval_rollouts, config.sampling_steps, args.seed, trainer.estimator)
    print(f"held-out after MotionNFT ({result.step} steps): MAS {after['mas']:.2f}, reward {after['reward']:.3f}")

    images = Path("docs/images") if args.write else args.work
    curve = render_curves(
        {"train: motion reward (mean of rollouts)": [(float(r["step"]), float(r["motion_reward_mean"])) for r in result.metrics],
         "train: continuous motion reward": [(float(r["step"]), float(r["motion_reward_continuous_mean"])) for r in result.metrics],
         "train: MAS / 100": [(float(r["step"]), float(r["mas_mean"]) / 100) for r in result.metrics],
         "held-out MAS / 100 (before, after)": [(0.0, before["mas"] / 100), (float(result.step), after["mas"] / 100)]},
        title="MotionNFT on a pre-trained tiny FLUX.1 Kontext (synthetic motion task, CPU)",
        x_label="MotionNFT optimiser step", y_range=(0.0, 1.0))
    save_image(curve, images / "learning_curve.png")
    save_image(grid([torch.cat([b, a[2:]], dim=0) for b, a in zip(before["grid"], after["grid"])]),
               images / "learning_samples.png")
    numbers = {"before": {k: v for k, v in before.items() if k != "grid"},
               "after": {k: v for k, v in after.items() if k != "grid"},
               "pretrain_loss": history, "pretrain_s": pretrain_s, "nft_s": nft_s, "nft_steps": result.step,
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
    before, after = numbers["before"], numbers["after"]
    cfg = numbers["config"]
    return "\n".join([
        "<!-- learning-experiment:start -->",
        "## CPU-scale run: pre-trained tiny Kontext, then MotionNFT",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {cfg['device']}. "
        f"Model: the `tiny` preset's FLUX.1 Kontext (2+2 blocks, width 128, exact 4×4 pixel-patch codec), "
        f"{cfg['size']}² images. Pre-training: {cfg['pretrain_steps']} flow-matching steps of batch "
        f"{cfg['pretrain_batch']} on {cfg['train_samples']} synthetic pairs ({numbers['pretrain_s'] / 60:.1f} min, "
        f"final loss {numbers['pretrain_loss'][-1][1]:.4f}). MotionNFT: {numbers['nft_steps']} optimiser steps "
        f"({numbers['nft_s'] / 60:.1f} min), {config.prompts_per_epoch} prompts × {config.rollouts_per_prompt} "
        f"rollouts, {config.sampler} {config.sampling_steps} steps, LoRA r={config.lora_rank}, lr {config.learning_rate:g}, "
        f"motion reward only (flow: {config.flow_backend} {config.flow_preset or 'default'}). Held-out: "
        f"{cfg['heldout_samples']} prompts on unseen scenes × {cfg['eval_rollouts']} rollouts, same noise before and after.",
        "",
        "| held-out | MAS | motion reward (quantised) | motion reward (continuous) |",
        "|---|---:|---:|---:|",
        f"| before MotionNFT | {before['mas']:.2f} | {before['reward']:.3f} | {before['reward_continuous']:.4f} |",
        f"| after MotionNFT | {after['mas']:.2f} | {after['reward']:.3f} | {after['reward_continuous']:.4f} |",
        f"| change | {after['mas'] - before['mas']:+.2f} | {after['reward'] - before['reward']:+.3f} | "
        f"{after['reward_continuous'] - before['reward_continuous']:+.4f} |",
        "",
        "![training curve](images/learning_curve.png)",
        "",
        "Rows: input, ground truth, three rollouts before, three after (same noise).",
        "",
        "![samples](images/learning_samples.png)",
        "<!-- learning-experiment:end -->",
    ])


if __name__ == "__main__":
    sys.exit(main())
