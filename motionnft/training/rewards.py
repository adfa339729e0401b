"""The rewards of a step's rollouts: the motion reward, the judge's (with retries), their
weighted sum, and the optimality rewards of the prompts every rollout of which was rated."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import torch

JudgeScores = Callable[[torch.Tensor, torch.Tensor, str], tuple[list, dict]]


class JudgeFailure(RuntimeError):
    """The judge could not rate a rollout after ``judge_retries`` retries and
    ``judge_failure = "stop"``: the run saved its last completed step and stops."""


def configured_judge(config):
    """The judge client ``config.judge_url`` names, or None without one."""
    if not config.judge_url:
        return None
    try:
        from ..judge import JudgeClient  # only when a judge is configured
    except ImportError as error:
        raise ValueError(f"judge_url is set but the judge client (motionnft.judge) cannot be imported: {error}") \
            from None

    # The trainer retries a failed rating itself (judge_retries, any error), so the
    # client makes one attempt per call; judge_concurrency requests may be in flight.
    return JudgeClient(config.judge_url, config.judge_model,
                       api_key=os.environ.get(config.judge_api_key_env) or None, timeout=config.judge_timeout,
                       max_retries=0, max_concurrency=config.judge_concurrency)


def rollout_rewards(entry, images: torch.Tensor, prompt: str, estimator, reward_config, weights: tuple[float, float],
                    judge_scores: JudgeScores | None) -> dict:
    """Rewards of one prompt's K rollouts ``images`` ``(K, 3, H, W)`` in [0, 1].

    Returns ``(K,)`` float tensors ``raw`` (``weights[0]``·motion + ``weights[1]``·judge),
    ``motion``, ``motion_continuous``, ``mas`` (0-100) and ``judge`` (NaN without a judge or
    where it failed), plus ``judge_failure``: None, or the reason a rollout went unrated.
    """
    from ..reward import motion_reward

    motion = motion_reward(entry.input_image, images, entry.target_image, estimator=estimator,
                           config=reward_config, flow_target=entry.flow_target)
    raw = weights[0] * motion.reward.float()
    judge = torch.full_like(raw, float("nan"))
    failure = None
    if judge_scores is not None and weights[1] > 0:
        scores, failures = judge_scores(entry.input_image, images, prompt)
        judge = torch.tensor(scores, dtype=raw.dtype)
        raw = raw + weights[1] * judge
        if failures:
            first = min(failures)
            failure = (f"the judge could not rate {len(failures)} of {len(scores)} rollouts; rollout {first + 1}: "
                       f"{failures[first]}")
    return {"raw": raw, "motion": motion.reward.float(), "motion_continuous": motion.reward_continuous.float(),
            "mas": motion.mas.score.float(), "judge": judge, "judge_failure": failure}


def _rate(judge, input_image: torch.Tensor, image: torch.Tensor, prompt: str, retries: int, backoff: float) -> float:
    """One rollout's rating, asked again after a failure up to ``retries`` times."""
    attempts = retries + 1
    for attempt in range(attempts):
        try:
            score = float(judge.rate_training_reward(input_image, image, prompt))
            if not 0.0 <= score <= 1.0:  # NaN included
                raise ValueError(f"the judge returned {score!r}, expected a reward in [0, 1]")
            return score
        except Exception:  # noqa: BLE001 - any judge failure is reported, not fatal here
            if attempt + 1 == attempts:
                raise
            time.sleep(min(backoff * 2**attempt, 60.0))
    raise AssertionError("unreachable")


def _run_all(rate: Callable[[int], float], count: int, workers: int) -> list[tuple]:
    """``(k, score, None)`` or ``(k, None, error)`` for ``rate(k)``, k < count, ``workers`` at once."""
    results = []
    if workers <= 1:
        for k in range(count):
            try:
                results.append((k, rate(k), None))
            except Exception as error:  # noqa: BLE001
                results.append((k, None, error))
        return results
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="motionnft-judge")
    futures = [(k, pool.submit(rate, k)) for k in range(count)]
    try:
        for k, future in futures:
            try:
                results.append((k, future.result(), None))
            except Exception as error:  # noqa: BLE001
                results.append((k, None, error))
    except BaseException:  # Ctrl-C: drop the ratings not started, do not wait for those in flight
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def judge_scores(judge, input_image: torch.Tensor, images: torch.Tensor, prompt: str, config) -> tuple[list, dict]:
    """The judge's reward of each rollout ``(K, 3, H, W)``: ``(scores, failures)``.

    Up to ``judge_concurrency`` ratings run at once. A rating that raises (unreachable
    server, timeout, HTTP error, malformed answer) or is not a number in [0, 1] is asked
    again up to ``judge_retries`` times, ``judge_backoff`` seconds after the first failure
    and twice as long after each further one (at most 60 s). ``scores[k]`` is NaN and
    ``failures[k]`` the last error's text for a rollout still unrated then.
    """
    def rate(k: int) -> float:
        return _rate(judge, input_image, images[k:k + 1], prompt, config.judge_retries, config.judge_backoff)

    scores, failures = [float("nan")] * images.shape[0], {}
    results = _run_all(rate, images.shape[0], min(config.judge_concurrency, images.shape[0]))
    attempts = config.judge_retries + 1
    for k, score, error in results:
        if error is None:
            scores[k] = score
        else:
            text = str(error).strip() or type(error).__name__
            failures[k] = f"{type(error).__name__}: {text} ({attempts} attempt{'s' if attempts > 1 else ''})"
    return scores, failures


def optimality_of_rated(raw: torch.Tensor, rated: torch.Tensor, config):
    """:func:`~motionnft.nft.optimality_rewards` over the prompts (rows of ``raw``, ``(P, K)``)
    whose rollouts were all rated (``rated``, ``(P,)`` bool); the others neither train nor
    retire (reward ½, advantage 0, NaN statistics)."""
    from ..nft import OptimalityRewards, optimality_rewards

    prompts, rollouts = raw.shape
    result = OptimalityRewards(
        reward=torch.full((prompts, rollouts), 0.5), advantage=torch.zeros(prompts, rollouts),
        prompt_mean=torch.full((prompts,), float("nan")), prompt_std=torch.full((prompts,), float("nan")),
        global_std=float("nan"), train=torch.zeros(prompts, dtype=torch.bool),
        retire=torch.zeros(prompts, dtype=torch.bool))
    if bool(rated.any()):
        kept = optimality_rewards(raw[rated], config)
        for name in ("reward", "advantage", "prompt_mean", "prompt_std", "train", "retire"):
            getattr(result, name)[rated] = getattr(kept, name)
        result.global_std = kept.global_std
    return result


def report_judge_failures(step: int, failures: list[tuple[str, str]], judge_failure: str) -> None:
    """Print this process's prompts (``(sample id, reason)``) the judge could not rate in step
    ``step`` (counted from 0); under ``judge_failure = "stop"`` raise :class:`JudgeFailure`
    (every process does, at the same point)."""
    stop = judge_failure == "stop"
    action = ("stopping (judge_failure = \"stop\")" if stop
              else "prompt skipped this step (judge_failure = \"skip\")")
    reasons = []
    for sample_id, reason in failures:
        reasons.append(f"prompt {sample_id!r}: {reason}")
        print(f"step {step + 1}: {reasons[-1]}; {action}", file=sys.stderr)
    if stop:
        what = reasons[0] if reasons else "the judge failed in another process (see its log)"
        raise JudgeFailure(f"step {step + 1}: {what}. judge_failure = \"stop\": the run stops at the last "
                           "completed step; run it again to resume (or set judge_failure = \"skip\")")
