"""MotionEdit-Bench style evaluation: MAS, judge ratings, win rates, reports, resume."""

from __future__ import annotations

import csv
import json
import socket

import numpy as np
import pytest
import torch
from fake_judge_server import Answer, FakeJudgeServer

from motionnft.cli import main
from motionnft.data import DatasetWriter, open_dataset
from motionnft.evaluate import EditFolder, EvaluationConfig, ProducedEdits, compare, evaluate
from motionnft.flow import create_estimator
from motionnft.image import save_image
from motionnft.judge import JudgeClient, JudgeResponseError
from motionnft.reward import MotionRewardConfig
from motionnft.synthetic import FigurePose, render_scene

SIZE = (64, 80)
CATEGORIES = ["pose", "locomotion", "pose"]


class CountingEstimator:
    """A flow estimator that counts the pairs it is asked for."""

    def __init__(self):
        self.inner = create_estimator("dis", "fast")
        self.preset = "fast"
        self.pairs = 0

    def __call__(self, image1, image2, progress=None):
        self.pairs += max(image1.shape[0], image2.shape[0])
        return self.inner(image1, image2, progress)


@pytest.fixture(scope="module")
def scenes():
    pairs = []
    for index in range(len(CATEGORIES)):
        start = FigurePose(x=0.4 + 0.02 * index)
        goal = start.moved(dx=0.05, arm=30 + 10 * index)
        pairs.append((render_scene(start, SIZE, seed=index), render_scene(goal, SIZE, seed=index)))
    return pairs


@pytest.fixture
def bench(tmp_path, scenes):
    """A 3-sample dataset and three systems: perfect edits, unchanged inputs, and a copy of the perfect ones."""
    root = tmp_path / "bench"
    folders = {name: tmp_path / name for name in ("perfect", "static", "twin")}
    for folder in folders.values():
        folder.mkdir()
    with DatasetWriter(root) as writer:
        for index, category in enumerate(CATEGORIES):
            source, target = scenes[index]
            sample_id = f"s{index}"
            writer.add(sample_id, f"move the figure right and raise its arm ({index})", source, target, category=category)
            save_image(target, folders["perfect"] / f"{sample_id}.png")
            save_image(target, folders["twin"] / f"{sample_id}.png")
            save_image(source, folders["static"] / f"{sample_id}.PNG")  # suffixes match in any case
    return root, folders


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def systems(folders, *names):
    return [EditFolder(name, folders[name]) for name in names]


def test_mas_only_evaluation_scores_ranks_and_reports(bench, tmp_path):
    root, folders = bench
    out = tmp_path / "out"
    result = evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, show_progress=False)
    by = {(r["id"], r["system"]): r for r in result.records}
    assert len(by) == 6
    for index in range(3):
        assert by[(f"s{index}", "perfect")]["mas"] == pytest.approx(100.0)
        static = by[(f"s{index}", "static")]
        assert static["mas"] == 0.0 and static["mas_hard_failure"] is True
        assert "fidelity" not in static
    systems_summary = result.summary["systems"]
    assert systems_summary["perfect"]["overall"]["win_rate_percent"] == 100.0
    assert systems_summary["static"]["overall"]["win_rate_percent"] == 0.0
    assert systems_summary["perfect"]["categories"]["pose"]["n"] == 2
    assert systems_summary["perfect"]["categories"]["locomotion"]["n"] == 1
    assert result.summary["win_rule"]["metric"] == "mas"

    per_sample = read_csv(out / "per_sample.csv")
    assert len(per_sample) == 6 and per_sample[0]["id"] == "s0" and per_sample[0]["system"] == "perfect"
    assert per_sample[0]["fidelity"] == ""
    pairwise = read_csv(out / "pairwise.csv")
    assert [(r["system_a"], r["system_b"], float(r["outcome_a"])) for r in pairwise] == [("perfect", "static", 1.0)] * 3
    summary_rows = read_csv(out / "summary.csv")
    assert {(r["system"], r["category"]) for r in summary_rows} == {
        (s, c) for s in ("perfect", "static") for c in ("all", "pose", "locomotion")}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["constants"]["mas"]["alpha"] == 0.7 and saved["constants"]["flow"]["backend"] == "dis"

    table = (out / "table.md").read_text()
    assert "| Model | Fidelity ↑ | Preservation ↑ | Coherence ↑ | Overall ↑ | MAS ↑ | Win Rate ↑ | n |" in table
    assert "| perfect | – | – | – | – | 100.00 | 100.00 | 3 |" in table
    assert "| static | – | – | – | – | 0.00 | 0.00 | 3 |" in table
    assert "alpha=0.7, d_min=0.00398107, d_max=1" in table and "no judge configured" in table
    assert "## By category" in table and "| pose | 2 |" in table


