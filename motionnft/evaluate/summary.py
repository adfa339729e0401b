"""Means per system and category, pairwise comparisons and win rates, from the scored records."""

from __future__ import annotations

from itertools import combinations

from .config import TABLE_METRICS, WIN_RULE, EvaluationConfig
from .sources import EditFolder


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

