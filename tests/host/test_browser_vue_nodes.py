"""The pack's DOM widgets under the new Vue node renderer (front ends that have it)."""

from __future__ import annotations

import pytest
from comfyui_harness import REPO_ROOT, ComfyUIServer
from test_browser import check_whole_image_shown, drag_value, front_end, open_workflow, run_graph, set_setting

SETTING = "Comfy.VueNodes.Enabled"
MIN_FRONTEND = (1, 30)


@pytest.fixture(scope="module")
def vue_page(comfyui: ComfyUIServer):
    set_setting(comfyui, SETTING, True)
    try:
        with front_end(comfyui) as page:
            enabled = page.evaluate(f"() => window.app.extensionManager?.setting?.get?.('{SETTING}')")
            version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || '0'")
            if not enabled:
                pytest.skip("this front end has no Vue node renderer")
            if tuple(int(part) for part in version.split(".")[:2]) < MIN_FRONTEND:
                # Seen with 1.27.10: its experimental Vue renderer did not show extension DOM widgets.
                pytest.skip(f"front end {version}: its experimental Vue node renderer does not show extension DOM widgets")
            yield page
    finally:
        set_setting(comfyui, SETTING, False)


def test_reward_panel_fills_in_under_vue_nodes(vue_page, comfyui: ComfyUIServer):
    open_workflow(vue_page, REPO_ROOT / "workflows" / "score_an_edit.json")
    vue_page.evaluate(
        "() => window.app.graph._nodes.filter((n) => n.type === 'MotionNFT_MotionReward')"
        ".forEach((n) => { n.widgets.find((w) => w.name === 'variant').value = 'paper'; })"
    )
    # The nodes really are Vue components (DOM elements per node), not canvas drawings.
    assert vue_page.locator("[data-node-id]").count() >= 10
    outputs = run_graph(vue_page, comfyui)
    vue_page.wait_for_selector('.motionnft-reward[data-state="scored"]', timeout=30_000, state="attached")
    bars = vue_page.locator(".motionnft-reward .motionnft-bar")
    assert bars.count() == 7
    assert float(bars.nth(5).get_attribute("data-value")) == outputs["4"]["motionnft_reward"][0]["reward"]
    assert not vue_page.motionnft_errors, vue_page.motionnft_errors


def test_drag_editor_draws_under_vue_nodes(vue_page, comfyui: ComfyUIServer):
    open_workflow(vue_page, REPO_ROOT / "workflows" / "drag_to_flow_preview.json")
    vue_page.wait_for_function(
        "() => document.querySelector('.motionnft-drag-image')?.naturalWidth === 256", timeout=20_000
    )
    editor = vue_page.locator(".motionnft-drag-editor")
    editor.locator(".motionnft-drag-clear").click()
    stage = editor.locator(".motionnft-drag-stage")
    stage.scroll_into_view_if_needed()
    check_whole_image_shown(vue_page, (256, 256))
    box = editor.locator(".motionnft-drag-frame").bounding_box()
    vue_page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.4 * box["height"])
    vue_page.mouse.down()
    vue_page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.5 * box["height"], steps=5)
    vue_page.mouse.up()
    (drag,) = drag_value(vue_page)
    assert drag == pytest.approx([0.4 * 256, 0.4 * 256, 0.6 * 256, 0.5 * 256], abs=4)
    assert not vue_page.motionnft_errors, vue_page.motionnft_errors
