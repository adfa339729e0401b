"""One optimiser step of MotionNFT ("epoch" in DiffusionNFT's words), on a
:class:`~motionnft.training.loop.Trainer`.

Rollouts of the old policy and their rewards (:func:`rollout_phase`), optimality rewards
over all processes (:func:`optimality_phase`), the loss items: for each kept rollout the
sampler's timesteps, shuffled, a fraction kept, with fresh noise (:func:`loss_items`),
forward/backward in micro-batches (:func:`loss_phase`) and AdamW (:func:`optimise`), then
the EMA / old-policy / data-cursor updates, all or nothing (:func:`train_step`).

Every random draw comes from a generator derived from (seed, step, prompt, purpose), so a
resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch

from .distributed import clip_gradients, gather, synchronize
from .interrupt import DeferInterrupt
from .rewards import optimality_of_rated
from .rollouts import decode
from .seeding import derived_generator

LOSS_TERMS = ("loss", "policy_loss", "kl", "positive", "negative")


def train_step(trainer) -> dict:
    """One optimiser step; returns its ``metrics.csv`` row."""
    config, accelerator = trainer.config, trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    step = trainer.step
    chosen = trainer.cursor.take(config.prompts_per_epoch)
    local = chosen[rank::world]
    timings = {"rollout_s": 0.0, "reward_s": 0.0, "loss_s": 0.0}
    samples, reward_rows = rollout_phase(trainer, step, local, timings)
    raw_all, failed_all, optimality = optimality_phase(trainer, step, local, reward_rows)
    # gather orders by process; rows of process p are prompts chosen[p::world]
    order = [i for p in range(world) for i in chosen[p::world]]
    my_rows = slice(rank * len(local), (rank + 1) * len(local))
    items, all_counts = loss_items(trainer, step, samples, optimality.train[my_rows], optimality.reward[my_rows])

    t0 = time.perf_counter()
    losses, grad_norm = optimise(trainer, step, items, all_counts)
    synchronize()
    timings["loss_s"] = time.perf_counter() - t0

    with DeferInterrupt():
        trainer.step = step + 1
        decay, eta = trainer.policies.update(trainer.step, trainer.nft)
        retired_now = {trainer.data[order[p]].id for p in range(len(order)) if bool(optimality.retire[p])}
        trainer.cursor.retired |= retired_now
        trainer.committed_cursor = trainer.cursor.state()
        trainer.epoch_snapshot = None
    trainer.last_samples = samples[:1]
    row = metrics_row(trainer, reward_rows, raw_all, failed_all, optimality, int(all_counts.sum()))
    return {**row, **losses, "grad_norm": grad_norm, "old_eta": eta, "ema_decay": decay, **timings}


def rollout_phase(trainer, step: int, local: list[int], timings: dict) -> tuple[list, list]:
    """This process's prompts ``local``: their rollouts from the old policy and their rewards.

    Returns ``samples`` (``(index, entry, x0 (K, N, C), images (K, 3, H, W))`` per prompt) and
    the rows of :func:`~motionnft.training.rewards.rollout_rewards`; adds to ``timings``.
    """
    config, accelerator = trainer.config, trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    start = time.perf_counter()
    entries = [trainer.prompt(i) for i in local]
    timings["prepare_s"] = time.perf_counter() - start
    samples, reward_rows = [], []
    bar = trainer.progress(len(local), f"step {step + 1} rollouts")
    for position, (index, entry) in enumerate(zip(local, entries)):
        t0 = time.perf_counter()
        x0 = trainer.rollouts(entry, derived_generator(config.seed, "rollout", step, index, rank + position * world))
        images = decode(trainer.model, x0, trainer.size, accelerator.device)
        synchronize()
        t1 = time.perf_counter()
        reward_rows.append(trainer.rewards(entry, images, trainer.data[index].prompt))
        t2 = time.perf_counter()
        timings["rollout_s"] += t1 - t0
        timings["reward_s"] += t2 - t1
        samples.append((index, entry, x0, images))
        bar.update(1)
    bar.close()
    return samples, reward_rows


def optimality_phase(trainer, step: int, local: list[int], reward_rows: list[dict]):
    """The raw rewards of every process ``(P, K)``, which prompts the judge failed ``(P,)`` and
    their :class:`~motionnft.nft.OptimalityRewards` (prompts with a failure left out)."""
    from ..nft import optimality_rewards

    accelerator = trainer.accelerator
    raw_all = gather(accelerator, torch.stack([r["raw"] for r in reward_rows]))
    failed_local = torch.tensor([r["judge_failure"] is not None for r in reward_rows], dtype=torch.int32)
    failed_all = gather(accelerator, failed_local) > 0
    if bool(failed_all.any()):  # every process sees it, so they stop (or skip) together
        trainer.judge_failed(step, local, reward_rows)
        return raw_all, failed_all, optimality_of_rated(raw_all, ~failed_all, trainer.nft)
    return raw_all, failed_all, optimality_rewards(raw_all, trainer.nft)


def loss_items(trainer, step: int, samples: list, train_local: torch.Tensor, reward_local: torch.Tensor):
    """``(x0 (N, C), t, r, condition, noise (N, C))`` per kept rollout and loss timestep, in
    the step's shuffled order, and every process's item count ``(world,)``."""
    from ..nft import loss_timesteps

    config, accelerator = trainer.config, trainer.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    items = []
    for position, (index, entry, x0, _) in enumerate(samples):
        if not bool(train_local[position]):
            continue
        generator = derived_generator(config.seed, "loss", step, index, rank + position * world)
        times = loss_timesteps(trainer.sigmas, x0.shape[0], trainer.nft.timestep_fraction, generator)
        for k in range(x0.shape[0]):
            for t in times[k].tolist():
                noise = torch.randn(x0.shape[1:], generator=generator)
                items.append((x0[k], t, float(reward_local[position, k]), entry.condition, noise))
    # the same shuffle on every run: micro-batches mix prompts and timesteps
    permutation = torch.randperm(len(items), generator=derived_generator(config.seed, "batches", step, rank))
    items = [items[i] for i in permutation.tolist()]
    return items, gather(accelerator, torch.tensor([len(items)]))


def optimise(trainer, step: int, items: list, all_counts: torch.Tensor) -> tuple[dict, float]:
    """The step's ``optimizer_steps_per_epoch`` optimiser steps over ``items``; returns the loss
    terms (the mean over all the step's sample-timesteps) and the last gradient norm."""
    config, accelerator = trainer.config, trainer.accelerator
    global_count = int(all_counts.sum())
    trainer.optimizer.zero_grad(set_to_none=True)
    losses = {key: float("nan") for key in LOSS_TERMS}
    grad_norm = float("nan")
    splits = config.optimizer_steps_per_epoch
    per_split = math.ceil(int(all_counts.max()) / splits) if global_count else 0
    split_items = [items[s * per_split:(s + 1) * per_split] for s in range(splits)] if global_count else []
    if len(split_items) > 1:  # a Ctrl-C between two optimiser steps of one epoch rolls back to its start
        trainer.epoch_snapshot = (trainer.policies.snapshot(), copy.deepcopy(trainer.optimizer.state_dict()))
    for part in split_items:
        part_counts = gather(accelerator, torch.tensor([len(part)]))
        part_global = int(part_counts.sum())
        batches = math.ceil(int(part_counts.max()) / config.train_batch_size)
        if part_global == 0:
            continue
        # the real (not padding) micro-batches of this optimiser step, over all processes
        real_batches = sum(math.ceil(int(c) / config.train_batch_size) for c in part_counts.tolist())
        bar = trainer.progress(batches, f"step {step + 1} loss")
        part_losses = trainer.loss_phase(part, part_global, batches, bar, real_batches)
        bar.close()
        for key, value in part_losses.items():  # the epoch's mean over all its terms
            share = value * part_global / global_count
            losses[key] = share if math.isnan(losses[key]) else losses[key] + share
        grad_norm = clip_gradients(accelerator, trainer.policies.policy_tensors(), config.grad_clip, trainer.fsdp)
        with DeferInterrupt():
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm


def metrics_row(trainer, reward_rows: list[dict], raw_all: torch.Tensor, failed_all: torch.Tensor, optimality,
                trained_terms: int) -> dict:
    """The step's reward statistics over all processes (the ``metrics.csv`` columns before the losses)."""
    keys = ("motion", "motion_continuous", "mas", "judge")
    gathered = {key: gather(trainer.accelerator, torch.cat([r[key] for r in reward_rows])) for key in keys}
    judge, rated = gathered["judge"], ~failed_all
    return {
        "step": trainer.step,
        "reward_mean": float(raw_all[rated].mean()) if bool(rated.any()) else float("nan"),
        "reward_std": optimality.global_std,
        "motion_reward_mean": float(gathered["motion"].mean()),
        "motion_reward_continuous_mean": float(gathered["motion_continuous"].mean()),
        "mas_mean": float(gathered["mas"].mean()),
        "judge_mean": float(judge.nanmean()) if not torch.isnan(judge).all() else float("nan"),
        "trained_prompts": int(optimality.train.sum()),
        "trained_terms": trained_terms,
        "retired_prompts": len(trainer.cursor.retired),
        "judge_skipped_prompts": int(failed_all.sum()),
    }


def _micro_batch(chunk: list, device):
    """Stack items into ``x0``, ``noise`` ``(B, N, C)``, ``t``, ``r`` ``(B,)``, the batch's
    condition, and ``x_t = (1 − t)·x0 + t·noise``."""
    from ..models import Condition

    x0 = torch.stack([c[0] for c in chunk]).to(device)
    t = torch.tensor([c[1] for c in chunk], dtype=torch.float32, device=device)
    reward = torch.tensor([c[2] for c in chunk], dtype=torch.float32, device=device)
    noise = torch.stack([c[4] for c in chunk]).to(device)
    condition = Condition.cat([c[3] for c in chunk])
    x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * noise
    return x0, t, reward, condition, x_t


@torch.no_grad()
def _frozen_velocities(trainer, x_t: torch.Tensor, t: torch.Tensor, condition):
    """``v_old`` (old policy) and ``v_ref`` (adapters off; None without a KL term), ``(B, N, C)``."""
    with trainer.accelerator.autocast():
        trainer.policies.use("old")
        v_old = trainer.model.velocity(x_t, t, condition)
        v_ref = None
        if trainer.config.kl_weight > 0:
            trainer.policies.use("base")
            v_ref = trainer.model.velocity(x_t, t, condition)
    return v_old, v_ref


def loss_phase(trainer, items: list[tuple], global_count: int, batches: int, bar=None,
               global_batches: int | None = None) -> dict:
    """Forward/backward over (x0, t, r, condition, noise) items in micro-batches.

    ``batches`` is the same on every process (padded with zero-weight batches) so that
    DDP/FSDP collectives line up; DDP averages the processes' gradients, so a weight of
    ``world / n`` makes a term count ``1 / n`` of the step's gradient:

    - ``loss_average = "all"``: each term weighs ``world / global_count``: the gradient
      is the mean over all ``global_count`` sample-timesteps of the step;
    - ``"micro_batch"`` (the release): a micro-batch's terms weigh
      ``world / (global_batches · len(micro-batch))``: the gradient is the mean over the
      step's ``global_batches`` real micro-batches (all processes) of each micro-batch's
      mean over its sample-timesteps.

    The returned loss terms are the mean over all sample-timesteps either way.
    """
    from ..nft import nft_loss

    config, accelerator, model = trainer.config, trainer.accelerator, trainer.model
    world = accelerator.num_processes
    size = config.train_batch_size
    totals = {key: 0.0 for key in LOSS_TERMS}
    per_batch = config.loss_average == "micro_batch"
    for b in range(batches):
        chunk = items[b * size:(b + 1) * size]
        if per_batch:
            weight = world / max(global_batches or 1, 1) / max(len(chunk), 1)
        else:
            weight = world / max(global_count, 1)
        if not chunk:  # padding batch: a real item, zero weight
            chunk, weight = (items[:1] if items else padding_item(trainer)), 0.0
        x0, t, reward, condition, x_t = _micro_batch(chunk, accelerator.device)
        v_old, v_ref = _frozen_velocities(trainer, x_t, t, condition)
        trainer.policies.use("policy")
        sync = contextlib.nullcontext() if b == batches - 1 else accelerator.no_sync(model.transformer)
        with sync:
            with accelerator.autocast():
                v_theta = model.velocity(x_t, t, condition)
                loss = nft_loss(v_theta, v_old, x_t, x0, t, reward, v_ref, trainer.nft)
            accelerator.backward(loss.per_sample.sum() * weight)
        if weight > 0:
            share = world / max(global_count, 1)
            for key, term in zip(LOSS_TERMS, (loss.per_sample, loss.policy, loss.kl, loss.positive, loss.negative)):
                totals[key] += float(term.detach().sum()) * share
        if bar is not None:
            bar.update(1)
    return totals


def padding_item(trainer) -> list[tuple]:
    """A zero item of the right shapes, for a process with no item at all in a padded batch."""
    entry = trainer.prompt(0)
    tokens = trainer.model.token_count(trainer.size)
    zeros = torch.zeros(tokens, trainer.model.token_channels())
    return [(zeros, float(trainer.sigmas[0]), 0.5, entry.condition, zeros)]
