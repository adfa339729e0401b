"""``motionnft animate``: move a source image as a driving video moves (Thin-Plate Spline Motion Model).

Streaming: the driving video is decoded one frame at a time, each animated frame is encoded as soon
as it is made, so memory does not grow with the video's length.
"""

from __future__ import annotations

import sys
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")


def add_animate(commands) -> None:
    from ..animation import MODES

    animate = commands.add_parser(
        "animate", help="animate an image with a driving video (Thin-Plate Spline Motion Model)",
        description="Move IMAGE as the driving VIDEO moves, with a TPSMM checkpoint (Zhao & Zhang, CVPR 2022; "
        "the official vox/taichi/ted/mgif .pth.tar, MIT licence, or their .safetensors), or a 'motionnft "
        "train-animation' .safetensors (TPSMM or the feature-decoupling paper's model, the kind read from the file). "
        "The output video has "
        "one frame per driving frame, at the driving video's frame rate, square at the model's size.",
    )
    animate.add_argument("--image", type=Path, required=True, help="the source image to animate")
    animate.add_argument("--video", type=Path, required=True, help="the driving video")
    animate.add_argument("--model", type=Path, required=True,
                         help="weights: an official TPSMM checkpoint (vox.pth.tar ...), its .safetensors, or a "
                         "train-animation .safetensors (TPSMM or the paper's model)")
    animate.add_argument("--mode", choices=MODES, default="relative",
                         help="relative (default): the source keeps its shape and moves as the video moves from "
                         "its first frame; standard: the source takes each frame's absolute pose; avd: the AVD "
                         "network retargets the pose (checkpoints trained with it only)")
    animate.add_argument("--no-adapt-scale", action="store_true",
                         help="relative mode: do not scale the motion by the keypoint hulls' size ratio")
    animate.add_argument("--background", action="store_true",
                         help="also predict the background motion (the official demo does not)")
    animate.add_argument("--size", type=int, default=None,
                         help="square working and output size in pixels (default: the model's training size, "
                         "256; ted 384)")
    animate.add_argument("--fps", type=float, default=None, help="output frame rate (default: the driving video's)")
    animate.add_argument("--device", default=None, help="e.g. cuda or cuda:1 (default: cuda if available, else cpu)")
    animate.add_argument("--out", type=Path, required=True, help="the animated video (.mp4, .mkv, .mov, .webm)")
    animate.add_argument("--quiet", action="store_true", help="no progress bar")
    animate.set_defaults(handler=command_animate, output_files=("out",), input_files=("image", "video", "model"))


def command_animate(args) -> int:
    import torch

    from ..animation import LICENCE, animate, load_official_checkpoint
    from ..animation.frames import DrivingVideo, fit_source, working_size
    from ..image import load_image
    from ..video import write_video

    if args.out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {args.out}: unknown video suffix {args.out.suffix!r}; use one of "
                         f"{', '.join(VIDEO_SUFFIXES)}")
    if args.fps is not None and not args.fps > 0:
        raise ValueError(f"--fps must be > 0, got {args.fps:g}")
    try:
        source = load_image(args.image)
    except (OSError, ValueError) as error:
        raise type(error)(f"--image {error}") from None
    try:
        driving = DrivingVideo.open(args.video)
    except (OSError, ValueError) as error:
        raise type(error)(f"--video {error}") from None
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = load_official_checkpoint(args.model, device=device)
    except (OSError, ValueError, KeyError) as error:
        raise type(error)(f"--model {error}") from None
    if args.mode == "avd" and model.avd_network is None:
        raise ValueError(f"--mode avd needs a model with an AVD network; {args.model} has none (use relative)")
    if args.background and model.bg_predictor is None:
        raise ValueError(f"--background: {args.model} has no background predictor (mgif has none)")
    try:
        size = working_size(model, args.size)
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    start = fit_source(source, size).to(device)
    fps = args.fps or driving.fps
    print(f"TPSMM {args.model} (licence: {LICENCE}); {args.mode} mode, {size}x{size} on {device}")
    counted = _Counter()
    frames = animate(start, driving.frames(), model, mode=args.mode, adapt_movement_scale=not args.no_adapt_scale,
                     use_background=args.background, progress=_progress(args, driving.frame_count, counted),
                     total=driving.frame_count)
    try:
        write_video(args.out, (frame.cpu() for frame in frames), fps)
    except ValueError:
        if counted.done == 0:  # nothing decoded: the driving video's fault, not the output's
            raise ValueError(f"--video {args.video}: no frame could be decoded") from None
        raise
    finally:
        if counted.bar is not None:
            counted.bar.close()
    print(f"{args.out}: {counted.done} frames at {fps:g} fps, {args.image} driven by {args.video}")
    return 0


class _Counter:
    done = 0
    bar = None


def _progress(args, total: int, counted: _Counter):
    """A ``progress(done, total)`` that counts frames and draws a tqdm bar (none with --quiet)."""
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = counted.bar = tqdm(total=total or None, desc="animate", unit="frame", file=sys.stderr, leave=False)

    def update(done: int, of: int) -> None:
        counted.done = done
        if bar is not None:
            bar.update(done - bar.n)

    return update


