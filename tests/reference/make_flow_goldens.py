"""Run the reference implementations of RAFT and GMFlow on fixed random weights and store
their outputs and key layouts as the goldens that CI checks this project's networks against.

The references are not part of this project and are never imported by it. To regenerate:

1. A Python with torch, torchvision, numpy and scipy (e.g. a ComfyUI venv).
2. Clones, anywhere outside this repository, of
   - https://github.com/princeton-vl/RAFT (the original RAFT),
   - https://github.com/autonomousvision/unimatch (official UniMatch / GMFlow),
   - https://github.com/elainew728/motion-edit (MotionEdit; its reward's UniMatch copy and settings).
3. From the repository root::

       <python> tests/reference/make_flow_goldens.py \\
           --raft-repo ../refs/RAFT --unimatch-repo ../refs/unimatch --motionedit-repo ../refs/motion-edit [--compare]

It writes ``tests/data/flow_goldens/<name>.layout.json`` (every key and shape of the
reference's state dict) and ``<name>.npz`` (the inputs' seeds and sizes, and the flow
sampled on a grid plus whole-field statistics) for:

- ``raft_large_torchvision``, ``raft_small_torchvision``: torchvision's ``raft_large`` /
  ``raft_small`` with ``num_flow_updates=4`` on 128x144 images mapped to [-1, 1];
- ``raft_large_original``, ``raft_small_original``: princeton-vl RAFT (``DataParallel``
  keys, ``module.`` prefix), ``iters=4``, images on 0-255;
- ``gmflow_scale1``, ``gmflow_scale2``, ``gmflow_scale2_regrefine6``,
  ``gmflow_scale1_regrefine2``: official UniMatch (weights at gain 0.5, see
  ``seeded_state_dict``) with its published inference settings,
  on 56x90 images scaled to 0-255 and zero-padded at the bottom/right to the padding
  factor as MotionEdit's reward does; for ``gmflow_scale2_regrefine6`` MotionEdit's own
  scorer (``MotionEditScorer._flow``) is run as well and must agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from learned_flow_fixtures import GOLDEN_DIR, image_pair, layout_of, reference_code, seeded_state_dict  # noqa: E402

RAFT_SIZE = (128, 144)
RAFT_ITERATIONS = 4
GMFLOW_SIZE = (56, 90)
GMFLOW_GAIN = 0.5  # see seeded_state_dict: calm enough to compare to float tolerance
BATCH = 2
SAMPLE_STEP = 4


def summarize(flow: torch.Tensor, step: int) -> dict[str, np.ndarray]:
    flow = flow.detach().float().cpu()
    return {
        "flow_sampled": flow[:, :, ::step, ::step].numpy(),
        "sample_step": np.array(step),
        "flow_mean": flow.mean(dim=(2, 3)).numpy(),
        "flow_abs_mean": flow.abs().mean(dim=(2, 3)).numpy(),
    }


REFERENCE_FLOWS: dict[str, tuple[torch.Tensor, dict]] = {}
"""Every full reference flow of this run, with its golden's settings, for ``compare_with_project``."""


def save(out: Path, name: str, layout: dict, arrays: dict, flow: torch.Tensor) -> None:
    REFERENCE_FLOWS[name] = (flow.detach().float().cpu(), {**arrays, "layout": layout})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.layout.json").write_text(json.dumps(layout, indent=0) + "\n")
    np.savez_compressed(out / f"{name}.npz", **arrays)
    print(f"{name}: {len(layout)} keys, flow |mean| {np.abs(arrays['flow_abs_mean']).mean():.4f}")


def torchvision_raft(out: Path) -> None:
    from torchvision.models.optical_flow import raft_large, raft_small

    for name, build, seed in (("raft_large_torchvision", raft_large, 11), ("raft_small_torchvision", raft_small, 12)):
        model = build(weights=None).eval()
        layout = layout_of(model.state_dict())
        model.load_state_dict(seeded_state_dict(layout, seed))
        image1, image2 = image_pair(BATCH, *RAFT_SIZE, seed=seed)
        with torch.no_grad():
            flow = model(image1 * 2 - 1, image2 * 2 - 1, num_flow_updates=RAFT_ITERATIONS)[-1]
        save(out, name, layout, {"weights_seed": np.array(seed), "image_seed": np.array(seed),
                                 "size": np.array(RAFT_SIZE), "iterations": np.array(RAFT_ITERATIONS),
                                 **summarize(flow, SAMPLE_STEP)}, flow)


