"""Known accuracy on the real Middlebury pairs in ../shared/data (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from motionnft.flow import create_estimator, read_flo, valid_flow_mask
from motionnft.image import load_image

MIDDLEBURY = Path(__file__).resolve().parents[2] / "shared" / "data" / "flow" / "middlebury"


@pytest.mark.parametrize(
    "preset, known_epe",
    [("ultrafast", 0.54), ("fast", 0.44), ("medium", 0.22)],
)
def test_dis_reproduces_the_known_rubberwhale_epe(preset, known_epe):
    scene = MIDDLEBURY / "RubberWhale"
    if not (scene / "flow10.flo").exists():
        pytest.skip(f"reference data absent: {scene}")
    truth = read_flo(scene / "flow10.flo")
    flow = create_estimator("dis", preset)(load_image(scene / "frame10_color.png"), load_image(scene / "frame11_color.png"))[0]
    epe = float((flow - truth).norm(dim=0)[valid_flow_mask(truth)].mean())
    assert epe == pytest.approx(known_epe, abs=0.02)
