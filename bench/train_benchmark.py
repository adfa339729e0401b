"""Speed of one MotionNFT epoch, phase by phase, against plain diffusers + peft steps.

    python bench/train_benchmark.py [--scale cpu-small|cpu-tiny|kontext-512] [--write docs/benchmarks.md]

Runs one warm-up epoch and one measured epoch of the real trainer (``motionnft.train``)
on a FLUX.1 Kontext transformer with random weights, then, in the same run and on the
same transformer and shapes:

- **raw forward**: batched transformer forwards (no grad, the sampling adapter active) —
  the rollout phase's baseline: rollout throughput = sampler steps per second / raw
  forwards per second (target ≥ 90 %).
- **plain step**: a plain diffusers + peft LoRA training step (forward, MSE to a velocity
  target, backward, AdamW) — the loss phase's baseline: the loss phase costs one
  policy forward/backward and two no-grad forwards (old policy, reference) per
  sample-timestep, so the target is ``loss time / terms ≤ 1.1 × (plain step + 2 forwards) / sample``.
- **MFU** of the loss phase: its FLOPs (counted with ``torch.utils.flop_counter`` on one
  term) over its time and over the peak matmul throughput measured in the same run.
- **peak memory**: CUDA peak allocated (GPU) or the process's peak RSS (CPU).

Scales: ``kontext-512`` is the full FLUX.1 Kontext transformer (19 + 38 blocks, 3072
wide) at 512² with a 512-token text, 24 prompts × 8 rollouts as published (needs a large
GPU; ``--prompts`` / ``--rollouts`` shrink it); ``cpu-small`` and ``cpu-tiny`` are
scaled-down transformers for a CPU. Text embeddings are random tensors of the real shapes
(the text encoders run once per prompt and are cached, so they are not in the epoch).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402
from motionnft.models.base import Condition, FluxVAECodec, PatchCodec  # noqa: E402
from motionnft.models.flux_kontext import FluxKontextModel, _position_ids  # noqa: E402
from motionnft.train import Trainer, load_config  # noqa: E402

SCALES = {
    # transformer (double blocks, single blocks, heads, head dim), text tokens, resolution,
    # prompts, rollouts, rollout batch, train batch, VAE (True: FLUX's AutoencoderKL shape)
    "kontext-512": dict(layers=19, single=38, heads=24, head_dim=128, text=512, joint=4096, pooled=768,
                        resolution=512, prompts=24, rollouts=8, rollout_batch=8, train_batch=8, vae=True),
    "cpu-small": dict(layers=2, single=4, heads=4, head_dim=64, text=64, joint=256, pooled=128,
                      resolution=128, prompts=2, rollouts=4, rollout_batch=4, train_batch=4, vae=False),
    "cpu-tiny": dict(layers=2, single=2, heads=4, head_dim=32, text=64, joint=32, pooled=32,
                     resolution=64, prompts=2, rollouts=4, rollout_batch=4, train_batch=4, vae=False),
}


class RandomTextKontext(FluxKontextModel):
    """FLUX.1 Kontext whose instruction embeddings are random tensors of the real shapes."""

    def __init__(self, transformer, codec, scheduler_config, text_tokens, joint, pooled):
        super().__init__(transformer, codec, text_pipeline=None, scheduler_config=scheduler_config,
                         max_sequence_length=text_tokens, name="FLUX.1 Kontext (random weights)")
        self.joint, self.pooled = joint, pooled

    def _move_encoders(self, device):
        pass

    @torch.no_grad()
    def encode_condition(self, prompt, reference, size):
        from motionnft.image import resize_image

        generator = torch.Generator().manual_seed(abs(hash(prompt)) % (1 << 31))
        height, width = self.latent_size(size)
        return Condition(
            tensors={"prompt_embeds": torch.randn(1, self.max_sequence_length, self.joint, generator=generator),
                     "pooled": torch.randn(1, self.pooled, generator=generator),
                     "reference": self.encode_images(resize_image(reference.float(), size)).cpu()},
            shared={"text_ids": torch.zeros(self.max_sequence_length, 3),
                    "image_ids": torch.cat((_position_ids(height, width, 0.0), _position_ids(height, width, 1.0)))},
        )


def build(scale: dict, dtype):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    if scale["vae"]:
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.1159, scaling_factor=0.3611).eval().requires_grad_(False)
        codec = FluxVAECodec(vae)
    else:
        codec = PatchCodec(4)
    axes = [scale["head_dim"] // 8, scale["head_dim"] * 7 // 16, scale["head_dim"] * 7 // 16]
    axes[0] = scale["head_dim"] - axes[1] - axes[2]
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=codec.channels * 4, num_layers=scale["layers"],
            num_single_layers=scale["single"], attention_head_dim=scale["head_dim"],
            num_attention_heads=scale["heads"], joint_attention_dim=scale["joint"],
            pooled_projection_dim=scale["pooled"], guidance_embeds=True, axes_dims_rope=axes,
        )
    if dtype != torch.float32:
        transformer = transformer.to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return RandomTextKontext(transformer, codec, dict(scheduler.config), scale["text"], scale["joint"], scale["pooled"])


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def clock() -> float:
    """Wall time on a GPU; on a CPU the process's CPU time, which other jobs sharing the
    machine do not inflate (compute-bound work: CPU seconds track the work done)."""
    return time.perf_counter() if torch.cuda.is_available() else time.process_time()


class _Clock:
    perf_counter = staticmethod(clock)


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` runs after one warm-up."""
    function()
    synchronize()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def matmul_peak(dtype) -> float:
    """Measured dense matmul FLOP/s on this device and dtype."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, 5)
    return 2 * n**3 / seconds


def flops_of(function) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (CUDA peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process peak RSS)"


def run(scale_name: str, prompts: int | None, rollouts: int | None, repeats: int, work: Path, epochs: int = 2) -> dict:
    scale = dict(SCALES[scale_name])
    if prompts:
        scale["prompts"] = prompts
    if rollouts:
        scale["rollouts"] = rollouts
    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    if gpu:
        torch.backends.cuda.enable_cudnn_sdp(False)  # see shared/reference/models.md: illegal access under cudnn SDPA
    model = build(scale, dtype)
    config = load_config("kontext" if scale_name.startswith("kontext") else "tiny", overrides={
        "model": "tiny_flux_kontext", "resolution": scale["resolution"], "prompts_per_epoch": scale["prompts"],
        "rollouts_per_prompt": scale["rollouts"], "rollout_batch_size": scale["rollout_batch"],
        "train_batch_size": scale["train_batch"],
        "group_std_min": -1.0, "group_mean_max": 2.0,  # every rollout trains: the full loss phase is timed
        "output_dir": str(work), "mixed_precision": "bf16" if gpu else "no", "gradient_checkpointing": gpu,
        "flow_preset": "fast", "max_steps": 4, "synthetic_samples": 2 * scale["prompts"], "save_every": 0, "sample_grid_every": 0,
        "lora_rank": 32, "lora_alpha": 64.0,
        "base_weights": "", "heldout_data": ""})  # the model is built here: not the tiny preset's base or held-out run
    trainer = Trainer(config, show_progress=False, model=model)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    import motionnft.training.step as step_module

    step_module.time = _Clock  # the trainer's phase timers read the same clock as the baselines
    trainer.train_step()  # warm-up epoch
    rows = [trainer.train_step() for _ in range(epochs)]
    # the least disturbed of the measured epochs, phase by phase
    epoch = {k: min(r[k] for r in rows) for k in ("prepare_s", "rollout_s", "reward_s", "loss_s")}
    terms = int(rows[0]["trained_terms"])
    memory = peak_memory()

    # baselines on the same transformer and shapes
    size = trainer.size
    entry = trainer.prompt(0)
    device = trainer.accelerator.device
    batch = config.rollout_batch_size
    condition = entry.condition.repeat(batch)
    x = model.noise(batch, size, torch.Generator().manual_seed(0)).to(device)
    t = torch.full((batch,), 0.5, device=device)
    trainer.policies.use("old")

    def forward():
        with torch.no_grad(), trainer.accelerator.autocast():
            model.velocity(x, t, condition)

    raw_forward = timed(forward, repeats) / batch  # per sample
    train_batch = config.train_batch_size
    condition_t = entry.condition.repeat(train_batch)
    x_t = model.noise(train_batch, size, torch.Generator().manual_seed(1)).to(device)
    target = model.noise(train_batch, size, torch.Generator().manual_seed(2)).to(device)
    t_t = torch.full((train_batch,), 0.5, device=device)
    trainer.policies.use("policy")
    optimizer = torch.optim.AdamW(trainer.policies.policy_tensors(), lr=1e-6)

    def plain_step():
        with trainer.accelerator.autocast():
            loss = (model.velocity(x_t, t_t, condition_t) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    plain = timed(plain_step, repeats) / train_batch

    def no_grad_forward_train_batch():
        with torch.no_grad(), trainer.accelerator.autocast():
            model.velocity(x_t, t_t, condition_t)

    forward_train = timed(no_grad_forward_train_batch, repeats) / train_batch

    def one_term():
        with torch.no_grad():
            model.velocity(x_t[:1], t_t[:1], condition_t.select(slice(0, 1)))
            model.velocity(x_t[:1], t_t[:1], condition_t.select(slice(0, 1)))
        model.velocity(x_t[:1], t_t[:1], condition_t.select(slice(0, 1))).pow(2).mean().backward()

    term_flops = flops_of(one_term)
    trainer.optimizer.zero_grad(set_to_none=True)
    peak = matmul_peak(dtype)

    steps = config.sampling_steps
    rollout_samples = config.prompts_per_epoch * config.rollouts_per_prompt
    epoch_s = sum(epoch.values())
    loss_per_term = epoch["loss_s"] / max(terms, 1)
    baseline_term = plain + 2 * forward_train
    return {
        "scale": scale_name, "scale_config": scale, "epoch": epoch, "epoch_s": epoch_s, "terms": terms,
        "rollout_samples": rollout_samples, "steps": steps,
        "rollout_throughput_ratio": (rollout_samples * steps / epoch["rollout_s"]) / (1 / raw_forward),
        "raw_forward_ms": raw_forward * 1000, "plain_step_ms": plain * 1000, "forward_train_ms": forward_train * 1000,
        "loss_per_term_ms": loss_per_term * 1000, "loss_ratio": loss_per_term / baseline_term,
        "reward_share": epoch["reward_s"] / epoch_s, "mfu": term_flops * terms / epoch["loss_s"] / peak,
        "term_gflop": term_flops / 1e9, "peak_tflops": peak / 1e12, "memory": memory,
        "device": torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)",
        "dtype": str(dtype).replace("torch.", ""),
        "params_m": sum(p.numel() for p in trainer.unwrapped.parameters()) / 1e6,
    }


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "<!-- train-benchmark:start -->",
        "## MotionNFT trainer: one epoch by phase",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}. Random weights; one warm-up epoch, then two measured epochs of the real trainer "
        "(the faster of the two per phase); the baselines are measured in the same run on the same transformer "
        "and shapes (median of repeats). On a CPU every time is the process's CPU time (`time.process_time`), "
        "since this machine is shared with other jobs whose load inflates wall time by up to tens of times. "
        "Every rollout enters the loss (group filter off) so the full loss phase is timed. The reward uses "
        "OpenCV DIS `fast` on the CPU.",
        "",
        "| scale | device | transformer | epoch | rollout | reward | loss | peak memory |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        c, e = r["scale_config"], r["epoch"]
        lines.append(
            f"| {r['scale']} ({c['resolution']}², {c['prompts']}×{c['rollouts']} rollouts, {r['steps']} steps, "
            f"{r['terms']} loss terms) | {r['device']}, {r['dtype']} | {r['params_m']:.1f} M params | "
            f"{r['epoch_s']:.2f} s | {e['rollout_s']:.2f} s | {e['reward_s']:.2f} s | {e['loss_s']:.2f} s | {r['memory']} |")
    lines += [
        "",
        "| scale | rollout throughput vs raw batched forward (target ≥ 90 %) | loss phase per term vs plain diffusers+peft step + 2 forwards (target ≤ 1.10) | rewards share of epoch (target < 5 %) | loss-phase MFU (vs measured matmul peak) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['scale']} | {100 * r['rollout_throughput_ratio']:.0f} % (raw {r['raw_forward_ms']:.1f} ms/sample) | "
            f"{r['loss_ratio']:.2f} ({r['loss_per_term_ms']:.1f} ms vs {r['plain_step_ms']:.1f} + 2 × "
            f"{r['forward_train_ms']:.1f} ms) | {100 * r['reward_share']:.1f} % | {100 * r['mfu']:.1f} % "
            f"({r['term_gflop']:.2f} GFLOP/term, peak {r['peak_tflops']:.3f} TFLOP/s) |")
    lines += [
        "",
        "GPU (FLUX.1 Kontext at 512², `--scale kontext-512`): not yet measured — no accelerator was lent "
        "to the session that built the trainer.",
        "<!-- train-benchmark:end -->",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="append", choices=sorted(SCALES),
                        help="configuration(s) to run (default: cpu-tiny and cpu-small on a CPU, kontext-512 on a GPU)")
    parser.add_argument("--prompts", type=int, default=None, help="override prompts per epoch")
    parser.add_argument("--rollouts", type=int, default=None, help="override rollouts per prompt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/motionnft-train-benchmark"))
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose section is replaced")
    args = parser.parse_args(argv)
    scales = args.scale or (["kontext-512"] if torch.cuda.is_available() else ["cpu-tiny", "cpu-small"])
    results = []
    for name in scales:
        print(f"benchmarking {name} ...", flush=True)
        results.append(run(name, args.prompts, args.rollouts, args.repeats, args.work / name))
    command = "python bench/train_benchmark.py" + "".join(f" --scale {s}" for s in args.scale or []) + (
        f" --write {args.write}" if args.write else "")
    table = markdown(results, command)
    print(table)
    if args.write:
        write_section(args.write, "train-benchmark", table, "Benchmarks")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