def test_identical_systems_tie_and_ties_count_half(bench, tmp_path):
    root, folders = bench
    result = evaluate(open_dataset(root), systems(folders, "perfect", "twin"), tmp_path / "out", show_progress=False)
    assert result.summary["systems"]["perfect"]["overall"]["win_rate_percent"] == 50.0
    assert result.summary["pairs"] == [{"system_a": "perfect", "system_b": "twin", "n": 3, "wins_a": 0, "ties": 3,
                                        "wins_b": 0, "win_rate_a_percent": 50.0}]
    assert compare(0.5, 0.52, tie_tolerance=0.05) == 0.5 and compare(0.6, 0.5) == 1.0 and compare(0.4, 0.5) == 0.0


def test_missing_edits_are_reported_and_left_out_of_comparisons(bench, tmp_path):
    root, folders = bench
    (folders["static"] / "s1.PNG").unlink()
    (folders["static"] / "notes.png").write_bytes((folders["perfect"] / "s0.png").read_bytes())
    result = evaluate(open_dataset(root), systems(folders, "perfect", "static"), tmp_path / "out", show_progress=False)
    static = result.summary["systems"]["static"]
    assert static["missing"] == ["s1"] and static["overall"]["n"] == 2
    assert static["unmatched_files"] == ["notes.png"]
    assert result.summary["pairs"][0]["n"] == 2
    table = (tmp_path / "out" / "table.md").read_text()
    assert "**static: 1 edit(s) missing** (s1)" in table


def test_a_rerun_resumes_and_rescores_only_changed_edits(bench, tmp_path):
    root, folders = bench
    out = tmp_path / "out"
    estimator = CountingEstimator()
    config = EvaluationConfig(preset="fast")
    evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, config, estimator=estimator, show_progress=False)
    assert estimator.pairs == 3 * 3  # per sample: the target flow once, one flow per system
    estimator.pairs = 0
    again = evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, config, estimator=estimator,
                     show_progress=False)
    assert estimator.pairs == 0 and len(again.records) == 6
    save_image(torch.rand(1, 3, *SIZE), folders["static"] / "s2.PNG")
    evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, config, estimator=estimator, show_progress=False)
    assert estimator.pairs == 2  # the target flow and the changed edit of s2
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 7  # superseded lines are only dropped when the next run compacts the log

    with pytest.raises(ValueError, match="another configuration.*constants.*--restart"):
        evaluate(open_dataset(root), systems(folders, "perfect"), out,
                 EvaluationConfig(preset="fast", reward=MotionRewardConfig(variant="paper")), show_progress=False)
    fresh = evaluate(open_dataset(root), systems(folders, "perfect"), out,
                     EvaluationConfig(preset="fast", reward=MotionRewardConfig(variant="paper")), restart=True,
                     show_progress=False)
    assert len(fresh.records) == 3
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_produced_edits_are_made_once_and_kept(bench, tmp_path):
    root, _ = bench
    dataset = open_dataset(root)
    calls = []

    def producer(sample):
        calls.append(sample.id)
        return sample.target_image()

    source = ProducedEdits("model", tmp_path / "made", producer, {"model": "target copier"})
    result = evaluate(dataset, [source], tmp_path / "out", show_progress=False)
    assert calls == ["s0", "s1", "s2"]
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["produced_by.json", "s0.png", "s1.png", "s2.png"]
    assert json.loads((tmp_path / "made" / "produced_by.json").read_text()) == {"model": "target copier"}
    assert all(r["mas"] == pytest.approx(100.0) for r in result.records)
    assert result.summary["systems"]["model"]["source"]["model"] == "target copier"
    evaluate(dataset, [ProducedEdits("model", tmp_path / "made", producer)], tmp_path / "out", show_progress=False)
    assert calls == ["s0", "s1", "s2"]


