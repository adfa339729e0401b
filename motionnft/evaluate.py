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
"""

from __future__ import annotations

import abc
import csv
import hashlib
import json
import math
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import torch

from .data import EditDataset, EditSample, read_jsonl_records
from .files import atomic_write
from .flow.base import FlowEstimator, create_estimator
from .image import check_image_batch, load_image, save_image
from .reward import DEFAULT_REWARD_CONFIG, MASConfig, MotionRewardConfig, motion_reward

EDIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
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


# Where edits come from ---------------------------------------------------------------------
class EditSource(abc.ABC):
    """One system's edits of a dataset's samples: the plug-in point for producers of edits."""

    name: str

    @abc.abstractmethod
    def find(self, sample: EditSample) -> Path | None:
        """The file holding this system's edit of ``sample`` if it exists now (no work done)."""

    def obtain(self, sample: EditSample) -> Path | None:
        """The edit's file, producing it first if this source can; None if there is none."""
        return self.find(sample)

    @abc.abstractmethod
    def describe(self) -> dict:
        """What this source is (for reports)."""


class EditFolder(EditSource):
    """Edits as files ``<folder>/<sample id>.<png|jpg|jpeg|webp>`` (suffix in any case)."""

    def __init__(self, name: str, folder: str | os.PathLike):
        self.name = _system_name(name)
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"edits of {self.name!r}: folder not found: {self.folder}")
        self._index: dict[str, Path] = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() not in EDIT_SUFFIXES or not path.is_file():
                continue
            if path.stem in self._index:
                raise ValueError(
                    f"edits of {self.name!r}: two files for sample {path.stem!r}: "
                    f"{self._index[path.stem].name} and {path.name}; keep one"
                )
            self._index[path.stem] = path

    def find(self, sample: EditSample) -> Path | None:
        return self._index.get(sample.id)

    def unmatched(self, sample_ids) -> list[str]:
        """Image files of the folder whose name matches no sample id."""
        ids = set(sample_ids)
        return sorted(path.name for stem, path in self._index.items() if stem not in ids)

    def describe(self) -> dict:
        return {"kind": "folder", "folder": str(self.folder)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.folder)!r})"


EditProducer = Callable[[EditSample], torch.Tensor]
"""``producer(sample) -> (1, 3, H, W)`` float in [0, 1]: the edit of ``sample.input_image()``
following ``sample.prompt``."""

BatchEditProducer = Callable[..., Sequence[torch.Tensor]]
"""``producer(samples, progress=None) -> [(1, 3, H, W), ...]``, one edit per sample, with
``batched = True`` and ``batch_size`` attributes (e.g. :class:`motionnft.generate.EditGenerator`);
``progress(step, steps)``, if given, is called as a batch advances."""

PRODUCER_FILE = "produced_by.json"
"""What made a :class:`ProducedEdits` folder's edits (its ``description``), kept beside them."""


