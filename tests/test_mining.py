"""Mining training pairs from video: what the filters keep and reject, the dataset, resuming."""

from __future__ import annotations

import json
import math
import weakref

import numpy as np
import pytest
import torch
from mining_clips import CLIP_FPS, CLIP_SIZE, clip, clip_frames, write_clip

from motionnft.data import open_dataset
from motionnft.mining import (
    REASONS,
    MiningConfig,
    MiningSource,
    MiningSummary,
    PairMiner,
    frames_source,
    mine,
    pair_id,
    video_source,
)
from motionnft.report import render_contact_sheet
from motionnft.video import VideoFrame, sample_frames

DIAGONAL = math.hypot(*CLIP_SIZE)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One 3.5 s clip of each kind (a single 3 s window each) and a 6.5 s subject clip."""
    folder = tmp_path_factory.mktemp("clips")
    paths = {kind: write_clip(folder / f"{kind}.mp4", kind) for kind in ("subject", "pan", "cut", "still")}
    paths["long"] = write_clip(folder / "long.mp4", "subject", seconds=6.5, seed=4)
    return paths


def only_pair(path, **settings):
    (result,) = list(PairMiner(MiningConfig(**settings)).mine(video_source(path)))
    return result


# Quality: the four kinds of footage --------------------------------------------------------


def test_a_subject_moving_over_a_static_background_is_kept(clips):
    result = only_pair(clips["subject"])
    assert result.kept, result.details
    assert result.reasons == [] and result.details == []
    assert (result.time_input, result.time_target) == (0.0, 3.0)
    assert result.metrics["camera_motion"] < 0.002
    # The measured subject motion is of the size of the exact one (the scene's ground truth),
    # normalised by the diagonal over the pixels that move.
    truth = clip("subject").flow(0.0, 3.0).norm(dim=0) / DIAGONAL
    exact = float(truth[truth > 0].mean())
    assert 0.45 * exact < result.metrics["motion"] < 1.2 * exact
    exact_area = float((truth > 0).float().mean())
    assert exact_area < result.metrics["moving_fraction"] < 4 * exact_area


def test_the_same_action_under_a_panning_camera_is_rejected_as_camera_motion(clips):
    result = only_pair(clips["pan"])
    assert not result.kept
    assert result.reasons == ["camera_motion"]
    # The camera panned 0.06 of the width per second for 3 s.
    pan = 0.06 * CLIP_SIZE[1] * 3.0 / DIAGONAL
    assert result.metrics["camera_motion"] == pytest.approx(pan, rel=0.15)
    # With the camera removed, the subject's own motion is still seen.
    assert result.metrics["motion"] > MiningConfig().min_motion


def test_a_hard_cut_is_rejected(clips):
    result = only_pair(clips["cut"])
    assert not result.kept
    assert "shot_cut" in result.reasons
    assert result.metrics["cut_score"] > 1.5 * MiningConfig().max_cut_score
    subject = only_pair(clips["subject"])
    assert subject.metrics["cut_score"] < MiningConfig().max_cut_score / 4


def test_a_still_scene_is_rejected_for_lack_of_motion(clips):
    result = only_pair(clips["still"])
    assert not result.kept
    assert set(result.reasons) == {"too_little_motion", "moving_area_too_small"}
    assert result.metrics["motion"] < 0.005 and result.metrics["camera_motion"] == 0.0


# Every threshold is a parameter, and every failed one is recorded --------------------------


def test_a_threshold_decides_its_own_rejection(clips):
    assert only_pair(clips["pan"], max_camera_motion=1.0).kept
    assert only_pair(clips["still"], min_motion=0.0, min_moving_fraction=0.0).kept
    subject = only_pair(clips["subject"], min_motion=0.0, max_motion=0.03)
    assert subject.reasons == ["too_much_motion"]
    assert "motion" in subject.details[0] and "> max 0.03" in subject.details[0]


def test_a_rejected_pair_records_every_failed_check(clips):
    result = only_pair(clips["still"], min_sharpness=1e9, max_brightness=0.1, min_brightness=0.0)
    assert set(result.reasons) == {"too_little_motion", "moving_area_too_small", "blurry", "too_bright"}
    assert len(result.details) == len(result.reasons)
    assert set(result.reasons) <= set(REASONS)


def test_all_metrics_are_reported_as_plain_numbers(clips):
    metrics = only_pair(clips["subject"]).metrics
    expected = {"motion", "moving_fraction", "subject_flow_mean", "flow_mean", "camera_motion",
                "background_fraction", "occlusion", "cut_score", "sharpness", "sharpness_ratio",
                "brightness_input", "brightness_target", "lighting_change", "duplicate_distance"}
    assert set(metrics) == expected
    json.dumps(metrics)


@pytest.mark.parametrize("model", ["affine", "similarity"])
def test_other_camera_models_also_see_the_pan(clips, model):
    result = only_pair(clips["pan"], camera_model=model)
    assert result.reasons == ["camera_motion"]


def test_direct_flow_mode_also_keeps_and_rejects(clips):
    assert only_pair(clips["pan"], chain_flow=False).reasons[:1] == ["camera_motion"]
    assert "too_little_motion" in only_pair(clips["still"], chain_flow=False).reasons


def test_config_validation_and_overrides():
    with pytest.raises(ValueError, match="max_camera_motion"):
        MiningConfig(max_camera_motion=-1)
    with pytest.raises(ValueError, match="pairing"):
        MiningConfig(pairing="random")
    with pytest.raises(ValueError, match="min_motion.*max_motion"):
        MiningConfig(min_motion=0.5, max_motion=0.1)
    with pytest.raises(ValueError, match="unknown flow backend"):
        MiningConfig(backend="nope")
    with pytest.raises(ValueError, match="window_seconds"):
        MiningConfig(window_seconds=1.0, sample_fps=0.5)
    overrides = MiningConfig.parse_overrides("max_camera_motion = 0.05\nchain_flow=false, pairing=sliding # comment")
    config = MiningConfig.with_overrides(overrides)
    assert (config.max_camera_motion, config.chain_flow, config.pairing) == (0.05, False, "sliding")
    assert MiningConfig.with_overrides({"stride-seconds": "none"}).stride_seconds is None
    with pytest.raises(ValueError, match="unknown mining setting 'max_camera'.*max_camera_motion"):
        MiningConfig.with_overrides({"max_camera": "1"})
    with pytest.raises(ValueError, match="expected a number"):
        MiningConfig.with_overrides({"min_motion": "lots"})
    with pytest.raises(ValueError, match="name=value"):
        MiningConfig.parse_overrides("min_motion 0.1")


# Pairing: windows, strides, sliding, near duplicates ----------------------------------------


def test_endpoint_windows_follow_each_other(clips):
    results = list(PairMiner().mine(video_source(clips["long"])))
    assert [(r.time_input, r.time_target) for r in results] == [(0.0, 3.0), (3.0, 6.0)]
    assert [(r.frame_input, r.frame_target) for r in results] == [(0, 30), (30, 60)]


def test_sliding_windows_start_at_every_analysed_frame_and_drop_near_duplicates(clips):
    results = list(PairMiner(MiningConfig(pairing="sliding")).mine(video_source(clips["long"])))
    starts = [r.time_input for r in results]
    # 6.5 s at 4 analysed frames per second: windows start every 0.25 s (frame times of a
    # 10 fps clip) until 3.25 s, the last start whose end (6.25 s) exists.
    assert len(results) == 14
    assert all(abs(t - k / 4) <= 0.05 + 1e-9 for k, t in enumerate(starts))
    kept = [r for r in results if r.kept]
    duplicates = [r for r in results if "near_duplicate" in r.reasons]
    assert len(kept) >= 2 and duplicates
    # A duplicate lies close to a kept pair; kept pairs lie apart from each other.
    assert all(r.metrics["duplicate_distance"] < 0.5 for r in duplicates)
    assert all(b.time_input - a.time_input >= 0.5 - 0.05 for a, b in zip(kept, kept[1:]))
    loose = list(PairMiner(MiningConfig(pairing="sliding", min_duplicate_distance=0)).mine(video_source(clips["long"])))
    assert sum(r.kept for r in loose) == 14


def test_an_explicit_stride(clips):
    results = list(PairMiner(MiningConfig(window_seconds=2.0, stride_seconds=1.5)).mine(video_source(clips["long"])))
    assert [(r.time_input, r.time_target) for r in results] == [(0.0, 2.0), (1.5, 3.5), (3.0, 5.0)]


# Output: the dataset folder, resuming, ids ---------------------------------------------------


def test_kept_pairs_become_a_dataset_with_source_timestamps_and_metrics(clips, tmp_path):
    summary = MiningSummary()
    sources = [video_source(clips[kind]) for kind in ("subject", "pan", "long")]
    results = list(mine(sources, out=tmp_path / "ds", summary=summary))
    kept = [r for r in results if r.kept]
    dataset = open_dataset(tmp_path / "ds")
    assert [s.id for s in dataset] == [r.id for r in kept]
    assert summary.kept == len(kept) and summary.rejected == len(results) - len(kept)
    assert summary.reasons["camera_motion"] == 1
    sample, result = dataset[0], kept[0]
    assert sample.prompt == ""  # no judge: for the user to write
    source = sample.extra["source"]
    assert source["video"] == str(clips["subject"].resolve()) and source["video_name"] == "subject.mp4"
    assert (source["time_input"], source["time_target"]) == (0.0, 3.0)
    assert (source["frame_input"], source["frame_target"]) == (0, 30)
    assert sample.extra["metrics"] == result.metrics
    assert sample.extra["mining"]["window_seconds"] == 3.0
    # The images are the video's own frames at those timestamps, at full size.
    frames = {f.index: f.rgb for f in sample_frames(clips["subject"])}
    image = (sample.input_image()[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(image, frames[0])
    target = (sample.target_image()[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(target, frames[30])
    rejected = [json.loads(line) for line in (tmp_path / "ds" / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [r.id for r in results if not r.kept]
    assert rejected[0]["reasons"] == ["camera_motion"] and rejected[0]["details"]


def test_output_max_side_downscales_the_saved_pairs(clips, tmp_path):
    list(mine([video_source(clips["subject"])], MiningConfig(output_max_side=96), out=tmp_path))
    assert open_dataset(tmp_path)[0].input_image().shape == (1, 3, 72, 96)


def test_an_interrupted_run_leaves_a_valid_dataset_and_a_rerun_completes_it(clips, tmp_path):
    config = MiningConfig(pairing="sliding", min_duplicate_distance=0)
    reference = [r.id for r in mine([video_source(clips["long"])], config, out=tmp_path / "full") if r.kept]

    class Cancelled(Exception):
        pass

    def cancel_after(frames):
        def progress(done, total):
            if done >= frames:
                raise Cancelled
        return progress

    with pytest.raises(Cancelled):
        for _ in mine([video_source(clips["long"])], config, out=tmp_path / "ds", progress=cancel_after(20)):
            pass
    partial = [s.id for s in open_dataset(tmp_path / "ds")]
    assert 0 < len(partial) < len(reference) and partial == reference[: len(partial)]
    summary = MiningSummary()
    rerun = list(mine([video_source(clips["long"])], config, out=tmp_path / "ds", summary=summary))
    assert summary.existing == len(partial) and summary.kept == len(reference) - len(partial)
    ids = [s.id for s in open_dataset(tmp_path / "ds")]
    assert ids == reference and len(set(ids)) == len(ids)
    existing = [r for r in rerun if r.existing]
    assert existing[0].metrics and existing[0].input_image is not None  # reported from the dataset


def test_ids_are_stable_across_renames_so_a_renamed_video_adds_nothing(clips, tmp_path):
    list(mine([video_source(clips["long"])], out=tmp_path / "ds"))
    renamed = tmp_path / "renamed.mp4"
    renamed.write_bytes(clips["long"].read_bytes())
    summary = MiningSummary()
    list(mine([video_source(renamed)], out=tmp_path / "ds", summary=summary))
    assert summary.kept == 0 and summary.existing >= 1
    source = video_source(clips["long"])
    assert pair_id(source, 0.0, 3.0) == pair_id(video_source(renamed), 0.0, 3.0)
    assert pair_id(source, 0.0, 3.0) != pair_id(video_source(clips["subject"]), 0.0, 3.0)


# Inputs other than files, progress, memory ---------------------------------------------------


def test_an_image_batch_with_its_fps_is_mined_like_a_video():
    frames = clip_frames("subject")
    (result,) = list(PairMiner().mine(frames_source(frames, fps=CLIP_FPS, name="batch")))
    assert result.kept and (result.frame_input, result.frame_target) == (0, 30)
    assert result.input_image.shape == (*CLIP_SIZE, 3)
    with pytest.raises(ValueError, match="fps"):
        frames_source(frames, fps=0)
    with pytest.raises(ValueError, match=r"\(T, 3, H, W\)"):
        frames_source(frames[:, :1], fps=10)


def test_progress_reports_every_analysed_frame(clips):
    calls = []
    list(PairMiner().mine(video_source(clips["long"]), progress=lambda done, total: calls.append((done, total))))
    assert [done for done, _ in calls[:-1]] == list(range(1, 27))  # 6.5 s at 4 per second
    assert calls[-1] == (26, 26)
    assert all(done <= total for done, total in calls)


def test_the_miner_holds_only_the_frames_of_the_current_window():
    # A long stream of frames, each tracked: the miner must let go of every frame once its
    # windows are done, whatever the length of the stream.
    frames = [(f * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for f in clip_frames("subject")]
    alive, peak = set(), [0]

    class Tracked(np.ndarray):
        pass

    def release(key):
        alive.discard(key)

    def frame_iterator(sample_fps):
        for index in range(240):  # 24 s at 10 fps, the 3.5 s clip played in a loop
            rgb = frames[index % len(frames)].copy().view(Tracked)
            alive.add(index)
            weakref.finalize(rgb, release, index)
            peak[0] = max(peak[0], len(alive))
            yield VideoFrame(index=index, time=index / CLIP_FPS, rgb=rgb)

    source = MiningSource("loop", "0123456789", CLIP_FPS, 24.0, frame_iterator)
    for pairing in ("endpoints", "sliding"):
        alive.clear()
        peak[0] = 0
        results = [r.id for r in PairMiner(MiningConfig(pairing=pairing), previews=False).mine(source, keep_images=False)]
        assert len(results) >= 7
        # A window is 12 analysed frames; a few more may be in flight.
        assert peak[0] <= 16, f"{pairing}: {peak[0]} frames alive at once"


# The judge (interface of motionnft.judge; a fake here) ---------------------------------------


class FakeJudge:
    def __init__(self, scores=None, fail=False):
        self.scores = scores or {"stable_setting": 0.9, "significant_motion": 0.8, "intact_subjects": 0.95}
        self.fail = fail
        self.rated, self.drafted = [], []

    def rate_mining_criteria(self, input_image, target_image):
        assert input_image.shape[:2] == (1, 3) and input_image.shape == target_image.shape
        assert 0 <= float(input_image.min()) and float(input_image.max()) <= 1
        if self.fail:
            raise ConnectionError("judge server unreachable")
        self.rated.append(input_image)
        return dict(self.scores)

    def draft_instruction(self, input_image, target_image):
        self.drafted.append(input_image)
        return "  Make the figure step to the right and raise its arm.  "


def test_a_judge_drafts_the_prompt_of_kept_pairs_and_sees_only_those(clips, tmp_path):
    judge = FakeJudge()
    results = list(mine([video_source(clips[k]) for k in ("subject", "pan")], out=tmp_path, judge=judge))
    assert [r.kept for r in results] == [True, False]
    assert len(judge.rated) == 1 and len(judge.drafted) == 1  # the panning pair never reached it
    sample = open_dataset(tmp_path)[0]
    assert sample.prompt == "Make the figure step to the right and raise its arm."
    assert sample.extra["judge"] == judge.scores


def test_a_low_judge_score_rejects_with_the_criterion(clips):
    judge = FakeJudge({"stable_setting": 0.9, "significant_motion": 0.2, "intact_subjects": 0.1})
    (result,) = list(PairMiner(judge=judge).mine(video_source(clips["subject"])))
    assert result.reasons == ["judge_significant_motion", "judge_intact_subjects"]
    assert result.judge["significant_motion"] == 0.2 and not judge.drafted


def test_a_failing_judge_rejects_the_pair_without_ending_the_run(clips):
    (result,) = list(PairMiner(judge=FakeJudge(fail=True)).mine(video_source(clips["subject"])))
    assert result.reasons == ["judge_error"] and "unreachable" in result.details[0]


def test_a_judge_without_the_interface_is_refused():
    with pytest.raises(TypeError, match="rate_mining_criteria"):
        PairMiner(judge=object())


# Contact sheet ----------------------------------------------------------------------------------


def test_contact_sheet_shows_one_row_per_pair_with_its_verdict(clips):
    results = list(mine([video_source(clips[k]) for k in ("subject", "pan", "cut")], previews=True))
    assert [r.kept for r in results] == [True, False, False]
    assert all(r.preview and {"input", "target", "motion"} <= set(r.preview) for r in results)
    sheet = render_contact_sheet(results)
    one = render_contact_sheet(results[:1])
    assert sheet.shape[0] == 3 and sheet.shape[2] == one.shape[2] and sheet.shape[1] > 2.5 * (one.shape[1] - 40)
    # The verdict stripe along the left edge: one run of colour per row, green then red.
    edge = (sheet[:, :, 1] * 255).round().to(torch.int64).permute(1, 0).tolist()
    runs = []
    for colour in edge:
        colour = tuple(colour)
        if colour != (250, 250, 250) and (not runs or runs[-1] != colour):
            runs.append(colour)
    assert runs == [(40, 150, 70), (200, 50, 40), (200, 50, 40)] or runs == [(40, 150, 70), (200, 50, 40)]
    with pytest.raises(ValueError, match="no pairs"):
        render_contact_sheet([])


def test_the_readme_documents_every_setting_with_its_default():
    import dataclasses
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Mining training pairs from video"):]
    for spec in dataclasses.fields(MiningConfig):
        assert f"`{spec.name}`" in section, spec.name
        if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
            assert f"`{spec.name}` = {spec.default:g}" in section or f"`{spec.name}` {spec.default:g}" in section, spec.name
