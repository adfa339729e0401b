"""Video files with PyAV: encode, probe, and stream-decode at a sampling rate."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from motionnft.video import TimeSampler, frame_to_tensor, probe_video, sample_frames, source_fingerprint, write_video


def ramp_frames(count: int, size=(48, 64)):
    """Frames whose mean brightness encodes their index (robust to compression)."""
    for index in range(count):
        yield torch.full((3, *size), (index + 1) / (count + 2))


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "ramp.mp4", ramp_frames(30), fps=10, crf=0)


def test_probe_reports_size_rate_duration_and_frames(ramp_video):
    info = probe_video(ramp_video)
    assert (info.width, info.height) == (64, 48)
    assert info.fps == pytest.approx(10)
    assert info.frame_count == 30
    assert info.duration == pytest.approx(3.0, abs=0.11)
    assert info.name == "ramp.mp4"


def test_every_frame_decodes_in_order_with_its_time(ramp_video):
    frames = list(sample_frames(ramp_video))
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose([f.time for f in frames], np.arange(30) / 10, atol=1e-6)
    brightness = [f.rgb.mean() / 255 for f in frames]
    np.testing.assert_allclose(brightness, (np.arange(30) + 1) / 32, atol=2 / 255)
    assert frames[0].rgb.shape == (48, 64, 3) and frames[0].rgb.dtype == np.uint8


def test_sampling_follows_the_time_grid_within_half_a_frame(ramp_video):
    frames = list(sample_frames(ramp_video, sample_fps=4))
    # 3 s at 4 per second: grid 0, 0.25, ..., 2.75; frames exist every 0.1 s.
    assert len(frames) == 12
    for k, frame in enumerate(frames):
        assert abs(frame.time - k / 4) <= 0.05 + 1e-9


def test_a_sampling_rate_above_the_frame_rate_takes_every_frame(ramp_video):
    assert len(list(sample_frames(ramp_video, sample_fps=100))) == 30


def test_time_sampler_skips_grid_points_a_gap_jumped_over():
    sampler = TimeSampler(sample_fps=2, fps=10)
    times = [0.0, 0.1, 0.5, 1.7, 1.8, 2.0, 2.4, 2.5]
    assert [t for t in times if sampler.take(t)] == [0.0, 0.5, 1.7, 2.0, 2.5]


def test_an_open_file_object_decodes_like_the_path(ramp_video):
    buffer = io.BytesIO(ramp_video.read_bytes())
    from_path = [f.rgb for f in sample_frames(ramp_video, 2)]
    from_buffer = [f.rgb for f in sample_frames(buffer, 2)]
    assert len(from_path) == len(from_buffer) == 6
    assert all(np.array_equal(a, b) for a, b in zip(from_path, from_buffer))
    assert source_fingerprint(buffer) == source_fingerprint(ramp_video)


def test_fingerprint_follows_content_not_name(ramp_video, tmp_path):
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes(ramp_video.read_bytes())
    other = write_video(tmp_path / "other.mp4", ramp_frames(31), fps=10, crf=0)
    assert source_fingerprint(copy) == source_fingerprint(ramp_video)
    assert source_fingerprint(other) != source_fingerprint(ramp_video)


def test_frame_tensor_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = frame_to_tensor(rgb)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    from motionnft.video import tensor_to_frame

    assert np.array_equal(tensor_to_frame(tensor), rgb)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        probe_video(tmp_path / "missing.mp4")
    (tmp_path / "not_a_video.mp4").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not_a_video.mp4"):
        probe_video(tmp_path / "not_a_video.mp4")
    with pytest.raises(ValueError, match="even width and height"):
        write_video(tmp_path / "odd.mp4", [np.zeros((5, 8, 3), np.uint8)], fps=5)
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "clip.xyz", [np.zeros((4, 8, 3), np.uint8)], fps=5)
    with pytest.raises(ValueError, match="sample_fps"):
        list(sample_frames(tmp_path / "not_a_video.mp4", sample_fps=0))
    assert not (tmp_path / "odd.mp4").exists()  # atomic: a failed write leaves nothing