def original_raft(out: Path, repo: Path) -> None:
    with reference_code(repo / "core", fresh=("raft", "update", "extractor", "corr", "utils")):
        from raft import RAFT  # the original's core/raft.py

        _original_raft(out, RAFT)


def _original_raft(out: Path, RAFT) -> None:
    for name, small, seed in (("raft_large_original", False, 21), ("raft_small_original", True, 22)):
        args = Namespace(small=small, mixed_precision=False, alternate_corr=False, dropout=0)
        model = torch.nn.DataParallel(RAFT(args)).eval()
        layout = layout_of(model.state_dict())
        weights = seeded_state_dict(layout, seed)
        model.load_state_dict(weights)
        # The original registers each projection norm twice (as norm3/norm4 and as
        # downsample.1); the value loaded last, downsample.1's, is the one the network uses,
        # and the only one the conversion keeps.
        loaded = model.state_dict()
        for key in loaded:
            if "downsample.1." in key:
                block, param = key.split(".downsample.1.")
                twin = next(f"{block}.{n}.{param}" for n in ("norm3", "norm4") if f"{block}.{n}.{param}" in loaded)
                assert torch.equal(loaded[twin], weights[key]), twin
        image1, image2 = image_pair(BATCH, *RAFT_SIZE, seed=seed)
        with torch.no_grad():
            flow = model.module(image1 * 255, image2 * 255, iters=RAFT_ITERATIONS, test_mode=True)[1]
        save(out, name, layout, {"weights_seed": np.array(seed), "image_seed": np.array(seed),
                                 "size": np.array(RAFT_SIZE), "iterations": np.array(RAFT_ITERATIONS),
                                 **summarize(flow, SAMPLE_STEP)}, flow)


GMFLOW_CASES = {
    # name: (model kwargs, settings: padding, splits, corr radius, prop radius, refinements), seed
    "gmflow_scale1": (dict(num_scales=1, upsample_factor=8, reg_refine=False), (16, [2], [-1], [-1], 1), 31),
    "gmflow_scale2": (dict(num_scales=2, upsample_factor=4, reg_refine=False), (32, [2, 8], [-1, 4], [-1, 1], 1), 32),
    "gmflow_scale2_regrefine6": (dict(num_scales=2, upsample_factor=4, reg_refine=True),
                                 (32, [2, 8], [-1, 4], [-1, 1], 6), 33),
    "gmflow_scale1_regrefine2": (dict(num_scales=1, upsample_factor=8, reg_refine=True), (16, [2], [-1], [-1], 2), 34),
}


def _pad_bottom_right(images: torch.Tensor, factor: int) -> torch.Tensor:
    height, width = images.shape[-2:]
    return F.pad(images, (0, (factor - width % factor) % factor, 0, (factor - height % factor) % factor))


def official_gmflow(out: Path, repo: Path) -> dict[str, torch.Tensor]:
    with reference_code(repo, fresh=("unimatch", "utils")):
        from unimatch.unimatch import UniMatch

        return _official_gmflow(out, UniMatch)


def _official_gmflow(out: Path, UniMatch) -> dict[str, torch.Tensor]:
    flows = {}
    for name, (kwargs, (padding, splits, corr, prop, refine), seed) in GMFLOW_CASES.items():
        model = UniMatch(feature_channels=128, num_head=1, ffn_dim_expansion=4, num_transformer_layers=6,
                         task="flow", **kwargs).eval()
        layout = layout_of(model.state_dict())
        model.load_state_dict(seeded_state_dict(layout, seed, GMFLOW_GAIN))
        image1, image2 = image_pair(BATCH, *GMFLOW_SIZE, seed=seed)
        height, width = GMFLOW_SIZE
        with torch.no_grad():
            result = model(_pad_bottom_right(image1 * 255, padding), _pad_bottom_right(image2 * 255, padding),
                           attn_type="swin", attn_splits_list=splits, corr_radius_list=corr,
                           prop_radius_list=prop, num_reg_refine=refine, pred_bidir_flow=False, task="flow")
        flow = result["flow_preds"][-1][:, :, :height, :width]
        flows[name] = flow
        save(out, name, layout, {"weights_seed": np.array(seed), "weights_gain": np.array(GMFLOW_GAIN),
                                 "image_seed": np.array(seed),
                                 "size": np.array(GMFLOW_SIZE), "padding_factor": np.array(padding),
                                 "num_reg_refine": np.array(refine), **summarize(flow, 2)}, flow)
    return flows


