"""Convert an official TPSMM checkpoint (``vox.pth.tar`` ...) to safetensors, once, by hand.

``motionnft.animation.load_official_checkpoint`` reads the official ``.pth.tar`` with
``torch.load(weights_only=True)``, which accepts what the official ``Logger.save_cpk``
writes (state dicts, Adam optimiser states, the epoch). Use this tool only if that loader
refuses your copy (for example a re-saved file that pickles other objects): it unpickles
the file with ``weights_only=False``, which can run code hidden in a malicious file, so run
it only on a file from a source you trust. It keeps the networks (kp_detector,
dense_motion_network, inpainting_network, bg_predictor, avd_network) and writes
``<name>.safetensors`` beside the input (or ``--out``); the library then loads that file
without unpickling anything.

The TPSMM code and checkpoints are MIT-licensed (Copyright (c) 2021 yoyo-nb,
github.com/yoyo-nb/Thin-Plate-Spline-Motion-Model); the notice is written into the
safetensors metadata.

Usage::

    python tools/convert_tpsmm.py checkpoints/vox.pth.tar [--out models/tpsmm/vox.safetensors]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motionnft.animation import NETWORKS, load_official_checkpoint, save_converted  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="official .pth.tar from a source you trust")
    parser.add_argument("--out", type=Path, help="output .safetensors (default: beside the input)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.with_name(args.checkpoint.name.split(".")[0] + ".safetensors")
    # The one place in this project that unpickles arbitrary objects: an explicit, user-run step.
    payload = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    networks = {name: {key: value for key, value in payload[name].items() if isinstance(value, torch.Tensor)}
                for name in NETWORKS if isinstance(payload.get(name), dict)}
    if "kp_detector" not in networks:
        print(f"{args.checkpoint}: no kp_detector state dict; not a TPSMM checkpoint", file=sys.stderr)
        return 1
    save_converted(networks, out)
    model = load_official_checkpoint(out)  # proves every key fits, no missing or unexpected ones
    print(f"wrote {out}: {', '.join(networks)}; architecture {model.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
