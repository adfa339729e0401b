"""Every example workflow opens on the real host: known node types, valid widget values, and
the ones that need no large model files run through /prompt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from comfyui_harness import REPO_ROOT, ComfyUIServer
from workflow_format import MODEL_FOLDERS, load_workflow, model_files, ui_to_api

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))

@pytest.fixture(scope="module")
def example_inputs(comfyui: ComfyUIServer) -> None:
    """The example images in the input folder, and empty stand-ins for every model file the
    large-model workflows name (enough for the server to validate the file choices)."""
    for example in [*(REPO_ROOT / "workflows" / "images").glob("*.png"), *(REPO_ROOT / "workflows" / "videos").glob("*.mp4")]:
        shutil.copy(example, comfyui.input_dir / example.name)
    info = comfyui.object_info()
    for path in WORKFLOWS:
        for loader, names in model_files(load_workflow(path), info).items():
            for name in names:
                target = comfyui.models_dir / MODEL_FOLDERS[loader] / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.exists():
                    target.touch()


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_converts_and_validates(comfyui: ComfyUIServer, example_inputs, path: Path):
    workflow = load_workflow(path)
    api, problems = ui_to_api(workflow, comfyui.object_info())
    assert not problems, "\n".join(problems)
    assert api, "the workflow has no executable node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_runs_or_needs_only_model_files(comfyui: ComfyUIServer, example_inputs, path: Path):
    workflow = load_workflow(path)
    info = comfyui.object_info()
    api, _ = ui_to_api(workflow, info)
    needs = model_files(workflow, info)
    if not needs:
        outputs = comfyui.run(api, timeout=600)
        previews = [node for node, data in api.items() if data["class_type"] in ("PreviewImage", "SaveImage")]
        for node in previews:
            assert outputs.get(node, {}).get("images"), f"{path.name}: node {node} produced no image"
        return
    # Large-model workflows: the server validates the graph (the stand-in files make the
    # file choices valid), starts it, and fails where it first loads an empty stand-in.
    message = comfyui.run_expecting_error(api, timeout=600)
    assert any(loader in message for loader in needs), message
