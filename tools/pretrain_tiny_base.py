"""Pre-train the tiny preset's base: a FLUX.1 Kontext at toy size that sometimes performs the motion.

    python tools/pretrain_tiny_base.py            # writes motionnft/configs/tiny_base.safetensors

Reproducible: everything is seeded (``--seed``); the same command with the same torch
gives the same file. Cost on 2 CPU cores (nothing else running): ~1.5 min to draw and
encode 3,000 pairs, then ~0.14 s per step, 22 minutes (1,315 s measured) for the default 9,100 steps.

The stages (each with a fresh AdamW, a warm-up and its own EMA of the weights, which is
what it hands on), all regressing the velocity ``noise − x0`` at timesteps drawn like the
sampler's (uniform, then shifted by 3):

1. **copy** (600 steps): the target is the input. A random transformer first learns to
   reproduce the reference image.
2. **mixture** (4,000): the target is the moved figure or the unmoved input, half and
   half, drawn independently of the noise. The model learns to draw moved figures, but
   its samples mix moved and unmoved fragments token by token: with independent noise,
   a 2 M-parameter model does not learn on a CPU budget to make one choice per image.
3. **choice** (3,000) and **settle** (1,500): the target is the moved figure for a share
   ``--performed`` of the noises and the input for the others, and which one is decided
   by the noise itself (a threshold on the mean of the first latent channel over all
   tokens; a *coupled* flow-matching objective, whose marginals are still the data's).
   A share of each batch is drawn at t ≥ 0.95, where the choice is made; the model
   picks the coupling up after ~1,000–2,500 steps. Its rollouts are then either a clean
   move or a clean copy, so a rollout group carries a clear reward signal.

The text encoders (seeded, random) are stored with the transformer, so the base does
not depend on how a transformers release initialises them.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from motionnft.models import Condition, build_model  # noqa: E402
from motionnft.models.configured import save_base_weights  # noqa: E402
from motionnft.synthetic import motion_edit_dataset  # noqa: E402

SIZE = 64
"""Training resolution of the tiny preset."""

TEXT_TOKENS = 16
"""T5 tokens of the tiny preset (its instructions are a few words, one token per byte)."""


def performed_choice(noise: torch.Tensor, share: float) -> torch.Tensor:
    """Which noises map to the moved target: ``(B,)`` bool, true for a ``share`` of standard normal noise.

    Args:
        noise: ``(B, L, C)`` packed latent noise.
        share: the probability of ``True`` for ``N(0, I)`` noise.
    """
    statistic = noise[:, :, 0].mean(1) * noise.shape[1] ** 0.5  # N(0, 1) under the prior
    return statistic > NormalDist().inv_cdf(1.0 - share)


def shifted_timesteps(count: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` timesteps in (0, 1), uniform then shifted as the sampler's schedule is."""
    t = torch.rand(count, generator=generator)
    return shift * t / (1 + (shift - 1) * t)


def encode_pool(model, dataset):
    """Conditions, input latents and target latents of every sample of ``dataset``."""
    from tqdm import tqdm

    conditions, inputs, targets, texts = [], [], [], {}
    for sample in tqdm(list(dataset), desc="encode", leave=False):
        image, target = sample.input_image(), sample.target_image()
        if sample.prompt not in texts:
            texts[sample.prompt] = model.encode_condition(sample.prompt, image, (SIZE, SIZE))
        text = texts[sample.prompt]
        reference = model.encode_images(image)
        conditions.append(Condition({**text.tensors, "reference": reference}, text.shared, text.pad))
        inputs.append(reference)
        targets.append(model.encode_images(target))
    return conditions, torch.cat(inputs), torch.cat(targets)


@dataclass(frozen=True)
class Stage:
    """One stage of pre-training (a fresh AdamW, warm-up and EMA each)."""

    name: str
    steps: int
    target: str  # "copy" | "mixture" (moved for a share, drawn independently) | "coupled" (chosen by the noise)
    lr: float
    cosine: bool
    ema: float
    near_one: float = 0.0  # share of the batch drawn at t in [0.95, 1], where the choice is made


