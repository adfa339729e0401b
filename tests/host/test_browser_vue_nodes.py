"""The pack's DOM widgets under the new Vue node renderer (front ends that have it)."""

from __future__ import annotations

import json
import urllib.request

import pytest
from comfyui_harness import REPO_ROOT, ComfyUIServer
from test_browser import CHROMIUM, CHROMIUM_ARGS, drag_value, open_workflow, run_graph

SETTING = "Comfy.VueNodes.Enabled"
MIN_FRONTEND = (1, 30)


def set_setting(comfyui: ComfyUIServer, name: str, value) -> None:
    request = urllib.request.Request(
        f"{comfyui.url}/settings/{name}", data=json.dumps(value).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


@pytest.fixture(scope="module")
def vue_page(comfyui: ComfyUIServer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser tests")
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    set_setting(comfyui, "Comfy.TutorialCompleted", True)
    set_setting(comfyui, SETTING, True)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}")
                    if "/extensions/motionnft/" in (error.stack or "") else None)
            page.goto(comfyui.url)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            enabled = page.evaluate(f"() => window.app.extensionManager?.setting?.get?.('{SETTING}')")
            version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || '0'")
            if not enabled:
                pytest.skip("this front end has no Vue node renderer")
            if tuple(int(part) for part in version.split(".")[:2]) < MIN_FRONTEND:
                # Seen with 1.27.10: its experimental Vue renderer did not show extension DOM widgets.
                pytest.skip(f"front end {version}: its experimental Vue node renderer does not show extension DOM widgets")
            page.motionnft_errors = errors
            yield page
            browser.close()
    finally:
        set_setting(comfyui, SETTING, False)


def test_reward_panel_fills_in_under_vue_nodes(vue_page, comfyui: ComfyUIServer):
    for example in (REPO_ROOT / "workflows" / "images").glob("*.png"):
        (comfyui.input_dir / example.name).write_bytes(example.read_bytes())
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
    box = stage.bounding_box()
    vue_page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.4 * box["height"])
    vue_page.mouse.down()
    vue_page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.5 * box["height"], steps=5)
    vue_page.mouse.up()
    (drag,) = drag_value(vue_page)
    assert drag == pytest.approx([0.4 * 256, 0.4 * 256, 0.6 * 256, 0.5 * 256], abs=4)
    assert not vue_page.motionnft_errors, vue_page.motionnft_errors
