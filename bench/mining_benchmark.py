"""Mining speed and memory: analysed frames per second on a 720p clip, against decoding alone.

    python bench/mining_benchmark.py [--seconds 20] [--repeats 3] [--long-minutes 10] [--write docs/benchmarks.md]

A synthetic 1280x720 30 fps clip (the textured figure of ``motionnft.synthetic`` walking
across half the frame and swinging its arm over a still background, rendered at 640x360,
upscaled, with light sensor noise) is encoded with x264 once into ``--work``. Then, median of ``--repeats`` runs:

- **baseline**: decoding every frame with PyAV, nothing else: the floor any miner pays;
- **mining** at the default settings (3 s windows, 4 analysed frames per second at 384 px,
  DIS medium), for ``endpoints`` and ``sliding`` pairing.

Speed is given as analysed frames per second, as video seconds per wall second ("x real
time") and as a ratio to the decode-only time of the same run. ``--long-minutes N`` also
mines an N-minute 1920x1080 clip (a cheap textured scene with a moving patch) in a
subprocess and reports its peak memory against a 30-second clip of the same kind: the
stream decoder must keep it flat. ``--write`` replaces this benchmark's section of a
Markdown file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section  # noqa: E402

from motionnft.mining import MiningConfig, MiningSummary, mine, video_source  # noqa: E402
from motionnft.synthetic import MotionClip  # noqa: E402
from motionnft.video import probe_video, tensor_to_frame, write_video  # noqa: E402



def synthesise_720p(path: Path, seconds: float) -> Path:
    if path.exists():
        return path
    # The figure crosses half the frame over the clip (it stays in view) and swings its arm.
    clip = MotionClip("subject", size=(360, 640), fps=30, seconds=seconds, walk=0.5, arm=40 * seconds)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def frames():
        for index in range(clip.frame_count):
            frame = cv2.resize(tensor_to_frame(clip.frame(index)), (1280, 720), interpolation=cv2.INTER_CUBIC)
            noise = rng.integers(-3, 4, frame.shape, dtype=np.int16)
            yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)

    try:
        print(f"rendering {clip.frame_count} frames of 1280x720 into {path} (once) ...", flush=True)
        return write_video(path, frames(), clip.fps, crf=20, preset="veryfast")
    finally:
        torch.set_num_threads(threads)


def synthesise_busy(path: Path, seconds: float, size=(1080, 1920), fps=30) -> Path:
    """A cheap clip of any length: a textured patch crossing a textured background."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    background = cv2.resize(background, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    patch = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (240, 240), interpolation=cv2.INTER_CUBIC)

    def frames():
        for index in range(int(seconds * fps)):
            frame = background.copy()
            x = 40 + (index * 4) % (size[1] - 320)
            frame[400:640, x : x + 240] = patch
            yield frame

    print(f"encoding {int(seconds * fps)} frames of {size[1]}x{size[0]} into {path} (once) ...", flush=True)
    return write_video(path, frames(), fps, crf=23, preset="ultrafast")


def decode_only(path: Path) -> float:
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
    return time.perf_counter() - start


def mine_once(path: Path, config: MiningConfig) -> tuple[float, MiningSummary]:
    summary = MiningSummary()
    start = time.perf_counter()
    for _ in mine([video_source(path)], config, summary=summary, keep_images=False):
        pass
    return time.perf_counter() - start, summary


PEAK_RSS = textwrap.dedent(
    """
    import resource, sys, time
    sys.path.insert(0, {root!r})
    from motionnft.mining import MiningConfig, MiningSummary, mine, video_source
    summary = MiningSummary()
    start = time.perf_counter()
    for _ in mine([video_source(sys.argv[1])], MiningConfig(), out=sys.argv[2], summary=summary, keep_images=False):
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start, summary.candidates, summary.kept)
    """
)


