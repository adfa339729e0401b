"""MotionEdit-Bench style evaluation of edited images: MAS, judge ratings, win rates.

Given a dataset (:func:`motionnft.data.open_dataset`: the folder layout or the Hugging
Face parquet/arrow layout) and, for each system to compare, its edits of the samples,
:func:`evaluate` computes for every sample and system

- the **MAS** and every motion-reward term (:mod:`motionnft.reward`, flow backend chosen
  by name),
- optionally the judge's **Fidelity**, **Preservation** and **Coherence** ratings
  (expected 0-5 digit, :mod:`motionnft.judge`) and their mean, **Overall**,

then the means per category and overall, and the **win rate** of each system in pairwise
comparisons on the same sample (see :data:`WIN_RULE`). It writes ``results.jsonl`` (the
resumable log), ``per_sample.csv``, ``pairwise.csv``, ``summary.csv``, ``summary.json``
and ``table.md`` (laid out like the paper's Table 1, with the constants used).

Edits come from an :class:`EditSource`: :class:`EditFolder` matches ``<id>.png`` /
``.jpg`` / ``.jpeg`` / ``.webp`` files to sample ids; :class:`ProducedEdits` makes missing
edits with any ``producer(sample) -> image`` or batched producer (e.g. a base model + LoRA:
:class:`motionnft.generate.EditGenerator`) and keeps them as files, so producing and
scoring resume together.

Modules: :mod:`.sources` (where edits come from), :mod:`.config` (how they are scored),
:mod:`.run` (:func:`evaluate`: inputs, resume, result), :mod:`.scoring` (reward and judge per
edit), :mod:`.summary` (means and win rates), :mod:`.reports` (the output folder's files).
"""

from ..files import file_digest
from .config import JUDGE_METRICS, MOTION_FIELDS, TABLE_METRICS, WIN_METRICS, WIN_RULE, EvaluationConfig
from .reports import (PER_SAMPLE_COLUMNS, RESULTS_FILE, RUN_FILE, SUMMARY_COLUMNS, render_table,
                      write_reports)
from .run import EvaluationResult, evaluate
from .sources import (EDIT_SUFFIXES, PRODUCER_FILE, BatchEditProducer, EditFolder, EditProducer, EditSource,
                      ProducedEdits, check_produced_folder)
from .summary import compare, pairwise_outcomes, summarize

__all__ = [
    "BatchEditProducer", "EDIT_SUFFIXES", "EditFolder", "EditProducer", "EditSource", "EvaluationConfig",
    "EvaluationResult", "JUDGE_METRICS", "MOTION_FIELDS", "PER_SAMPLE_COLUMNS", "PRODUCER_FILE", "ProducedEdits",
    "RESULTS_FILE", "RUN_FILE", "SUMMARY_COLUMNS", "TABLE_METRICS", "WIN_METRICS", "WIN_RULE",
    "check_produced_folder", "compare", "evaluate", "file_digest", "pairwise_outcomes", "render_table",
    "summarize", "write_reports",
]