class ProducedEdits(EditFolder):
    """Edits made on demand by ``producer`` and kept as ``<folder>/<id>.png``.

    Edits already in the folder are reused, so an interrupted evaluation resumes without
    producing them again. This is how a model (e.g. a base model + LoRA sampler) is
    evaluated: wrap its sampling in a producer. :meth:`produce` makes every missing edit
    up front, in batches when the producer is batched (:data:`BatchEditProducer`); the
    evaluator otherwise makes them one at a time as it reaches them.

    A ``description`` (default: the producer's ``describe()``, if it has one) is kept in
    ``<folder>/produced_by.json``; a folder whose edits were made with another
    description is refused, so two systems are never mixed in one folder.
    """

    def __init__(self, name: str, folder: str | os.PathLike, producer: EditProducer | BatchEditProducer,
                 description: dict | None = None, batch_size: int | None = None):
        if description is None and callable(getattr(producer, "describe", None)):
            description = producer.describe()
        self.description = dict(description or {})
        folder = Path(folder).expanduser()
        check_produced_folder(folder, self.description)
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(name, folder)
        self.producer = producer
        self.batched = bool(getattr(producer, "batched", False))
        self.batch_size = int(batch_size or getattr(producer, "batch_size", 1))
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.description:
            with atomic_write(self.folder / PRODUCER_FILE, "w") as handle:
                json.dump(self.description, handle, indent=2, default=str)

    def _make(self, samples: list[EditSample], progress=None) -> list[torch.Tensor]:
        if self.batched:
            images = list(self.producer(samples, progress=progress))
        else:
            images = [self.producer(sample) for sample in samples]
        if len(images) != len(samples):
            raise ValueError(f"the producer of {self.name!r} returned {len(images)} edits for {len(samples)} samples")
        return images

    def _keep(self, sample: EditSample, image: torch.Tensor) -> Path:
        image = check_image_batch(f"edit of {sample.id} by {self.name!r}", image)
        path = save_image(image[:1], self.folder / f"{sample.id}.png")
        self._index[sample.id] = path
        return path

    def obtain(self, sample: EditSample) -> Path | None:
        path = self.find(sample)
        if path is None:
            path = self._keep(sample, self._make([sample])[0])
        return path

    def produce(self, samples: Sequence[EditSample], show_progress: bool = False) -> tuple[int, int]:
        """Make every missing edit of ``samples``, ``batch_size`` at a time; returns ``(made, existing)``.

        Each edit is written (atomically) as soon as its batch is done, so an interruption
        (Ctrl-C) loses at most the batch in progress and a rerun makes only what is missing.
        """
        from tqdm import tqdm

        samples = list(samples)
        todo = [s for s in samples if self.find(s) is None]
        bar = tqdm(total=len(todo), desc=f"editing ({self.name})", unit="edit", disable=not show_progress,
                   dynamic_ncols=True)

        def progress(step: int, steps: int) -> None:
            bar.set_postfix_str(f"step {step}/{steps}", refresh=True)

        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                for sample, image in zip(batch, self._make(batch, progress if show_progress else None)):
                    self._keep(sample, image)
                    bar.update(1)
        finally:
            bar.close()
        return len(todo), len(samples) - len(todo)

    def describe(self) -> dict:
        return {"kind": "produced", "folder": str(self.folder), **self.description}


def check_produced_folder(folder: str | os.PathLike, description: dict) -> None:
    """Refuse ``folder`` if its ``produced_by.json`` says its edits were made otherwise than ``description``.

    Raises:
        ValueError naming the settings that differ and both values.
    """
    path = Path(folder).expanduser() / PRODUCER_FILE
    if not description or not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error}); delete it if the edits beside it are yours") from None
    now = json.loads(json.dumps(description, default=str))
    if before != now:
        differing = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                     if before.get(k) != now.get(k)]
        raise ValueError(
            f"{Path(folder)} holds edits made with other settings ({'; '.join(differing)}): choose another "
            f"output folder, or delete its edits and {PRODUCER_FILE} to make them again"
        )


def _system_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\n\r|"):
        raise ValueError(f"system name {name!r}: expected a non-empty name without '|' or line breaks")
    return name.strip()


