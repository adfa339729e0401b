"""How edits are scored (:class:`EvaluationConfig`) and the names of what is scored."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..flow.base import FlowEstimator
from ..reward import DEFAULT_REWARD_CONFIG, MASConfig, MotionRewardConfig

JUDGE_METRICS = ("fidelity", "preservation", "coherence")
TABLE_METRICS = ("fidelity", "preservation", "coherence", "overall", "mas")
MOTION_FIELDS = ("mas", "mas_hard_failure", "d_mag", "d_dir", "m_move", "combined", "reward",
                 "reward_continuous", "motion_edit", "motion_target")
WIN_METRICS = ("auto", "judge", "mas")
WIN_RULE = (
    "For every sample two systems both edited, the system with the higher score wins the comparison "
    "(the judge's Overall rating when a judge is configured, else MAS); scores within the tie "
    "tolerance are a tie and count half to each. A system's win rate is the share of its "
    "comparisons against every other system that it won, in percent."
)



@dataclass(frozen=True)
class EvaluationConfig:
    """How edits are scored; every constant here is printed next to the results."""

    backend: str = "dis"
    preset: str | None = None
    weights: str | None = None
    """Weight file of a learned flow backend (path or file name; see :func:`motionnft.flow.create_estimator`)."""
    precision: str | None = None
    device: str | None = None
    reward: MotionRewardConfig = DEFAULT_REWARD_CONFIG
    mas: MASConfig = field(default_factory=MASConfig)
    win_by: str = "auto"
    """``auto`` (the judge's Overall when a judge is configured, else MAS), ``judge`` or ``mas``."""
    tie_tolerance: float = 0.0
    """Scores closer than this (in the compared metric's units) are a tie."""

    def __post_init__(self):
        if self.win_by not in WIN_METRICS:
            raise ValueError(f"win_by {self.win_by!r}: expected one of {', '.join(WIN_METRICS)}")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance must be >= 0, got {self.tie_tolerance}")

    def win_metric(self, has_judge: bool) -> str:
        if self.win_by == "judge" and not has_judge:
            raise ValueError("win_by='judge' needs a judge (give the judge server URL and model)")
        if self.win_by == "mas" or not has_judge:
            return "mas"
        return "overall"

    def constants(self, estimator: FlowEstimator | None = None) -> dict:
        preset = getattr(estimator, "preset", None) or self.preset
        flow = {"backend": self.backend, "preset": preset}
        weights = getattr(estimator, "weights", None)
        if weights is not None:
            # The file (not the folder it was found in) decides the scores.
            flow.update(weights=Path(weights).name, precision=getattr(estimator, "precision", "fp32"))
        return {
            "flow": flow,
            "reward": asdict(self.reward),
            # The MAS constants the scores were computed with: d_min follows the reward's eps^q.
            "mas": asdict(self.mas.for_reward(self.reward)),
            "win": {"by": self.win_by, "tie_tolerance": self.tie_tolerance},
        }
