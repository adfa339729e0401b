"""The front end in headless Chromium against the real host: workflows load, one runs, and
the pack's DOM widgets (reward breakdown, flow legend, drag editor) behave.

Needs Debian's Chromium (/usr/bin/chromium, or CHROMIUM) and the Python package
playwright (no browser download: Playwright drives the system Chromium). Skipped with the
reason when either is missing or COMFYUI_DIR is unset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from comfyui_harness import REPO_ROOT, ComfyUIServer
from workflow_format import load_workflow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def page(comfyui: ComfyUIServer, tmp_path_factory):
    with front_end(comfyui) as page:
        # MOTIONNFT_SCREENSHOTS keeps the screenshots somewhere lasting (docs use them).
        lasting = os.environ.get("MOTIONNFT_SCREENSHOTS")
        page.screenshots = Path(lasting) if lasting else tmp_path_factory.mktemp("screenshots")
        page.screenshots.mkdir(parents=True, exist_ok=True)
        yield page


def set_setting(comfyui: ComfyUIServer, name: str, value) -> None:
    """Store a front-end setting on the server (read by every page opened afterwards)."""
    request = urllib.request.Request(
        f"{comfyui.url}/settings/{name}", data=json.dumps(value).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


@contextlib.contextmanager
def front_end(comfyui: ComfyUIServer):
    """ComfyUI's front end in headless Chromium, with the example inputs in place; the page
    records errors raised by the pack's own scripts in ``page.motionnft_errors``."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser tests")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    for example in [*(REPO_ROOT / "workflows" / "images").glob("*.png"), *(REPO_ROOT / "workflows" / "videos").glob("*.mp4")]:
        shutil.copy(example, comfyui.input_dir / example.name)
    # A new user would get the template browser in front of the canvas.
    set_setting(comfyui, "Comfy.TutorialCompleted", True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        # Only the pack's own scripts are judged here (a front end may log its own errors).
        page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}")
                if "/extensions/motionnft/" in (error.stack or "") else None)
        page.goto(comfyui.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        page.motionnft_errors = errors
        try:
            yield page
        finally:
            browser.close()


def open_workflow(page, path: Path) -> None:
    workflow = load_workflow(path)
    page.evaluate("async (data) => { await window.app.loadGraphData(data); }", workflow)
    page.wait_for_timeout(500)


def show_node(page, node_id: int) -> None:
    """Put a node in the middle of the canvas at 100 % so its DOM widgets are visible."""
    page.evaluate(
        """(id) => {
          const canvas = window.app.canvas, node = window.app.graph.getNodeById(id);
          canvas.ds.scale = 1;
          canvas.ds.offset = [400 - node.pos[0], 120 - node.pos[1]];
          canvas.setDirty(true, true);
        }""",
        node_id,
    )
    page.wait_for_timeout(400)


def run_graph(page, comfyui: ComfyUIServer) -> dict:
    before = set(comfyui.get("/history"))
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    for _ in range(600):
        history = comfyui.get("/history")
        new = [key for key in history if key not in before]
        if new and history[new[0]].get("status", {}).get("completed") is not None:
            entry = history[new[0]]
            assert entry["status"]["status_str"] == "success", entry["status"]
            return entry["outputs"]
        page.wait_for_timeout(200)
    raise TimeoutError("the queued workflow did not finish")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_every_workflow_opens_without_missing_nodes(page, path: Path):
    open_workflow(page, path)
    missing = page.evaluate(
        "() => window.app.graph._nodes.map((n) => n.type).filter((t) => !(t in LiteGraph.registered_node_types))"
    )
    assert missing == []
    count = page.evaluate("() => window.app.graph._nodes.length")
    assert count == len(load_workflow(path)["nodes"])
    page.screenshot(path=str(page.screenshots / f"{path.stem}.png"))
    assert not page.motionnft_errors, page.motionnft_errors


def test_reward_breakdown_and_flow_legend_fill_in_after_a_run(page, comfyui: ComfyUIServer):
    open_workflow(page, REPO_ROOT / "workflows" / "score_an_edit.json")
    show_node(page, 4)
    panel = page.locator(".motionnft-reward")
    assert panel.get_attribute("data-state") == "empty"
    # Change the flow nodes' widgets so they run again even if another test ran this graph
    # (ComfyUI would answer from its cache and send no new preview).
    page.evaluate(
        "() => window.app.graph._nodes.filter((n) => n.type === 'MotionNFT_FlowToImage')"
        ".forEach((n) => { n.widgets.find((w) => w.name === 'arrow_spacing').value = 20; })"
    )
    outputs = run_graph(page, comfyui)
    page.wait_for_selector('.motionnft-reward[data-state="scored"]', timeout=30_000)
    record = outputs["4"]["motionnft_reward"][0]
    bars = page.locator(".motionnft-reward .motionnft-bar")
    assert bars.count() == 7
    shown = {bars.nth(i).get_attribute("data-term"): float(bars.nth(i).get_attribute("data-value")) for i in range(7)}
    assert shown["reward"] == record["reward"] and shown["mas"] == pytest.approx(record["mas"])
    assert shown["d_dir"] == pytest.approx(record["d_dir"])
    page.wait_for_function(
        "() => [...document.querySelectorAll('.motionnft-reward-maps img')].filter((i) => i.naturalWidth > 0).length === 4",
        timeout=20_000,
    )
    assert "reward" in page.locator(".motionnft-reward-summary").inner_text()
    wheel = page.locator(".motionnft-flow-wheel").first
    assert page.evaluate("(img) => img.naturalWidth", wheel.element_handle()) == 128
    captions = page.locator(".motionnft-flow-legend").evaluate_all("(els) => els.map((e) => e.dataset.peak || '')")
    assert any(float(peak) > 0 for peak in captions if peak)
    page.screenshot(path=str(page.screenshots / "score_an_edit_after_run.png"))


def drag_value(page) -> list:
    raw = page.evaluate("() => window.app.graph.getNodeById(2).widgets.find((w) => w.name === 'drags').value")
    return json.loads(raw)["drags"] if raw else []


def drag_on_image(page, fx0, fy0, fx1, fy1) -> None:
    """Drag with the mouse between two points given as fractions of the image shown."""
    frame = page.locator(".motionnft-drag-frame").bounding_box()
    page.mouse.move(frame["x"] + fx0 * frame["width"], frame["y"] + fy0 * frame["height"])
    page.mouse.down()
    page.mouse.move(frame["x"] + fx1 * frame["width"], frame["y"] + fy1 * frame["height"], steps=5)
    page.mouse.up()
    page.wait_for_timeout(150)


def check_whole_image_shown(page, image_size: tuple[int, int]) -> dict:
    """The image's box lies inside the editor (nothing cut off), keeps the image's aspect ratio
    and touches two opposite sides of the stage (fitted, not shrunk further)."""
    box = page.evaluate(
        """() => {
          const rect = (selector) => {
            const r = document.querySelector(selector).getBoundingClientRect();
            return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height};
          };
          return {root: rect('.motionnft-drag-editor'), stage: rect('.motionnft-drag-stage'),
                  frame: rect('.motionnft-drag-frame'), image: rect('.motionnft-drag-image')};
        }"""
    )
    frame, stage, root, image = box["frame"], box["stage"], box["root"], box["image"]
    for side in ("left", "top"):
        assert frame[side] >= stage[side] - 1 and stage[side] >= root[side] - 1, box
    for side in ("right", "bottom"):
        assert frame[side] <= stage[side] + 1 and stage[side] <= root[side] + 1, box
    assert image["width"] == pytest.approx(frame["width"], abs=1) and image["height"] == pytest.approx(frame["height"], abs=1)
    assert frame["width"] / frame["height"] == pytest.approx(image_size[0] / image_size[1], rel=0.02)
    fills_width = abs(frame["width"] - stage["width"]) <= 1
    fills_height = abs(frame["height"] - stage["height"]) <= 1
    assert fills_width or fills_height, box
    return box


def test_drag_editor_shows_and_maps_the_whole_image_at_any_node_size(page, comfyui: ComfyUIServer):
    open_workflow(page, REPO_ROOT / "workflows" / "drag_to_flow_preview.json")
    page.wait_for_function(
        "() => document.querySelector('.motionnft-drag-image')?.naturalWidth === 256", timeout=20_000
    )
    sizes = {"default": None, "wide and short": [640, 330], "narrow and tall": [300, 720], "large": [700, 800]}
    for name, size in sizes.items():
        page.evaluate(
            """(size) => {
              const node = window.app.graph.getNodeById(2);
              node.setSize(size ?? node.computeSize());
              window.app.canvas.setDirty(true, true);
            }""",
            size,
        )
        show_node(page, 2)
        page.wait_for_timeout(300)
        check_whole_image_shown(page, (256, 256))
        page.locator(".motionnft-drag-clear").click()
        # Corner to corner of the image shown: the drag spans the whole image.
        drag_on_image(page, 0.02, 0.02, 0.98, 0.98)
        (drag,) = drag_value(page)
        assert drag == pytest.approx([0.02 * 256, 0.02 * 256, 0.98 * 256, 0.98 * 256], abs=4), name
        if size is None:
            page.screenshot(path=str(page.screenshots / "drag_editor_default_size.png"))
    assert not page.motionnft_errors, page.motionnft_errors


def test_drag_editor_records_undoes_and_feeds_drag_to_flow(page, comfyui: ComfyUIServer):
    open_workflow(page, REPO_ROOT / "workflows" / "drag_to_flow_preview.json")
    show_node(page, 2)
    editor = page.locator(".motionnft-drag-editor")
    assert editor.locator(".motionnft-drag-pair").count() == 2  # the drags saved in the workflow
    page.wait_for_function(
        "() => document.querySelector('.motionnft-drag-image')?.naturalWidth === 256", timeout=20_000
    )
    editor.locator(".motionnft-drag-clear").click()
    assert drag_value(page) == []

    def drag(fx0, fy0, fx1, fy1):
        drag_on_image(page, fx0, fy0, fx1, fy1)

    drag(0.30, 0.30, 0.50, 0.40)
    (first,) = drag_value(page)
    assert first == pytest.approx([0.30 * 256, 0.30 * 256, 0.50 * 256, 0.40 * 256], abs=3)
    drag(0.60, 0.70, 0.60, 0.50)
    assert len(drag_value(page)) == 2
    assert page.locator(".motionnft-drag-count").inner_text() == "2 drags"
    page.locator(".motionnft-drag-undo").click()
    assert drag_value(page) == [first]
    # ComfyUI's own Ctrl+Z (focus on the canvas) reverts the last change, the Undo click.
    page.mouse.click(5, 500)
    page.keyboard.press("Control+z")
    page.wait_for_function(
        "() => document.querySelectorAll('.motionnft-drag-editor .motionnft-drag-pair').length === 2", timeout=10_000
    )
    assert len(drag_value(page)) == 2
    page.locator(".motionnft-drag-clear").click()
    show_node(page, 2)
    drag(0.55, 0.55, 0.70, 0.45)
    assert page.locator(".motionnft-drag-editor .motionnft-drag-pair").count() == 1
    outputs = run_graph(page, comfyui)
    assert outputs["4"]["images"], "the warp preview ran with the drawn drag"
    page.screenshot(path=str(page.screenshots / "drag_editor.png"))
    assert not page.motionnft_errors, page.motionnft_errors
