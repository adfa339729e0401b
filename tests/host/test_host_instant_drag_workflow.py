"""workflows/instant_drag.json runs end to end inside a real ComfyUI: the example image, the drag
list it ships with, FlowGen, FlowDiffusion Edit, Save Image, the flow preview and Flow Alignment,
with tiny random FlowGen and FlowDiffusion files put in place of the files it picks
(test_workflows.py only validates it, as it needs model files, and expects its empty stand-ins
under the workflow's own names to fail: these files get their own names)."""

from __future__ import annotations

import shutil

import pytest
import torch
from comfyui_harness import REPO_ROOT, ComfyUIServer
from workflow_format import load_workflow, ui_to_api

from motionnft.image import load_image

pytest.importorskip("diffusers")

WORKFLOW = REPO_ROOT / "workflows" / "instant_drag.json"
FLOWGEN, FLOWDIFFUSION = "instant_drag_test_flowgen.safetensors", "instant_drag_test_flowdiffusion.safetensors"


@pytest.fixture(scope="module")
def instant_drag_files(comfyui: ComfyUIServer) -> None:
    """The example image in the input folder; tiny random FlowGen and FlowDiffusion files in
    models/motionnft_drag."""
    from motionnft.drag import FlowGen, FlowGenConfig
    from motionnft.drag.flowdiffusion import FlowDiffusion
    from motionnft.drag.flowdiffusion_files import CodecSpec, save_flowdiffusion
    from motionnft.drag.inference import save_flowgen

    for example in (REPO_ROOT / "workflows" / "images").glob("*.png"):
        shutil.copy(example, comfyui.input_dir / example.name)
    folder = comfyui.models_dir / "motionnft_drag"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("flowgen.safetensors", "flowdiffusion.safetensors"):  # the workflow's own choices must
        (folder / name).touch()  # be valid to convert it; empty, as test_workflows leaves them
    torch.manual_seed(0)
    save_flowgen(folder / FLOWGEN, FlowGen(FlowGenConfig.tiny()).eval())
    model = FlowDiffusion.tiny(32).eval()
    with torch.no_grad():
        model.unet.conv_in.weight.normal_(0, 0.1)  # the image and flow channels matter
    save_flowdiffusion(folder / FLOWDIFFUSION, model, CodecSpec.pooled(2, 2.5), 64)


def test_instant_drag_workflow_runs_from_drags_to_a_saved_edit_and_its_flow_alignment(
        comfyui: ComfyUIServer, instant_drag_files):
    info = comfyui.object_info()
    api, problems = ui_to_api(load_workflow(WORKFLOW), info)
    assert not problems, "\n".join(problems)
    by_type = {data["class_type"]: node for node, data in api.items()}
    assert api[by_type["MotionNFT_DragToFlow"]]["inputs"]["flowgen"] == "flowgen.safetensors"
    assert api[by_type["MotionNFT_FlowDiffusionEdit"]]["inputs"]["flowdiffusion"] == "flowdiffusion.safetensors"
    api[by_type["MotionNFT_DragToFlow"]]["inputs"]["flowgen"] = FLOWGEN
    api[by_type["MotionNFT_FlowDiffusionEdit"]]["inputs"]["flowdiffusion"] = FLOWDIFFUSION
    outputs = comfyui.run(api, timeout=600)
    source = load_image(comfyui.input_dir / api[by_type["LoadImage"]]["inputs"]["image"])
    (saved,) = outputs[by_type["SaveImage"]]["images"]
    edit = load_image(comfyui.output_file(saved))
    assert edit.shape == source.shape  # the edit comes back at the image's size
    assert outputs[by_type["PreviewImage"]]["images"]  # the FlowGen flow, colour-coded
    assert by_type["MotionNFT_FlowAlignment"] in outputs  # the edit scored against the FlowGen flow
