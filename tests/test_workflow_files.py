"""The example workflows are well-formed UI-format files (checked without a host; the host
tests convert, validate and run them against a real ComfyUI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


def test_there_are_workflows():
    assert len(WORKFLOWS) >= 2


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_is_a_consistent_ui_graph(path: Path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] >= max(nodes)
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        assert origin in nodes and target in nodes, f"link {link_id} joins missing nodes"
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_explains_itself_in_a_note(path: Path):
    notes = [n for n in json.loads(path.read_text())["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes, "each workflow carries a note saying what it does and which model files it needs"
    text = notes[0]["widgets_values"][0]
    assert "Model files" in text and len(text) > 200


def test_example_inputs_referenced_by_workflows_ship_with_the_pack():
    shipped = {p.name for p in (ROOT / "workflows" / "images").glob("*.png")}
    shipped |= {p.name for p in (ROOT / "workflows" / "videos").glob("*.mp4")}
    for path in WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] in ("LoadImage", "LoadVideo"):
                assert node["widgets_values"][0] in shipped, f"{path.name}: {node['widgets_values'][0]}"
