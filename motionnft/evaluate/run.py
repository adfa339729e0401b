"""The evaluation run: check the inputs, resume the log of an earlier run, score, summarise, write reports."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data import EditDataset, EditSample, read_jsonl_records
from ..files import atomic_write
from ..flow.base import FlowEstimator, create_estimator
from .config import EvaluationConfig
from .reports import RESULTS_FILE, RUN_FILE, write_reports
from .scoring import score
from .sources import EditSource
from .summary import summarize


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote."""

    out_dir: Path
    records: list[dict]
    """One dict per (sample, system) with an edit, in dataset order then system order."""
    summary: dict
    files: dict[str, Path]
    missing: dict[str, list[str]]
    """Sample ids without an edit, per system."""


def evaluate(
    dataset: EditDataset | Sequence[EditSample],
    systems: Sequence[EditSource],
    out_dir: str | os.PathLike,
    config: EvaluationConfig = EvaluationConfig(),
    judge=None,
    estimator: FlowEstimator | None = None,
    limit: int | None = None,
    restart: bool = False,
    show_progress: bool = True,
) -> EvaluationResult:
    """Score every system's edits of the dataset and write the reports to ``out_dir``.

    Args:
        dataset: an :class:`~motionnft.data.EditDataset` (or any sequence of samples).
        systems: one :class:`EditSource` per system, names unique.
        judge: None (MAS only), or an object with ``rate_benchmark_metrics(input, edited,
            instruction) -> {"fidelity", "preservation", "coherence"}`` in [0, 1]
            (:class:`motionnft.judge.JudgeClient`); its ``max_concurrency`` (default 1)
            samples are judged at once while the flow of the next ones is computed.
        estimator: a ready flow estimator; default: the one ``config``'s backend, preset,
            weights, precision and device describe.
        limit: evaluate only the first ``limit`` samples.
        restart: discard earlier results in ``out_dir`` instead of resuming.

    Results are appended to ``out_dir/results.jsonl`` as they come; a rerun with the same
    configuration skips the (sample, system) pairs already scored whose edit file is
    unchanged. Reports are rewritten atomically at the end.

    Raises:
        ValueError: duplicate system names or sample ids, a judge without instructions,
            or ``out_dir`` holding results of another configuration (without ``restart``).
    """
    systems = list(systems)
    samples = _checked_samples(dataset, systems, limit)
    win_metric = config.win_metric(judge is not None)
    if judge is not None:
        _check_judge(judge, samples)
    if estimator is None:
        estimator = create_estimator(config.backend, config.preset, weights=config.weights,
                                     precision=config.precision, device=config.device)

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "dataset": _dataset_identity(dataset),
        "constants": config.constants(estimator),
        "judge": _judge_identity(judge),
    }
    records = _resume(out, run, restart)
    log = open(out / RESULTS_FILE, "ab")
    missing: dict[str, list[str]] = {s.name: [] for s in systems}
    try:
        score(samples, systems, config, judge, estimator, records, missing, log, show_progress)
    finally:
        log.close()

    current = [records[(s.id, system.name)] for s in samples for system in systems if (s.id, system.name) in records]
    summary = summarize(current, samples, systems, config, win_metric, run, missing, estimator)
    files = write_reports(out, current, summary)
    return EvaluationResult(out, current, summary, files, missing)


def _checked_samples(dataset, systems: list[EditSource], limit: int | None) -> list[EditSample]:
    """The samples to evaluate, after refusing no or repeated system names and no or repeated sample ids."""
    if not systems:
        raise ValueError("no systems to evaluate: give at least one folder of edits")
    names = [s.name for s in systems]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"system names must be unique, repeated: {', '.join(duplicates)}")
    samples = list(dataset)[: limit if limit is not None else None]
    if not samples:
        raise ValueError("the dataset has no samples to evaluate")
    ids = [s.id for s in samples]
    repeated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise ValueError(f"sample ids must be unique, repeated: {', '.join(repeated[:10])}")
    return samples


def _check_judge(judge, samples: list[EditSample]) -> None:
    """Refuse samples without an instruction (the judge rates against it) and settle the judge's model."""
    unprompted = [s.id for s in samples if not (s.prompt or "").strip()]
    if unprompted:
        raise ValueError(
            f"{len(unprompted)} sample(s) have no instruction (empty prompt), which the judge needs: "
            f"{', '.join(unprompted[:10])}{' ...' if len(unprompted) > 10 else ''}"
        )
    if hasattr(judge, "resolve_model"):
        judge.resolve_model()


def _dataset_identity(dataset) -> dict:
    root = getattr(dataset, "root", None)
    return {"root": str(Path(root).resolve()) if root is not None else None,
            "layout": getattr(dataset, "layout", None), "samples": len(dataset)}


def _judge_identity(judge) -> dict | None:
    if judge is None:
        return None
    if hasattr(judge, "describe"):
        return judge.describe()
    return {"judge": type(judge).__name__}


def _resume(out: Path, run: dict, restart: bool) -> dict[tuple[str, str], dict]:
    """Earlier records of the same configuration, keyed by (sample id, system)."""
    results, run_file = out / RESULTS_FILE, out / RUN_FILE
    # Compared as JSON, the form they are stored in.
    comparable = json.loads(json.dumps({k: v for k, v in run.items() if k != "dataset"}
                                       | {"dataset_root": run["dataset"]["root"]}, default=str))
    if restart:
        results.unlink(missing_ok=True)
    elif results.exists() and results.stat().st_size > 0:
        previous = json.loads(run_file.read_text()) if run_file.exists() else {}
        before = {k: v for k, v in previous.items() if k != "dataset"} | {
            "dataset_root": previous.get("dataset", {}).get("root")}
        if before != comparable:
            differing = sorted(k for k in comparable if before.get(k) != comparable[k])
            raise ValueError(
                f"{out} holds results of another configuration (differs in: {', '.join(differing) or 'unknown'}): "
                "pass restart (--restart) to discard them, or choose another output folder"
            )
    records: dict[tuple[str, str], dict] = {}
    if results.exists():
        for _, record in read_jsonl_records(results):
            records[(record["id"], record["system"])] = record
    # Compact the log (drops superseded lines and a torn last line) before appending.
    with atomic_write(results, "w") as handle:
        for record in records.values():
            handle.write(json.dumps(record) + "\n")
    with atomic_write(run_file, "w") as handle:
        json.dump(run, handle, indent=2, default=str)
    return records