def add_train_animation(commands) -> None:
    from ..animation.train import AnimationTrainConfig
    from ..animation.train_parts import add_switch_flags
    from ..training.stepping import add_setting_flags

    train = commands.add_parser(
        "train-animation", help="train the image-animation model (TPSMM + motion optimisation + decoupling) on videos",
        description="Train the feature-decoupling paper's model (TPSMM with a Swin motion-flow optimiser and "
        "identity/motion decoupling; --no-motion-optimization --no-decoupling: plain TPSMM) on a video or a folder "
        "of videos (frames streamed, the last --holdout of each never trained on) with TPSMM's losses: perceptual "
        "(VGG-19 from a local file; --perceptual l1_pyramid is a weight-free stand-in), equivariance, warp, "
        "background; plus the decoupling loss and, with --adversarial-weight / --feature-matching-weight, a "
        "multi-scale PatchGAN. Checkpoints in "
        "RUN/checkpoints resume exactly; at the end RUN/tpsmm.safetensors holds the model for 'motionnft animate' "
        "and the Animate Image node, and the held-out reconstruction L1 is printed against the static source.",
    )
    train.add_argument("--video", type=Path, required=True, help="a video file or a folder of videos")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics.csv, tpsmm.safetensors)")
    train.add_argument("--resume", default="auto",
                       help="'auto' (default: continue from RUN's latest checkpoint), 'none', or a run / checkpoint folder")
    add_setting_flags(train, AnimationTrainConfig, dest_prefix="setting_")
    add_switch_flags(train, AnimationTrainConfig, dest_prefix="setting_")
    train.set_defaults(handler=command_train_animation, output_folders=("out",), input_files=("video",))


def add_eval_animation(commands) -> None:
    evaluation = commands.add_parser(
        "eval-animation", help="video reconstruction: the first frame drives the rest, L1 per video",
        description="The image-animation evaluation protocol: each video's first frame (after --skip) is the source "
        "and every later frame drives it (standard mode); the L1 between the animation and the real frames is "
        "printed per video beside the static-source baseline (the first frame repeated), and the motion error: "
        "the flow source -> animation against the flow source -> driving frame (end-point error in pixels, both "
        "estimated by --flow-backend). Keypoint metrics (AKD, MKR, AED) need a keypoint / identity model this pack "
        "does not ship: not computed.",
    )
    evaluation.add_argument("--model", type=Path, required=True, help="TPSMM weights (.pth.tar or .safetensors)")
    evaluation.add_argument("--video", type=Path, required=True, help="a video file or a folder of videos")
    evaluation.add_argument("--size", type=int, default=None, help="square size (default: the model's)")
    evaluation.add_argument("--skip", type=float, default=0.0,
                            help="leave out this leading fraction of each video (e.g. 0.8: the frames a run held out)")
    evaluation.add_argument("--flow-backend", default="dis",
                            help="flow estimator of the motion error (default dis; 'none' skips it)")
    evaluation.add_argument("--flow-preset", default="medium", help="its preset (default medium)")
    evaluation.set_defaults(handler=command_eval_animation, input_files=("model", "video"))


def command_train_animation(args) -> int:
    from ..animation.checkpoint import save_model
    from ..animation.train import AnimationTrainConfig, AnimationTrainer, VideoFrames, load_model, reconstruction_l1
    from ..training.stepping import settings_from_flags

    config = settings_from_flags(AnimationTrainConfig, args, dest_prefix="setting_")
    data = VideoFrames.read(args.video, config.size, config.holdout, config.sample_fps or None)
    result = AnimationTrainer(config, data, args.out).run(None if args.resume == "none" else args.resume)
    model = load_model(args.out)
    weights = args.out / "tpsmm.safetensors"
    save_model(model, weights)
    print(f"{args.out}: {result}")
    if config.holdout > 0:
        scores = reconstruction_l1(model, data.held_out(0))
        print(f"held-out reconstruction L1 (first video, {scores['frames']} frames): model {scores['model']:.4f}, "
              f"static source {scores['static']:.4f}")
    print(f"{weights}: the model for 'motionnft animate --model {weights} --size {config.size}' and the Animate "
          f"Image node (models/motionnft_animation)")
    return 0


def command_eval_animation(args) -> int:
    from ..animation import load_official_checkpoint
    from ..animation.evaluation import motion_error, reconstruct
    from ..animation.frames import working_size
    from ..animation.train import VideoFrames
    from ..animation.train_data import video_paths
    from ..flow import create_estimator

    if not 0.0 <= args.skip < 1.0:
        raise ValueError(f"--skip must be in [0, 1), got {args.skip}")
    estimator = None if args.flow_backend == "none" else create_estimator(args.flow_backend, args.flow_preset)
    model = load_official_checkpoint(args.model)
    size = working_size(model, args.size)
    totals = []
    for path in video_paths(args.video):
        frames = VideoFrames.read(path, size, 1.0 - args.skip)  # what is "held out" is the part kept
        held = frames.held_out(0)
        if held.shape[0] < 2:
            raise ValueError(f"--video {path}: fewer than 2 frames to reconstruct")
        source, driving = held[:1], held[1:]
        outputs = reconstruct(model, held)
        scores = {"l1": float((outputs - driving).abs().mean()), "l1_static": float((driving - source).abs().mean())}
        line = f"{path.name}: L1 {scores['l1']:.4f} (static source {scores['l1_static']:.4f})"
        if estimator is not None:
            motion = motion_error(source, driving, outputs, estimator)
            scores.update(epe=motion["epe"], epe_static=motion["static"])
            line += f", motion EPE {motion['epe']:.2f} px (static source {motion['static']:.2f} px)"
        totals.append(scores)
        print(f"{line}, {len(driving)} frames")
    mean = {key: sum(s[key] for s in totals) / len(totals) for key in totals[0]}
    line = f"mean over {len(totals)} video(s): L1 {mean['l1']:.4f}, static source {mean['l1_static']:.4f}"
    if estimator is not None:
        line += f"; motion EPE {mean['epe']:.2f} px, static source {mean['epe_static']:.2f} px"
    print(f"{line}; AKD/MKR/AED: not computed (no keypoint or identity model ships with this pack)")
    return 0