def test_the_hugging_face_parquet_layout_is_evaluated(bench, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root, folders = bench
    samples = open_dataset(root)
    (tmp_path / "hf" / "data").mkdir(parents=True)
    table = pa.table({
        "id": [s.id for s in samples],
        "prompt": [s.prompt for s in samples],
        "input_image": [{"bytes": s.input_source.read_bytes(), "path": None} for s in samples],
        "target_image": [{"bytes": s.target_source.read_bytes(), "path": None} for s in samples],
        "category": [s.category for s in samples],
    })
    pq.write_table(table, tmp_path / "hf" / "data" / "test-00000-of-00001.parquet")
    result = evaluate(open_dataset(tmp_path / "hf"), systems(folders, "perfect"), tmp_path / "out", show_progress=False)
    assert [r["mas"] for r in result.records] == pytest.approx([100.0] * 3)
    assert result.summary["dataset"]["layout"] == "parquet"
    assert set(result.summary["categories"]) == {"pose", "locomotion"}


# With a judge --------------------------------------------------------------------------------
def judge_by_difference(request):
    """Fidelity rises with how much the edit differs from the input; the other ratings are fixed."""
    first, second = (np.asarray(image, dtype=np.float32) / 255 for image in request.images)
    if "INSTRUCTION FIDELITY" in request.text:
        moved = np.abs(first - second).mean() > 0.01
        return Answer(digits={"4": 0.5, "5": 0.5} if moved else {"0": 0.8, "1": 0.2})
    if "PRESERVATION" in request.text:
        return Answer(digits={"4": 1.0})
    return Answer(digits={"3": 0.5, "5": 0.5})


def test_judge_ratings_fill_table_1_and_decide_the_win_rate(bench, tmp_path):
    root, folders = bench
    out = tmp_path / "out"
    with FakeJudgeServer(default=judge_by_difference) as server:
        judge = JudgeClient(server.url, "fake-judge", max_concurrency=3, cache_dir=out / "judge-cache")
        result = evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, judge=judge,
                          show_progress=False)
        assert len(server.chat_requests()) == 3 * 3 * 2
        assert server.max_in_flight <= 3
        record = next(r for r in result.records if r["system"] == "perfect")
        assert record["fidelity"] == pytest.approx(4.5)
        assert record["preservation"] == pytest.approx(4.0) and record["coherence"] == pytest.approx(4.0)
        assert record["overall"] == pytest.approx((4.5 + 4.0 + 4.0) / 3)
        static = next(r for r in result.records if r["system"] == "static")
        assert static["fidelity"] == pytest.approx(0.2)
        assert result.summary["win_rule"]["metric"] == "overall"
        assert {r["metric"] for r in read_csv(out / "pairwise.csv")} == {"overall"}
        table = (out / "table.md").read_text()
        assert "| perfect | 4.50 | 4.00 | 4.00 | 4.17 | 100.00 | 100.00 | 3 |" in table
        assert "`fake-judge`" in table and server.url in table
        # A fresh evaluation of the same edits is answered by the cache.
        evaluate(open_dataset(root), systems(folders, "perfect", "static"), out, judge=judge, restart=True,
                 show_progress=False)
        assert len(server.chat_requests()) == 18


def test_a_judge_failure_keeps_finished_results_and_a_rerun_resumes(bench, tmp_path):
    root, folders = bench
    out = tmp_path / "out"
    with FakeJudgeServer(default=judge_by_difference) as server:
        server.add_rule("(2)", Answer(digits={"4": 1.0}, logprobs=False))  # every rating of sample s2 fails
        judge = JudgeClient(server.url, "fake-judge", max_concurrency=1, max_retries=0)
        with pytest.raises(JudgeResponseError, match="no log-probabilities"):
            evaluate(open_dataset(root), systems(folders, "perfect"), out, judge=judge, show_progress=False)
        kept = [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()]
        assert kept == ["s0", "s1"]
        server.rules.clear()
        before = len(server.chat_requests())
        result = evaluate(open_dataset(root), systems(folders, "perfect"), out, judge=judge, show_progress=False)
        assert len(server.chat_requests()) - before == 3  # only s2 is judged again
        assert [r["id"] for r in result.records] == ["s0", "s1", "s2"]


