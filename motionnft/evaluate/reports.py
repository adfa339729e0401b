"""The files of an evaluation's output folder: the log's name, the CSV files, summary.json and table.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

from ..files import atomic_write
from .config import JUDGE_METRICS, TABLE_METRICS

RESULTS_FILE = "results.jsonl"
"""The resumable log: one JSON record per scored (sample, system), appended as they come."""
RUN_FILE = "run.json"
"""What the log's records were computed with (dataset, constants, judge): a rerun must match it to resume."""
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
    lines += _category_table(summary, judge)
    lines += _pairwise_table(summary)
    return "\n".join(lines) + "\n"


def _category_table(summary: dict, judge) -> list[str]:
    """Per category: MAS, and the judge's Overall and the win rate where there are any."""
    lines: list[str] = []
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
    return lines


def _pairwise_table(summary: dict) -> list[str]:
    lines: list[str] = []
    if summary["pairs"]:
        lines += ["", "## Pairwise", "", "| A | B | n | A wins | ties | B wins | A win rate |", "|:--|:--|--:|--:|--:|--:|--:|"]
        for pair in summary["pairs"]:
            lines.append(f"| {pair['system_a']} | {pair['system_b']} | {pair['n']} | {pair['wins_a']} | {pair['ties']} | "
                         f"{pair['wins_b']} | {_cell(pair['win_rate_a_percent'])} |")
    return lines