def motionedit_gmflow(repo: Path, official: torch.Tensor) -> None:
    """MotionEdit's scorer on the same weights and inputs must give the official code's flow."""
    with reference_code(repo / "train" / "scripts", repo / "train", fresh=("unimatch", "flow_grpo")):
        from flow_grpo.motionedit_scorer import MotionEditScorer

        _motionedit_gmflow(MotionEditScorer, official)


def _motionedit_gmflow(MotionEditScorer, official: torch.Tensor) -> None:
    kwargs, _, seed = GMFLOW_CASES["gmflow_scale2_regrefine6"]
    scorer = MotionEditScorer(torch.device("cpu"), cfg={"ckpt_path": None})
    layout = layout_of(scorer.model.state_dict())
    scorer.model.load_state_dict(seeded_state_dict(layout, seed, GMFLOW_GAIN))
    image1, image2 = image_pair(BATCH, *GMFLOW_SIZE, seed=seed)
    with torch.no_grad():
        flow = scorer._flow(image1 * 255, image2 * 255)
    difference = float((flow - official).abs().max())
    print(f"MotionEdit scorer vs official UniMatch, scale2-regrefine6: max |difference| {difference:.3g} px")
    assert difference < 1e-3, difference


def compare_with_project() -> None:
    """This project's estimators on the same weights and inputs: the whole flow fields compared."""
    sys.path.insert(0, str(ROOT))
    from motionnft.flow import RAFTFlow, UniMatchFlow

    print("\n| golden | reference | max abs difference (px) | mean abs difference (px) | mean abs flow (px) |")
    print("|---|---|---:|---:|---:|")
    for name, (reference, settings) in REFERENCE_FLOWS.items():
        weights = seeded_state_dict(settings["layout"], int(settings["weights_seed"]),
                                    float(settings.get("weights_gain", 1.0)))
        if name.startswith("raft"):
            estimator = RAFTFlow(weights, iterations=int(settings["iterations"]))
        else:
            estimator = UniMatchFlow(weights, num_reg_refine=int(settings["num_reg_refine"]))
        image1, image2 = image_pair(BATCH, *(int(v) for v in settings["size"]), seed=int(settings["image_seed"]))
        ours = estimator(image1, image2)
        difference = (ours - reference).abs()
        source = {"torchvision": "torchvision", "original": "princeton-vl RAFT"}.get(name.split("_")[-1], "official UniMatch")
        print(f"| {name} | {source} | {float(difference.max()):.2e} | {float(difference.mean()):.2e} | "
              f"{float(reference.abs().mean()):.3f} |")
    sys.path.remove(str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raft-repo", type=Path, required=True, help="clone of princeton-vl/RAFT")
    parser.add_argument("--unimatch-repo", type=Path, required=True, help="clone of autonomousvision/unimatch")
    parser.add_argument("--motionedit-repo", type=Path, required=True, help="clone of elainew728/motion-edit")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR)
    parser.add_argument("--compare", action="store_true",
                        help="also run this project's networks on the same weights and inputs and print the differences")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    torchvision_raft(args.out)
    original_raft(args.out, args.raft_repo.resolve())
    flows = official_gmflow(args.out, args.unimatch_repo.resolve())
    motionedit_gmflow(args.motionedit_repo.resolve(), flows["gmflow_scale2_regrefine6"])
    if args.compare:
        compare_with_project()
    return 0


if __name__ == "__main__":
    sys.exit(main())