def test_a_judge_needs_instructions_and_win_by_judge_needs_a_judge(bench, tmp_path):
    root, folders = bench
    records = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    records[1]["prompt"] = ""
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    class NeverCalled:
        def rate_benchmark_metrics(self, *args):
            raise AssertionError("not to be called")

    with pytest.raises(ValueError, match="no instruction.*s1"):
        evaluate(open_dataset(root), systems(folders, "perfect"), tmp_path / "out", judge=NeverCalled(), show_progress=False)
    with pytest.raises(ValueError, match="win_by='judge' needs a judge"):
        evaluate(open_dataset(root), systems(folders, "perfect"), tmp_path / "out", EvaluationConfig(win_by="judge"),
                 show_progress=False)
    with pytest.raises(ValueError, match="unique"):
        evaluate(open_dataset(root), systems(folders, "perfect", "perfect"), tmp_path / "out", show_progress=False)


# Command line --------------------------------------------------------------------------------
def test_cli_eval_prints_the_table_and_writes_the_files(bench, tmp_path, capsys):
    root, folders = bench
    out = tmp_path / "out"
    code = main(["eval", str(root), "--edits", f"ours={folders['perfect']}", "--edits", str(folders["static"]),
                 "--out", str(out), "--preset", "fast", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ours | – | – | – | – | 100.00 | 100.00 | 3 |" in printed and "| static |" in printed
    for name in ("results.jsonl", "per_sample.csv", "pairwise.csv", "summary.csv", "summary.json", "table.md", "run.json"):
        assert (out / name).is_file(), name


def test_cli_eval_explains_missing_inputs_and_an_unreachable_judge(bench, tmp_path, capsys):
    root, folders = bench
    assert main(["eval", str(root), "--edits", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    (folders["static"] / "s0.PNG").unlink()
    assert main(["eval", str(root), "--edits", str(folders["static"]), "--out", str(tmp_path / "o"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "1 sample(s) have no edit (s0)" in err and "--strict" in err
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    code = main(["eval", str(root), "--edits", str(folders["perfect"]), "--out", str(tmp_path / "o2"), "--quiet",
                 "--judge-url", url, "--judge-model", "m", "--judge-retries", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach the judge server" in err and url in err


def test_cli_judge_rates_one_edit(bench, tmp_path, capsys):
    root, folders = bench
    sample = open_dataset(root)[0]
    with FakeJudgeServer(default=judge_by_difference) as server:
        code = main(["judge", str(sample.input_source), str(folders["perfect"] / "s0.png"),
                     "--instruction", sample.prompt, "--judge-url", server.url, "--json"])
        assert code == 0
        payload = json.loads(capsys.readouterr().out)
        assert payload["ratings_0_5"]["fidelity"] == pytest.approx(4.5)
        assert payload["training_reward"] == pytest.approx(0.8)
        assert payload["judge"]["model"] == "fake-judge"
        assert main(["judge", "--judge-url", server.url, "--list-models"]) == 0
        assert capsys.readouterr().out.split() == ["fake-judge"]


def test_edit_files_match_ids_by_stem_and_duplicates_are_refused(tmp_path):
    from motionnft.data import EditSample

    folder = tmp_path / "edits"
    folder.mkdir()
    save_image(torch.rand(1, 3, 8, 8), folder / "a.webp")
    save_image(torch.rand(1, 3, 8, 8), folder / "b.JPG")
    (folder / "c.txt").write_text("not an image")
    source = EditFolder("x", folder)
    sample = lambda i: EditSample(i, "p", tmp_path / "in.png", tmp_path / "t.png")  # noqa: E731
    assert source.find(sample("a")).name == "a.webp" and source.find(sample("b")).name == "b.JPG"
    assert source.find(sample("c")) is None
    save_image(torch.rand(1, 3, 8, 8), folder / "a.png")
    with pytest.raises(ValueError, match="two files for sample 'a': a.png and a.webp"):
        EditFolder("x", folder)


def test_the_reported_mas_constants_are_the_ones_the_scores_used():
    """A code-built config with another eps/q reports d_min = eps^q, not the default's."""
    config = EvaluationConfig(preset="fast", reward=MotionRewardConfig(eps=1e-4, q=0.5))
    assert config.constants()["mas"]["d_min"] == pytest.approx(1e-2)
    assert EvaluationConfig(preset="fast").constants()["mas"]["d_min"] == pytest.approx(1e-6 ** 0.4)
