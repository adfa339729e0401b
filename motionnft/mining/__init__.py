"""Mine motion-edit training pairs from videos: frames -> candidate pairs -> filters -> dataset.

MotionEdit built its data from 3-second windows of video clips: the first and last frame
of a window form a candidate (input, target) pair, kept when the setting is stable, the
motion significant and the subjects intact. This package does the same on the user's own
footage without any model: every candidate is scored with automatic filters computed from
optical flow at a reduced analysis resolution, and an optional MLLM judge (any object with
``rate_mining_criteria`` and ``draft_instruction``, see :mod:`motionnft.judge`) checks the
paper's three criteria and drafts the instruction.

Pipeline (one pass, streaming)::

    video -> sample_frames (PyAV, at sample_fps) -> per analysed frame: analysis-size copy,
    sharpness, brightness, thumbnail; flow to and from the previous frame; shot-cut score
    -> windows of window_seconds (first/last frame; "endpoints" or "sliding")
    -> per pair: the window's flows chained along each pixel's track (forward and backward),
       forward-backward occlusion, camera fit (still camera, else RANSAC), residual subject
       motion and moving area, lighting change, near-duplicate distance
    -> reasons (every failed threshold) -> optional judge -> DatasetWriter

Only the samples of the current window are held, so memory does not grow with the video.
Sample ids derive from the video's content hash and the two timestamps: a rerun into the
same dataset folder skips the pairs already written.

Every metric is dimensionless: motion and camera displacement are divided by the analysis
image's diagonal (as the MotionNFT reward normalises flow), fractions are of the image
area, brightness and lighting are on the [0, 1] intensity scale.

Modules: ``config`` (settings and thresholds), ``sources`` (videos and frame batches),
``frames`` (per-frame measures), ``filters`` (the flow maths), ``metrics`` (a pair's
numbers), ``checks`` (thresholds and judge), ``results``, ``dataset`` (output folder and
rejection log), ``miner`` (:class:`PairMiner`), ``run`` (:func:`mine`).
"""

from .checks import JUDGE_CRITERIA, REASONS, THRESHOLDS, ask_judge, check_judge, failed_checks
from .config import CAMERA_MODELS, PAIRINGS, MiningConfig
from .dataset import REJECTIONS_FILE, RejectionLog, sample_fields
from .filters import (
    BORDER_BAND,
    CUT_PIXEL_ERROR,
    camera_fit,
    homogeneous_flow,
    lighting_change,
    occlusion_mask,
    unexplained_fraction,
    warp_gray,
)
from .frames import AnalysedFrame, duplicate_distance, fit_size, sharpness, texture_mask, thumbnail
from .metrics import motion_picture, pair_metrics
from .miner import PairMiner
from .results import MiningSummary, PairResult
from .run import mine
from .sources import MiningSource, frames_source, pair_id, video_source

__all__ = [
    "BORDER_BAND",
    "CAMERA_MODELS",
    "CUT_PIXEL_ERROR",
    "JUDGE_CRITERIA",
    "PAIRINGS",
    "REASONS",
    "REJECTIONS_FILE",
    "THRESHOLDS",
    "AnalysedFrame",
    "MiningConfig",
    "MiningSource",
    "MiningSummary",
    "PairMiner",
    "PairResult",
    "RejectionLog",
    "ask_judge",
    "camera_fit",
    "check_judge",
    "duplicate_distance",
    "failed_checks",
    "fit_size",
    "frames_source",
    "homogeneous_flow",
    "lighting_change",
    "mine",
    "motion_picture",
    "occlusion_mask",
    "pair_id",
    "pair_metrics",
    "sample_fields",
    "sharpness",
    "texture_mask",
    "thumbnail",
    "unexplained_fraction",
    "video_source",
    "warp_gray",
]
