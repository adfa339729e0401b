"""Held-out evaluation of a run: the same prompts and the same noise before the first step
and after the last, scored with the motion reward (:mod:`motionnft.heldout`)."""

from __future__ import annotations

import json

import torch

from ..files import atomic_write
from . import figures
from .data import open_heldout_data
from .rollouts import decode
from .seeding import derived_generator

HELDOUT_FILE = "heldout.json"


def heldout_entries(trainer) -> list:
    """``(sample id, entry)`` of every held-out prompt (empty without ``heldout_data``), built once."""
    if trainer.heldout_prompts is None:
        data = open_heldout_data(trainer.config)
        trainer.heldout_prompts = [(s.id, trainer.prepare(s)) for s in data] if data is not None else []
    return trainer.heldout_prompts


@torch.no_grad()
def evaluate_heldout(trainer, keep_images: int = 4):
    """Held-out scores of the EMA LoRA: ``heldout_rollouts`` rollouts per prompt, each prompt's
    noise drawn from ``(seed, "heldout", sample id)`` so every evaluation sees the same noise.

    Returns a :class:`~motionnft.heldout.HeldoutScores`, or None without held-out data.
    """
    from ..heldout import performed_motion, score_heldout
    from ..reward import motion_reward

    entries = trainer.heldout_entries()
    if not entries:
        return None
    device = trainer.accelerator.device

    def rollouts(index: int) -> torch.Tensor:
        sample_id, entry = entries[index]
        x0 = trainer.rollouts(entry, derived_generator(trainer.config.seed, "heldout", sample_id), policy="policy")
        return decode(trainer.model, x0, trainer.size, device)

    def score(index: int, edits: torch.Tensor) -> dict:
        entry = entries[index][1]
        result = motion_reward(entry.input_image, edits, entry.target_image, estimator=trainer.estimator,
                               config=trainer.reward_config, flow_target=entry.flow_target)
        return {"reward": result.reward, "reward_continuous": result.reward_continuous, "mas": result.mas.score,
                "performed": performed_motion(result.flow_edit, result.flow_target)}

    bar = trainer.progress(len(entries), f"held-out evaluation (step {trainer.step})")
    with trainer.policies.ema_as_policy():
        scores = score_heldout([sample_id for sample_id, _ in entries], rollouts, score, trainer.step,
                               keep_images=keep_images, progress=lambda: bar.update(1))
    bar.close()
    trainer.policies.use("policy")
    return scores


def heldout_before(trainer, main: bool):
    """The held-out scores at the run's start: measured now on a fresh run (or when the run
    folder has none), read back from ``heldout.json`` on a resumed one."""
    from ..heldout import HeldoutScores

    if not trainer.config.heldout_data:
        return None
    path = trainer.out / HELDOUT_FILE
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded.get("before", {}).get("ids") == [i for i, _ in trainer.heldout_entries()]:
            return HeldoutScores.from_dict(recorded["before"])
    scores = trainer.evaluate_heldout()
    if main:
        with atomic_write(path, "w") as handle:
            json.dump({"before": scores.to_dict()}, handle)
        entries = trainer.heldout_entries()[:len(scores.images)]
        figures.heldout_before_sheet(entries, scores, trainer.out / "samples" / "heldout-before.png")
    return scores


def heldout_after(trainer, before, main: bool):
    """Held-out scores of the saved (EMA) LoRA; writes ``heldout.json`` and the
    before/after sheet ``samples/heldout.png`` (input, target, K before, K after)."""
    after = trainer.evaluate_heldout()
    if main:
        with atomic_write(trainer.out / HELDOUT_FILE, "w") as handle:
            json.dump({"before": before.to_dict(), "after": after.to_dict()}, handle)
        figures.heldout_sheet(trainer.out / "samples" / "heldout-before.png", after,
                              trainer.out / "samples" / "heldout.png")
    trainer.heldout_results = [before, after]
    return after