def file_digest(path: Path) -> str:
    """A short content hash of an edit file: a changed file is scored again on resume."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# Configuration -------------------------------------------------------------------------------
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


# Evaluation ---------------------------------------------------------------------------------
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
    has_judge = judge is not None
    win_metric = config.win_metric(has_judge)
    if has_judge:
        unprompted = [s.id for s in samples if not (s.prompt or "").strip()]
        if unprompted:
            raise ValueError(
                f"{len(unprompted)} sample(s) have no instruction (empty prompt), which the judge needs: "
                f"{', '.join(unprompted[:10])}{' ...' if len(unprompted) > 10 else ''}"
            )
        if hasattr(judge, "resolve_model"):
            judge.resolve_model()
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
        _score(samples, systems, config, judge, estimator, records, missing, log, show_progress)
    finally:
        log.close()

    current = [records[(s.id, system.name)] for s in samples for system in systems if (s.id, system.name) in records]
    summary = summarize(current, samples, systems, config, win_metric, run, missing, estimator)
    files = write_reports(out, current, summary)
    return EvaluationResult(out, current, summary, files, missing)


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


def _append(log, record: dict) -> None:
    log.write((json.dumps(record) + "\n").encode())
    log.flush()
    os.fsync(log.fileno())


def _score(samples, systems, config, judge, estimator, records, missing, log, show_progress) -> None:
    from tqdm import tqdm

    workers = max(1, int(getattr(judge, "max_concurrency", 1))) if judge is not None else 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-judge") if workers else None
    pending: deque[tuple[dict, Future]] = deque()

    def finish(record: dict, future: Future) -> None:
        ratings = future.result()
        for name in JUDGE_METRICS:
            if name not in ratings:
                raise ValueError(f"the judge's rate_benchmark_metrics returned no {name!r} (got {sorted(ratings)})")
            record[name] = 5.0 * float(ratings[name])
        record["overall"] = sum(record[name] for name in JUDGE_METRICS) / len(JUDGE_METRICS)
        records[(record["id"], record["system"])] = record
        _append(log, record)

    def drain(block: bool) -> None:
        while pending:
            finished = [item for item in pending if item[1].done()]
            if not finished and block:
                wait([item[1] for item in pending], return_when=FIRST_COMPLETED)
                continue
            for item in finished:
                pending.remove(item)
                finish(*item)
            return

    bar = tqdm(samples, desc="evaluating", unit="sample", disable=not show_progress, dynamic_ncols=True)
    try:
        for sample in bar:
            todo = []
            for system in systems:
                existing = system.find(sample)
                record = records.get((sample.id, system.name))
                if existing is not None and record is not None and record.get("edit_digest") == file_digest(existing):
                    continue
                records.pop((sample.id, system.name), None)
                todo.append(system)
            if not todo:
                continue
            input_image, target_image = sample.input_image(), sample.target_image()
            flow_targets: dict[tuple[int, int], torch.Tensor] = {}
            for system in todo:
                path = system.obtain(sample)
                if path is None:
                    missing[system.name].append(sample.id)
                    continue
                edited = load_image(path)
                size = tuple(edited.shape[-2:])
                result = motion_reward(input_image, edited, target_image, estimator=estimator, config=config.reward,
                                       mas_config=config.mas, flow_target=flow_targets.get(size))
                flow_targets[size] = result.flow_target
                motion = result.records()[0]
                record = {"id": sample.id, "category": sample.category, "system": system.name,
                          "edit_file": str(path), "edit_digest": file_digest(path),
                          **{key: motion[key] for key in MOTION_FIELDS}}
                if pool is None:
                    records[(sample.id, system.name)] = record
                    _append(log, record)
                else:
                    future = pool.submit(judge.rate_benchmark_metrics, input_image, edited, sample.prompt)
                    pending.append((record, future))
            if pool is not None:
                drain(block=False)
                while len(pending) > 2 * workers:
                    drain(block=True)
            bar.set_postfix_str(_running_means(records, systems), refresh=False)
        while pending:
            drain(block=True)
    except BaseException:
        # Keep what finished, drop what did not: a rerun resumes from there.
        for record, future in list(pending):
            future.cancel()
        for record, future in list(pending):
            if future.done() and not future.cancelled() and future.exception() is None:
                finish(record, future)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _running_means(records: dict, systems) -> str:
    parts = []
    for system in systems:
        values = [r["mas"] for (_, name), r in records.items() if name == system.name]
        if values:
            parts.append(f"{system.name} MAS {sum(values) / len(values):.1f}")
    return ", ".join(parts)


# Summaries ----------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _aggregate(records: list[dict]) -> dict:
    out = {"n": len(records)}
    for key in TABLE_METRICS + ("d_mag", "d_dir", "m_move", "reward", "reward_continuous"):
        out[key] = _mean(r.get(key) for r in records)
    out["mas_hard_failures"] = sum(1 for r in records if r.get("mas_hard_failure"))
    return out


def compare(value_a: float, value_b: float, tie_tolerance: float = 0.0) -> float:
    """The outcome for A of one comparison: 1 (A wins), 0.5 (tie) or 0 (B wins)."""
    if abs(value_a - value_b) <= tie_tolerance:
        return 0.5
    return 1.0 if value_a > value_b else 0.0


def pairwise_outcomes(records: list[dict], metric: str, tie_tolerance: float) -> list[dict]:
    """Every comparison of two systems on a sample both edited (systems in first-seen order)."""
    by_sample: dict[str, dict[str, dict]] = {}
    order: list[str] = []
    for record in records:
        by_sample.setdefault(record["id"], {})[record["system"]] = record
        if record["system"] not in order:
            order.append(record["system"])
    rows = []
    for sample_id, systems in by_sample.items():
        for a, b in combinations([name for name in order if name in systems], 2):
            value_a, value_b = systems[a].get(metric), systems[b].get(metric)
            if value_a is None or value_b is None:
                continue
            rows.append({"id": sample_id, "category": systems[a].get("category"), "system_a": a, "system_b": b,
                         "metric": metric, "value_a": value_a, "value_b": value_b,
                         "outcome_a": compare(value_a, value_b, tie_tolerance)})
    return rows


def _win_table(rows: list[dict], names: list[str]) -> tuple[dict, dict]:
    """(win rate per system in percent or None, per-pair counts)."""
    points = {name: 0.0 for name in names}
    games = {name: 0 for name in names}
    pairs: dict[str, dict] = {}
    for row in rows:
        a, b, outcome = row["system_a"], row["system_b"], row["outcome_a"]
        points[a] += outcome
        points[b] += 1.0 - outcome
        games[a] += 1
        games[b] += 1
        pair = pairs.setdefault(f"{a} vs {b}", {"system_a": a, "system_b": b, "n": 0, "wins_a": 0, "ties": 0, "wins_b": 0})
        pair["n"] += 1
        pair["wins_a" if outcome == 1.0 else "wins_b" if outcome == 0.0 else "ties"] += 1
    for pair in pairs.values():
        pair["win_rate_a_percent"] = 100.0 * (pair["wins_a"] + 0.5 * pair["ties"]) / pair["n"]
    rates = {name: (100.0 * points[name] / games[name] if games[name] else None) for name in names}
    return rates, pairs


def summarize(records, samples, systems, config: EvaluationConfig, win_metric: str, run: dict,
              missing: dict[str, list[str]], estimator=None) -> dict:
    """Means per system (overall and per category), win rates, and the constants used."""
    names = [s.name for s in systems]
    categories = sorted({s.category for s in samples if s.category is not None}, key=str)
    rows = pairwise_outcomes(records, win_metric, config.tie_tolerance)
    win_rates, pairs = _win_table(rows, names)
    summary_systems = {}
    for system in systems:
        mine = [r for r in records if r["system"] == system.name]
        entry = {"source": system.describe(), "overall": _aggregate(mine), "categories": {},
                 "missing": list(missing.get(system.name, []))}
        entry["overall"]["win_rate_percent"] = win_rates[system.name]
        for category in categories:
            in_category = [r for r in mine if r.get("category") == category]
            entry["categories"][category] = _aggregate(in_category)
            rates, _ = _win_table([row for row in rows if row["category"] == category], names)
            entry["categories"][category]["win_rate_percent"] = rates[system.name]
        if isinstance(system, EditFolder):
            entry["unmatched_files"] = system.unmatched(s.id for s in samples)[:50]
        summary_systems[system.name] = entry
    judge = run.get("judge")
    return {
        "dataset": run["dataset"],
        "evaluated_samples": len(samples),
        "categories": {c: sum(1 for s in samples if s.category == c) for c in categories},
        "constants": run["constants"],
        "judge": judge,
        "units": {"fidelity": "expected judge rating 0-5", "preservation": "expected judge rating 0-5",
                  "coherence": "expected judge rating 0-5", "overall": "mean of the three judge ratings, 0-5",
                  "mas": "Motion Alignment Score 0-100", "win_rate_percent": "percent of comparisons won"},
        "win_rule": {"metric": win_metric, "tie_tolerance": config.tie_tolerance, "rule": WIN_RULE},
        "systems": summary_systems,
        "pairs": list(pairs.values()),
        "pairwise_rows": rows,
    }


# Reports ------------------------------------------------------------------------------------
PER_SAMPLE_COLUMNS = ("id", "category", "system", "mas", "mas_hard_failure", "d_mag", "d_dir", "m_move", "combined",
                      "reward", "reward_continuous", "motion_edit", "motion_target") + JUDGE_METRICS + ("overall", "edit_file")
SUMMARY_COLUMNS = ("system", "category", "n") + TABLE_METRICS + ("win_rate_percent", "mas_hard_failures", "missing")


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> Path:
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def write_reports(out: Path, records: list[dict], summary: dict) -> dict[str, Path]:
    """per_sample.csv, pairwise.csv, summary.csv, summary.json and table.md, atomically."""
    files = {"results": out / RESULTS_FILE}
    files["per_sample"] = _write_csv(out / "per_sample.csv", PER_SAMPLE_COLUMNS, records)
    files["pairwise"] = _write_csv(out / "pairwise.csv", ("id", "category", "system_a", "system_b", "metric",
                                                          "value_a", "value_b", "outcome_a"), summary["pairwise_rows"])
    rows = []
    for name, entry in summary["systems"].items():
        rows.append({"system": name, "category": "all", "missing": len(entry["missing"]), **entry["overall"]})
        for category, values in entry["categories"].items():
            rows.append({"system": name, "category": category, **values})
    files["summary_csv"] = _write_csv(out / "summary.csv", SUMMARY_COLUMNS, rows)
    public = {k: v for k, v in summary.items() if k != "pairwise_rows"}
    with atomic_write(out / "summary.json", "w") as handle:
        json.dump(public, handle, indent=2, default=str)
    files["summary_json"] = out / "summary.json"
    with atomic_write(out / "table.md", "w") as handle:
        handle.write(render_table(summary))
    files["table"] = out / "table.md"
    return files


def _cell(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def render_table(summary: dict) -> str:
    """Markdown laid out like the paper's Table 1, a per-category table, and the constants."""
    judge = summary.get("judge")
    lines = ["# MotionEdit-Bench style evaluation", ""]
    lines.append("| Model | Fidelity ↑ | Preservation ↑ | Coherence ↑ | Overall ↑ | MAS ↑ | Win Rate ↑ | n |")
    lines.append("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for name, entry in summary["systems"].items():
        o = entry["overall"]
        lines.append(f"| {name} | {_cell(o['fidelity'])} | {_cell(o['preservation'])} | {_cell(o['coherence'])} | "
                     f"{_cell(o['overall'])} | {_cell(o['mas'])} | {_cell(o['win_rate_percent'])} | {o['n']} |")
    lines.append("")
    constants = summary["constants"]
    mas, flow = constants["mas"], constants["flow"]
    dataset = summary["dataset"]
    lines.append(f"- Samples: {summary['evaluated_samples']} of {dataset['samples']} in {dataset['root']} "
                 f"({dataset['layout']} layout); `n` = samples a system has an edit for.")
    for name, entry in summary["systems"].items():
        if entry["missing"]:
            shown = ", ".join(entry["missing"][:10]) + (" ..." if len(entry["missing"]) > 10 else "")
            lines.append(f"- **{name}: {len(entry['missing'])} edit(s) missing** ({shown}).")
    if judge:
        lines.append(f"- Fidelity, Preservation, Coherence: expected 0–5 rating (digit probabilities of the first "
                     f"answer token, renormalised over 0–5) by `{judge.get('model')}` at {judge.get('url')} "
                     f"(prompts {judge.get('prompts')}); Overall = their mean.")
    else:
        lines.append("- Fidelity, Preservation, Coherence, Overall: – (no judge configured).")
    lines.append(f"- MAS: 0–100 with alpha={mas['alpha']:g}, d_min={mas['d_min']:.6g}, d_max={mas['d_max']:g}, "
                 f"0 when the edit moves less than {mas['hard_failure_ratio']:g}x the ground truth; flow "
                 f"`{flow['backend']}` preset `{flow['preset'] or 'default'}`"
                 + (f" weights `{flow['weights']}` ({flow['precision']})" if flow.get("weights") else "")
                 + "; reward terms variant "
                 f"`{constants['reward']['variant']}`.")
    win = summary["win_rule"]
    metric = "judge Overall" if win["metric"] == "overall" else "MAS"
    lines.append(f"- Win rate (compared by {metric}, tie tolerance {win['tie_tolerance']:g}): {win['rule']}")
    if len(summary["systems"]) < 2:
        lines.append("- (one system: no win rate)")
    categories = summary["categories"]
    if categories:
        lines += ["", "## By category", ""]
        header = ["Category", "n"]
        for name in summary["systems"]:
            header += [f"{name} MAS"] + ([f"{name} Overall"] if judge else []) + (
                [f"{name} Win"] if len(summary["systems"]) > 1 else [])
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|:--|" + "--:|" * (len(header) - 1))
        for category, count in categories.items():
            cells = [str(category), str(count)]
            for entry in summary["systems"].values():
                values = entry["categories"][category]
                cells.append(_cell(values["mas"]))
                if judge:
                    cells.append(_cell(values["overall"]))
                if len(summary["systems"]) > 1:
                    cells.append(_cell(values["win_rate_percent"]))
            lines.append("| " + " | ".join(cells) + " |")
    if summary["pairs"]:
        lines += ["", "## Pairwise", "", "| A | B | n | A wins | ties | B wins | A win rate |", "|:--|:--|--:|--:|--:|--:|--:|"]
        for pair in summary["pairs"]:
            lines.append(f"| {pair['system_a']} | {pair['system_b']} | {pair['n']} | {pair['wins_a']} | {pair['ties']} | "
                         f"{pair['wins_b']} | {_cell(pair['win_rate_a_percent'])} |")
    return "\n".join(lines) + "\n"
