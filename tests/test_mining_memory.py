"""Stream decoding keeps memory flat: a 10x longer video mines in about the same peak memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from motionnft.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SIZE = (270, 480)  # (H, W): one decoded RGB frame is 389 KB
FPS = 25


def busy_frames(seconds: float):
    """A textured scene with a square crossing it: cheap to make, costly to hold decoded."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (SIZE[0] // 6, SIZE[1] // 6, 3), dtype=np.uint8).repeat(6, 0).repeat(6, 1)
    square = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    for index in range(int(seconds * FPS)):
        frame = background.copy()
        x = int(20 + (index * 3) % (SIZE[1] - 100))
        frame[100:160, x : x + 60] = square
        yield frame


PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {root!r})
    from motionnft.mining import MiningConfig, mine, video_source
    for _ in mine([video_source(sys.argv[1])], MiningConfig(pairing=sys.argv[2]), out=sys.argv[3], keep_images=False):
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
    """
)


def peak_rss_mib(video: Path, pairing: str, out: Path) -> float:
    script = PEAK_RSS.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, str(video), pairing, str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_ten_times_longer_video_mines_in_about_the_same_peak_memory(tmp_path):
    short = write_video(tmp_path / "short.mp4", busy_frames(6), FPS, preset="ultrafast")
    long = write_video(tmp_path / "long.mp4", busy_frames(60), FPS, preset="ultrafast")
    decoded_long_mib = 60 * FPS * SIZE[0] * SIZE[1] * 3 / 2**20  # 556 MiB if every frame were held
    # Sliding windows hold the most (every analysed frame of a window at full size).
    growth = peak_rss_mib(long, "sliding", tmp_path / "long") - peak_rss_mib(short, "sliding", tmp_path / "short")
    print(f"peak memory growth from 6 s to 60 s: {growth:.1f} MiB")
    assert growth < 40, f"peak memory grew by {growth:.0f} MiB (all decoded frames: {decoded_long_mib:.0f} MiB)"
