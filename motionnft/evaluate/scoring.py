"""Scoring each (sample, system) pair: the motion reward and MAS, and the judge's ratings in a thread pool."""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from ..image import load_image
from ..reward import motion_reward
from .config import JUDGE_METRICS, MOTION_FIELDS
from ..files import file_digest


def _append(log, record: dict) -> None:
    log.write((json.dumps(record) + "\n").encode())
    log.flush()
    os.fsync(log.fileno())


def score(samples, systems, config, judge, estimator, records, missing, log, show_progress) -> None:
    """Score every pair of ``samples`` x ``systems`` not in ``records`` (or whose edit changed).

    Fills ``records`` (keyed by (sample id, system)) and ``missing`` (sample ids without an
    edit, per system) and appends each finished record to ``log`` at once.
    """
    from tqdm import tqdm

    scorer = _Scorer(config, judge, estimator, records, missing, log)
    bar = tqdm(samples, desc="evaluating", unit="sample", disable=not show_progress, dynamic_ncols=True)
    try:
        for sample in bar:
            if scorer.score_sample(sample, systems):
                bar.set_postfix_str(_running_means(records, systems), refresh=False)
        while scorer.pending:
            scorer.drain(block=True)
    except BaseException:
        scorer.keep_finished()
        raise
    finally:
        bar.close()
        scorer.close()


class _Scorer:
    """Computes flows in this thread while up to ``judge.max_concurrency`` judge requests run in a pool."""

    def __init__(self, config, judge, estimator, records: dict, missing: dict, log):
        self.config, self.judge, self.estimator = config, judge, estimator
        self.records, self.missing, self.log = records, missing, log
        self.workers = max(1, int(getattr(judge, "max_concurrency", 1))) if judge is not None else 0
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="eval-judge") if self.workers else None
        self.pending: deque[tuple[dict, Future]] = deque()

    def score_sample(self, sample, systems) -> bool:
        """Score ``sample``'s edits that are not scored yet; False if there was nothing to do."""
        todo = []
        for system in systems:
            existing = system.find(sample)
            record = self.records.get((sample.id, system.name))
            if existing is not None and record is not None and record.get("edit_digest") == file_digest(existing):
                continue
            self.records.pop((sample.id, system.name), None)
            todo.append(system)
        if not todo:
            return False
        input_image, target_image = sample.input_image(), sample.target_image()
        flow_targets: dict[tuple[int, int], torch.Tensor] = {}
        for system in todo:
            path = system.obtain(sample)
            if path is None:
                self.missing[system.name].append(sample.id)
                continue
            edited = load_image(path)
            size = tuple(edited.shape[-2:])
            result = motion_reward(input_image, edited, target_image, estimator=self.estimator,
                                   config=self.config.reward, mas_config=self.config.mas,
                                   flow_target=flow_targets.get(size))
            flow_targets[size] = result.flow_target
            motion = result.records()[0]
            record = {"id": sample.id, "category": sample.category, "system": system.name,
                      "edit_file": str(path), "edit_digest": file_digest(path),
                      **{key: motion[key] for key in MOTION_FIELDS}}
            if self.pool is None:
                self.records[(sample.id, system.name)] = record
                _append(self.log, record)
            else:
                future = self.pool.submit(self.judge.rate_benchmark_metrics, input_image, edited, sample.prompt)
                self.pending.append((record, future))
        if self.pool is not None:
            self.drain(block=False)
            while len(self.pending) > 2 * self.workers:
                self.drain(block=True)
        return True

    def finish(self, record: dict, future: Future) -> None:
        ratings = future.result()
        for name in JUDGE_METRICS:
            if name not in ratings:
                raise ValueError(f"the judge's rate_benchmark_metrics returned no {name!r} (got {sorted(ratings)})")
            record[name] = 5.0 * float(ratings[name])
        record["overall"] = sum(record[name] for name in JUDGE_METRICS) / len(JUDGE_METRICS)
        self.records[(record["id"], record["system"])] = record
        _append(self.log, record)

    def drain(self, block: bool) -> None:
        while self.pending:
            finished = [item for item in self.pending if item[1].done()]
            if not finished and block:
                wait([item[1] for item in self.pending], return_when=FIRST_COMPLETED)
                continue
            for item in finished:
                self.pending.remove(item)
                self.finish(*item)
            return

    def keep_finished(self) -> None:
        """Keep what finished, drop what did not: a rerun resumes from there."""
        for record, future in list(self.pending):
            future.cancel()
        for record, future in list(self.pending):
            if future.done() and not future.cancelled() and future.exception() is None:
                self.finish(record, future)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _running_means(records: dict, systems) -> str:
    parts = []
    for system in systems:
        values = [r["mas"] for (_, name), r in records.items() if name == system.name]
        if values:
            parts.append(f"{system.name} MAS {sum(values) / len(values):.1f}")
    return ", ".join(parts)
