"""Build the example workflows in workflows/ with ComfyUI's own front end.

    COMFYUI_DIR=~/ComfyUI python tools/build_workflows.py            # starts a ComfyUI
    python tools/build_workflows.py --url http://127.0.0.1:8188      # or uses a running one

Each workflow below is a list of nodes (type, widget values by name, title) and links
(origin node, output name -> target node, input name). The script creates them in a
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) inside the real
front end and saves ``app.graph.serialize()``, so the files are exactly what ComfyUI
itself writes (UI format, version 0.4). It also writes the example input images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "host"))

from motionnft.files import atomic_write  # noqa: E402
from motionnft.image import save_image  # noqa: E402
from motionnft.synthetic import demo_sample  # noqa: E402

WORKFLOWS_DIR = ROOT / "workflows"
EXAMPLE_IMAGES = {
    "motionnft_example_input.png": "input",
    "motionnft_example_target.png": "target",
    "motionnft_example_edit.png": "half_way",
}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)
    title: str | None = None
    size: tuple[int, int] | None = None


@dataclass
class Workflow:
    file: str
    note: str
    nodes: list[Node]
    links: list[tuple[int, str | int, int, str]]


def note(text: str, pos=(-420, 0), size=(400, 360)) -> Node:
    return Node(999, "Note", pos, {"text": text}, title="About this workflow", size=size)


WORKFLOWS = [
    Workflow(
        file="score_an_edit.json",
        note=(
            "Score an edit against a reference frame with the MotionNFT motion reward.\n\n"
            "Load the original image, the edit and the ground-truth frame (how the edit "
            "should look). Motion Reward computes the optical flow input->edit and "
            "input->ground truth and compares them: the reward (0-1, steps of 0.2, what "
            "MotionNFT trains with), MAS (0-100, the benchmark metric), every term as bars "
            "and the error maps on the node, and the breakdown figure.\n\n"
            "The flows of both are shown with their colour legend (hue = direction, "
            "paler = slower).\n\n"
            "Model files: none (OpenCV DIS flow). Example images: copy "
            "workflows/images/*.png from the MotionNFT pack into ComfyUI/input."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}, "input (original)"),
            Node(2, "LoadImage", (0, 360), {"image": "motionnft_example_edit.png"}, "edited"),
            Node(3, "LoadImage", (0, 720), {"image": "motionnft_example_target.png"}, "ground truth"),
            Node(4, "MotionNFT_MotionReward", (360, 0), {"backend": "dis", "preset": "medium", "variant": "code"}, size=(420, 700)),
            Node(5, "PreviewImage", (820, 0), {}, "reward breakdown", size=(520, 620)),
            Node(6, "MotionNFT_OpticalFlow", (360, 760), {"backend": "dis", "preset": "medium"}, "flow of the edit"),
            Node(7, "MotionNFT_OpticalFlow", (360, 980), {"backend": "dis", "preset": "medium"}, "flow of the ground truth"),
            Node(8, "MotionNFT_FlowToImage", (820, 700), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 24, "legend": True}),
            Node(9, "MotionNFT_FlowToImage", (820, 1000), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 24, "legend": True}),
            Node(10, "PreviewImage", (1180, 700), {}, "flow of the edit"),
            Node(11, "PreviewImage", (1180, 1000), {}, "flow of the ground truth"),
        ],
        links=[
            (1, "IMAGE", 4, "input_image"), (2, "IMAGE", 4, "edited_image"), (3, "IMAGE", 4, "target_image"),
            (4, "breakdown", 5, "images"),
            (1, "IMAGE", 6, "image_a"), (2, "IMAGE", 6, "image_b"),
            (1, "IMAGE", 7, "image_a"), (3, "IMAGE", 7, "image_b"),
            (6, "flow", 8, "flow"), (7, "flow", 9, "flow"),
            (8, "image", 10, "images"), (9, "image", 11, "images"),
        ],
    ),
    Workflow(
        file="drag_to_flow_preview.json",
        note=(
            "Drag editing, first step: turn point drags into motion and preview it.\n\n"
            "On the Drag to Flow node, click a point of the image and drag it to where it "
            "should go (several pairs; Undo / Clear; Ctrl+Z). The drags become a dense "
            "flow by thin-plate-spline interpolation; Warp Image by Flow (forward) pushes "
            "the pixels along it as a preview, with holes where nothing lands.\n\n"
            "Model files: none. Example image: copy workflows/images/*.png from the "
            "MotionNFT pack into ComfyUI/input."
        ),
        nodes=[
            Node(1, "LoadImage", (0, 0), {"image": "motionnft_example_input.png"}),
            Node(2, "MotionNFT_DragToFlow", (360, 0), {
                "drags": json.dumps({"size": [256, 256], "drags": [[150.0, 150.0, 190.0, 95.0], [110.0, 70.0, 122.0, 70.0]]}),
                "smoothness": 0.0,
            }, size=(360, 520)),
            Node(3, "MotionNFT_WarpImageByFlow", (760, 0), {"direction": "forward"}),
            Node(4, "PreviewImage", (1100, 0), {}, "drag preview"),
            Node(5, "MotionNFT_FlowToImage", (760, 260), {"max_magnitude": 0.0, "arrows": True, "arrow_spacing": 16, "legend": True}),
            Node(6, "PreviewImage", (1100, 360), {}, "drag flow"),
        ],
        links=[
            (1, "IMAGE", 2, "image"), (1, "IMAGE", 3, "image"), (2, "flow", 3, "flow"),
            (3, "image", 4, "images"), (2, "flow", 5, "flow"), (5, "image", 6, "images"),
        ],
    ),
]


BUILD_SCRIPT = """
(spec) => {
  const graph = window.app.graph;
  graph.clear();
  const byId = new Map();
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error(`unknown node type ${n.type}`);
    node.id = n.id;
    graph.add(node);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets)) {
      const widget = node.widgets?.find((w) => w.name === name);
      if (!widget) throw new Error(`${n.type} has no widget ${name}`);
      widget.value = value;
    }
    if (n.size) node.size = n.size;
    byId.set(n.id, node);
  }
  for (const [from, output, to, input] of spec.links) {
    const origin = byId.get(from), target = byId.get(to);
    const out = typeof output === "number" ? output : origin.outputs.findIndex((o) => o.name === output);
    const inp = target.inputs.findIndex((i) => i.name === input);
    if (out < 0 || inp < 0) throw new Error(`cannot link ${from}.${output} -> ${to}.${input}`);
    origin.connect(out, target, inp);
  }
  graph.setDirtyCanvas(true, true);
  return JSON.stringify(graph.serialize());
}
"""


def write_example_images() -> None:
    sample = demo_sample(size=256)
    images = {"input": sample.input, "target": sample.target, **sample.edits}
    for name, key in EXAMPLE_IMAGES.items():
        save_image(images[key], WORKFLOWS_DIR / "images" / name)


def build(url: str, workflows: list[Workflow]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        for workflow in workflows:
            spec = {
                "nodes": [vars(n) for n in [note(workflow.note), *workflow.nodes]],
                "links": workflow.links,
            }
            data = json.loads(page.evaluate(BUILD_SCRIPT, spec))
            data.pop("id", None)  # a fresh id is given to each workflow a user opens
            with atomic_write(WORKFLOWS_DIR / workflow.file, "w") as handle:
                handle.write(json.dumps(data, indent=2) + "\n")
            print(f"wrote workflows/{workflow.file} ({len(data['nodes'])} nodes, {len(data['links'])} links)")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start one from COMFYUI_DIR)")
    args = parser.parse_args()
    write_example_images()
    if args.url:
        build(args.url, WORKFLOWS)
        return 0
    if not os.environ.get("COMFYUI_DIR"):
        parser.error("set COMFYUI_DIR to a ComfyUI checkout, or pass --url")
    from comfyui_harness import ComfyUIServer, comfyui_dir

    server = ComfyUIServer(comfyui_dir(), Path(tempfile.mkdtemp(prefix="motionnft-workflows-")))
    server.start()
    try:
        build(server.url, WORKFLOWS)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
