"""Options several commands share: the flow estimator, the motion reward and MAS, and the MLLM judge."""

from __future__ import annotations

import argparse
from pathlib import Path

FLOW_OPTIONS = ("backend", "preset", "weights", "precision", "device")
"""The options :func:`flow_arguments` adds, named as ``create_estimator``'s arguments."""


def flow_arguments(parser: argparse.ArgumentParser) -> None:
    from ..flow import PRECISIONS, available_backends

    parser.add_argument("--backend", default="dis", choices=sorted(available_backends()), help="flow estimator (default: dis)")
    parser.add_argument(
        "--preset", default=None,
        help="backend preset (dis: ultrafast, fast, medium; raft_*: fast, medium, accurate; default: the "
        "backend's own, see 'motionnft backends')",
    )
    parser.add_argument(
        "--weights", default=None,
        help="weight file of a learned backend (raft_large, raft_small, unimatch): a path, or a file name looked "
        "up in the weight folders (see 'motionnft backends'); default: the backend's preferred file found there",
    )
    parser.add_argument("--precision", default=None, choices=PRECISIONS, help="compute precision of a learned backend (default fp32)")
    parser.add_argument("--device", default=None, help="device of a learned backend, e.g. cuda or cuda:1 (default cpu)")


def estimator(args):
    """The flow estimator the --backend/--preset/--weights/--precision/--device options describe."""
    from ..flow import create_estimator

    return create_estimator(args.backend, args.preset, weights=args.weights, precision=args.precision, device=args.device)


def reward_arguments(parser: argparse.ArgumentParser) -> None:
    from ..reward import VARIANTS

    parser.add_argument(
        "--variant", default="code", choices=VARIANTS,
        help="reward form: 'code' = the released MotionNFT code (default), 'paper' = as printed in the paper",
    )
    parser.add_argument("--mas-alpha", type=float, default=0.7, help="MAS weight of D_mag (default 0.7)")
    parser.add_argument("--mas-d-min", type=float, default=None, help="MAS lower distance bound (default eps^q)")
    parser.add_argument("--mas-d-max", type=float, default=1.0, help="MAS upper distance bound (default 1)")


def reward_configs(args):
    """(MotionRewardConfig, MASConfig) from the --variant and --mas-* options."""
    from ..reward import MASConfig, MotionRewardConfig

    config = MotionRewardConfig(variant=args.variant)
    given = {} if args.mas_d_min is None else {"d_min": args.mas_d_min}
    mas = MASConfig(alpha=args.mas_alpha, d_max=args.mas_d_max, **given).for_reward(config)  # default d_min: eps^q
    return config, mas


def judge_arguments(parser: argparse.ArgumentParser, cache: bool) -> None:
    group = parser.add_argument_group(
        "judge", "an MLLM behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama); "
        "the API key, if any, is read from $MOTIONNFT_JUDGE_API_KEY",
    )
    group.add_argument("--judge-url", default=None, help="server URL, e.g. http://127.0.0.1:8000/v1 (no judge if absent)")
    group.add_argument("--judge-model", default="", help="model name as the server knows it (default: its only model)")
    group.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    group.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per request (default 120)")
    group.add_argument("--judge-retries", type=int, default=3, help="retries of a failed request (default 3)")
    group.add_argument("--judge-image-format", choices=("png", "jpeg"), default="png", help="how images are sent (default png)")
    group.add_argument("--judge-max-side", type=int, default=None, help="downscale images whose longer side exceeds this")
    if cache:
        group.add_argument("--judge-cache", type=Path, default=None, help="answer cache folder (default OUT/judge-cache)")
        group.add_argument("--no-judge-cache", action="store_true", help="do not cache the judge's answers")


def judge_cache(args) -> Path | None:
    """The answer cache folder the --judge-cache/--no-judge-cache options of a command with --out describe."""
    return None if args.no_judge_cache else (args.judge_cache or args.out / "judge-cache")


def make_judge(args, cache_dir: Path | None = None):
    # Imported here, not at the top: tests replace motionnft.judge in sys.modules with a fake server client.
    from ..judge import JudgeClient

    return JudgeClient(
        args.judge_url, args.judge_model,
        timeout=args.judge_timeout, max_retries=args.judge_retries, max_concurrency=args.judge_concurrency,
        cache_dir=cache_dir, image_format=args.judge_image_format, max_image_side=args.judge_max_side,
    )