def peak_memory(path: Path, out: Path) -> tuple[float, float, int, int]:
    """(peak RSS MiB, seconds, candidates, kept) of mining ``path`` in a fresh process."""
    script = PEAK_RSS.format(root=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", script, str(path), str(out)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    rss, seconds, candidates, kept = done.stdout.split()
    return int(rss) / 1024, float(seconds), int(candidates), int(kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the 720p clip [20]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-minutes", type=float, default=0.0, help="also measure memory on a long 1080p clip")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "motionnft-mining-bench",
                        help="where the synthetic clips are kept between runs")
    parser.add_argument("--write", type=Path, default=None, help="Markdown file whose mining section is replaced")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    clip = synthesise_720p(args.work / f"figure_720p_{args.seconds:g}s_v2.mp4", args.seconds)
    info = probe_video(clip)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    decode_times = []
    runs = {"endpoints": [], "sliding": []}
    summaries = {}
    for _ in range(args.repeats):
        decode_times.append(decode_only(clip))
        for pairing in runs:
            seconds, summary = mine_once(clip, MiningConfig(pairing=pairing))
            runs[pairing].append(seconds)
            summaries[pairing] = summary
    decode = statistics.median(decode_times)
    rows = [("decode only (baseline)", decode, info.frame_count, None, None)]
    for pairing, times in runs.items():
        summary = summaries[pairing]
        rows.append((f"mine, {pairing}", statistics.median(times), info.frame_count, summary.analysed_frames, summary))

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python bench/mining_benchmark.py" + (f" --seconds {args.seconds:g}" if args.seconds != 20 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "") + (
        f" --long-minutes {args.long_minutes:g}" if args.long_minutes else "") + (
        f" --write {args.write}" if args.write else "")
    config = MiningConfig()
    lines = [
        "<!-- mining-benchmark:start -->",
        "## Mining training pairs from video: speed and memory (CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, OpenCV {cv2.__version__}; load average {load_before:.1f} before and "
        f"{load_after:.1f} after (other processes shared the cores). Clip: synthetic {info.width}x{info.height} "
        f"{info.fps:g} fps H.264, {info.duration:.1f} s ({info.frame_count} frames). Settings: the defaults "
        f"({config.window_seconds:g} s windows, {config.sample_fps:g} analysed frames per second at "
        f"{config.analysis_size} px, flow {config.backend} medium, chained). Times: median of {args.repeats} runs; "
        "ratio = time / decode-only time in the same run.",
        "",
        "| run | wall s | analysed frames | analysed frames/s | video frames decoded/s | x real time | time ratio vs decode only |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, frames, analysed, _ in rows:
        lines.append(
            f"| {name} | {seconds:.2f} | {analysed if analysed is not None else '-'} | "
            f"{f'{analysed / seconds:.1f}' if analysed else '-'} | {frames / seconds:.0f} | "
            f"{info.duration / seconds:.1f} | {seconds / decode:.1f} |"
        )
    lines.append("")
    for pairing, summary in summaries.items():
        lines.append(f"- {pairing}: {summary.candidates} candidate pairs, {summary.kept} kept"
                     + (f"; rejected by reason: {dict(summary.reasons.most_common())}" if summary.reasons else ""))
    if args.long_minutes:
        long_clip = synthesise_busy(args.work / f"busy_1080p_{args.long_minutes:g}min.mp4", args.long_minutes * 60)
        short_clip = synthesise_busy(args.work / "busy_1080p_30s.mp4", 30)
        with tempfile.TemporaryDirectory() as scratch:
            short = peak_memory(short_clip, Path(scratch) / "short")
            long = peak_memory(long_clip, Path(scratch) / "long")
        frame_mib = 1920 * 1080 * 3 / 2**20
        all_frames = args.long_minutes * 60 * 30 * frame_mib
        lines += [
            "",
            f"Memory (peak RSS of a fresh process mining to a dataset folder, default settings): "
            f"1920x1080 30 fps, 30 s: **{short[0]:.0f} MiB** ({short[1]:.0f} s); "
            f"{args.long_minutes:g} min: **{long[0]:.0f} MiB** ({long[1]:.0f} s, {long[1] / (args.long_minutes * 60):.2f} "
            f"s per video second, {long[2]} candidate pairs, {long[3]} kept). Holding the decoded frames would take "
            f"{all_frames / 1024:.0f} GiB; the miner holds one window's analysed frames.",
        ]
    lines.append("<!-- mining-benchmark:end -->")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(args.write, "mining-benchmark", table)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
