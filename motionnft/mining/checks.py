"""The verdict on a pair: every threshold it fails, then (optionally) the MLLM judge's criteria."""

from __future__ import annotations

import numpy as np

from ..video import frame_to_tensor
from .config import MiningConfig

JUDGE_CRITERIA = ("stable_setting", "significant_motion", "intact_subjects")


# (reason code, metric, failing relation, setting, number format); every setting is a "max_" or "min_" one.
THRESHOLDS = (
    ("shot_cut", "cut_score", ">", "max_cut_score", ".3f"),
    ("camera_motion", "camera_motion", ">", "max_camera_motion", ".4f"),
    ("unstable_background", "background_fraction", "<", "min_background_fraction", ".3f"),
    ("too_little_motion", "motion", "<", "min_motion", ".4f"),
    ("too_much_motion", "motion", ">", "max_motion", ".4f"),
    ("moving_area_too_small", "moving_fraction", "<", "min_moving_fraction", ".4f"),
    ("moving_area_too_large", "moving_fraction", ">", "max_moving_fraction", ".4f"),
    ("blurry", "sharpness", "<", "min_sharpness", ".1f"),
    ("sharpness_mismatch", "sharpness_ratio", "<", "min_sharpness_ratio", ".3f"),
    ("too_dark", "brightness", "<", "min_brightness", ".3f"),
    ("too_bright", "brightness", ">", "max_brightness", ".3f"),
    ("lighting_change", "lighting_change", ">", "max_lighting_change", ".3f"),
    ("occlusion", "occlusion", ">", "max_occlusion", ".3f"),
    ("near_duplicate", "duplicate_distance", "<", "min_duplicate_distance", ".3f"),
)
"""Each automatic check, in the order its reasons are reported."""


def failed_checks(metrics: dict[str, float], config: MiningConfig) -> list[tuple[str, str]]:
    """(reason code, readable detail) for every threshold the pair fails."""
    failed = []
    for code, name, relation, setting, number in THRESHOLDS:
        value, limit = _checked_value(metrics, name, relation), getattr(config, setting)
        if value is not None and (value > limit if relation == ">" else value < limit):
            failed.append((code, f"{name} {value:{number}} {relation} {setting[:3]} {limit}"))
    return failed


def _checked_value(metrics: dict[str, float], name: str, relation: str) -> float | None:
    if name == "brightness":  # the darker frame is judged for "too dark", the brighter for "too bright"
        return (min if relation == "<" else max)(metrics["brightness_input"], metrics["brightness_target"])
    return metrics[name]  # None for duplicate_distance while nothing is kept: no check


REASONS = (*(code for code, *_ in THRESHOLDS), *(f"judge_{name}" for name in JUDGE_CRITERIA), "judge_error")
"""Every rejection code the miner can give."""


def check_judge(judge) -> None:
    """Raise TypeError unless ``judge`` is None or has the mining methods of the judge interface."""
    if judge is None:
        return
    missing = [name for name in ("rate_mining_criteria", "draft_instruction") if not callable(getattr(judge, name, None))]
    if missing:
        raise TypeError(f"judge: {type(judge).__name__} lacks {', '.join(missing)} (see motionnft.judge.JudgeClient)")


def ask_judge(judge, input_image: np.ndarray, target_image: np.ndarray, min_score: float):
    """``(scores or None, drafted prompt, [(reason, detail)])`` from ``judge`` on one pair.

    Images are ``(H, W, 3)`` uint8 at the output size. A judge that fails rejects the pair
    with ``judge_error`` instead of raising: it is a remote service, and one failure must
    not end a run.
    """
    image_a, image_b = frame_to_tensor(input_image), frame_to_tensor(target_image)
    try:
        raw = judge.rate_mining_criteria(image_a, image_b)
        scores = {name: float(raw[name]) for name in JUDGE_CRITERIA}
    except Exception as error:  # noqa: BLE001 - see above
        return None, "", [("judge_error", f"judge failed: {type(error).__name__}: {error}")]
    failures = [(f"judge_{name}", f"judge {name} {scores[name]:.2f} < min {min_score}")
                for name in JUDGE_CRITERIA if scores[name] < min_score]
    if failures:
        return scores, "", failures
    try:
        prompt = str(judge.draft_instruction(image_a, image_b)).strip()
    except Exception as error:  # noqa: BLE001 - see above
        return scores, "", [("judge_error", f"judge could not draft the instruction: {type(error).__name__}: {error}")]
    return scores, prompt, []