def stages(args) -> list[Stage]:
    """The recipe. The coupled stages need a model that already draws moved figures; their
    ``near_one`` share trains the choice itself, which a 2 M-parameter model picks up only
    after ~1,000 steps."""
    return [
        Stage("copy", args.copy_steps, "copy", args.lr, True, 0.995),
        Stage("mixture", args.mixture_steps, "mixture", args.lr, True, 0.999),
        Stage("choice", args.choice_steps, "coupled", args.lr, False, 0.99, near_one=0.3),
        Stage("settle", args.settle_steps, "coupled", args.lr / 2, True, 0.995, near_one=0.2),
    ]


def train_stage(model, stage: Stage, conditions, inputs, targets, args, generator) -> None:
    """Flow-matching steps of ``stage``; leaves the stage's EMA in the transformer."""
    from tqdm import tqdm

    transformer = model.transformer
    ema = [p.detach().clone() for p in transformer.parameters()]
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=stage.lr, weight_decay=1e-4)
    warmup = max(1, stage.steps // 20)

    def rate(step):  # warm-up, then (cosine) down to a tenth
        decay = 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / max(stage.steps, 1)))) if stage.cosine else 1.0
        return min(1.0, (step + 1) / warmup) * decay

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    progress = tqdm(range(stage.steps), desc=stage.name)
    running = []
    for _ in progress:
        index = torch.randint(len(conditions), (args.batch,), generator=generator)
        noise = torch.randn(inputs[index].shape, generator=generator)
        if stage.target == "copy":
            moved = torch.zeros(args.batch, dtype=torch.bool)
        elif stage.target == "mixture":
            moved = torch.rand(args.batch, generator=generator) < 0.5
        else:
            moved = performed_choice(noise, args.performed)
        x0 = torch.where(moved.view(-1, 1, 1), targets[index], inputs[index])
        t = shifted_timesteps(args.batch, 3.0, generator)
        if stage.near_one:
            late = torch.rand(args.batch, generator=generator) < stage.near_one
            t = torch.where(late, 0.95 + 0.05 * torch.rand(args.batch, generator=generator), t)
        t = t.view(-1, 1, 1)
        condition = Condition.cat([conditions[i] for i in index.tolist()])
        prediction = model.velocity((1 - t) * x0 + t * noise, t.view(-1), condition)
        loss = (prediction - (noise - x0)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for parameter, average in zip(transformer.parameters(), ema):
                average.lerp_(parameter.detach(), 1 - stage.ema)
        running.append(loss.item())
        if len(running) == 50:
            progress.set_postfix(loss=f"{sum(running) / 50:.4f}")
            running = []
    with torch.no_grad():
        for parameter, average in zip(transformer.parameters(), ema):
            parameter.copy_(average)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "motionnft" / "configs" / "tiny_base.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=3000, help="training pairs (each its own scene)")
    parser.add_argument("--copy-steps", type=int, default=600)
    parser.add_argument("--mixture-steps", type=int, default=4000)
    parser.add_argument("--choice-steps", type=int, default=3000)
    parser.add_argument("--settle-steps", type=int, default=1500)
    parser.add_argument("--performed", type=float, default=0.35, help="share of noises mapped to the moved target")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = build_model("tiny_flux_kontext", tiny_size="base", tiny_codec="lowres", dtype=torch.float32,
                        seed=args.seed, max_sequence_length=TEXT_TOKENS)
    print(model.describe(), flush=True)
    started = time.time()
    dataset = motion_edit_dataset(args.samples, size=SIZE, seed=args.seed + 7_000_000)
    conditions, inputs, targets = encode_pool(model, dataset)
    print(f"{len(dataset)} pairs drawn and encoded in {time.time() - started:.0f} s", flush=True)

    transformer = model.transformer.train().requires_grad_(True)
    generator = torch.Generator().manual_seed(args.seed)
    for stage in stages(args):
        train_stage(model, stage, conditions, inputs, targets, args, generator)
    transformer.eval().requires_grad_(False)
    metadata = {"made_by": "tools/pretrain_tiny_base.py", "arguments": " ".join(sys.argv[1:] if argv is None else argv),
                "seed": str(args.seed), "torch": torch.__version__}
    save_base_weights(model, args.out, metadata)
    print(f"wrote {args.out} after {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
