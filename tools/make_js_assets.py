"""Regenerate the front end's static images from the library (run after changing the colour coding).

    python tools/make_js_assets.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from motionnft.flow import flow_legend  # noqa: E402
from motionnft.image import save_image  # noqa: E402

FLOW_WHEEL = ROOT / "js" / "assets" / "flow_wheel.png"
FLOW_WHEEL_SIZE = 128


def main() -> None:
    save_image(flow_legend(FLOW_WHEEL_SIZE), FLOW_WHEEL)
    print(f"wrote {FLOW_WHEEL}")


if __name__ == "__main__":
    main()
