"""Convert an official TPSMM checkpoint (``vox.pth.tar`` ...) to safetensors, once, by hand.

The library reads the official ``.pth.tar`` directly (``torch.load(weights_only=True)``,
which accepts what the official ``Logger.save_cpk`` writes: state dicts, Adam states, the
epoch). This tool reads it the same way, so it unpickles nothing else either, keeps only
the networks (kp_detector, dense_motion_network, inpainting_network, bg_predictor,
avd_network) and writes ``<name>.safetensors`` beside the input (or ``--out``): a smaller
file without the optimiser states, loaded without any unpickling.

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


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motionnft.animation import load_official_checkpoint, read_official_state_dicts, save_converted  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="official .pth.tar from a source you trust")
    parser.add_argument("--out", type=Path, help="output .safetensors (default: beside the input)")
    args = parser.parse_args(argv)
    out = args.out or args.checkpoint.with_name(args.checkpoint.name.split(".")[0] + ".safetensors")
    try:
        networks = read_official_state_dicts(args.checkpoint)  # weights_only=True; refuses anything else
    except (OSError, ValueError) as error:
        print(f"convert_tpsmm: {error}", file=sys.stderr)
        return 1
    save_converted(networks, out)
    model = load_official_checkpoint(out)  # proves every key fits, no missing or unexpected ones
    print(f"wrote {out}: {', '.join(networks)}; architecture {model.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
