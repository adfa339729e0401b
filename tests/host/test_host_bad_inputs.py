"""Every node of the pack, fed each bad input it can receive through /prompt, fails with a clear
error naming that input, and the server stays up (the next prompt runs)."""

from __future__ import annotations

import pytest
from comfyui_harness import ComfyUIServer

BAD = "HostTest_BadTensor"
IMAGE, MASK, FLOW = "@image", "@mask", "@flow"  # where the bad tensor goes (widget values are plain numbers)
SLOT = {IMAGE: 0, MASK: 1, FLOW: 2}
FLOW_DEFAULTS = {"backend": "dis", "preset": "auto"}
MINE_DEFAULTS = {
    "fps": 24.0, "window_seconds": 3.0, "pairing": "endpoints", "stride_seconds": 0.0, "sample_fps": 4.0,
    "analysis_size": 384, "max_camera_motion": 0.012, "min_motion": 0.02, "max_occlusion": 0.3, "overrides": "",
    "dataset_name": "", "max_pairs": 32, "show_rejected": True, **FLOW_DEFAULTS,
}
# node, its inputs with "BAD" where the bad tensor goes (output index), the good ones from "GOOD"
NODES = {
    "optical_flow.image_a": ("MotionNFT_OpticalFlow", {"image_a": IMAGE, "image_b": "good_image", **FLOW_DEFAULTS}),
    "optical_flow.image_b": ("MotionNFT_OpticalFlow", {"image_a": "good_image", "image_b": IMAGE, **FLOW_DEFAULTS}),
    "motion_reward.edited_image": ("MotionNFT_MotionReward", {
        "input_image": "good_image", "edited_image": IMAGE, "target_image": "good_image", "variant": "code",
        **FLOW_DEFAULTS}),
    "motion_reward.target_image": ("MotionNFT_MotionReward", {
        "input_image": "good_image", "edited_image": "good_image", "target_image": IMAGE, "variant": "code",
        **FLOW_DEFAULTS}),
    "warp.image": ("MotionNFT_WarpImageByFlow", {"image": IMAGE, "flow": "good_flow", "direction": "backward"}),
    "warp.flow": ("MotionNFT_WarpImageByFlow", {"image": "good_image", "flow": FLOW, "direction": "backward"}),
    "flow_to_image.flow": ("MotionNFT_FlowToImage", {
        "flow": FLOW, "max_magnitude": 0.0, "arrows": False, "arrow_spacing": 24, "legend": False}),
    "flow_to_image.arrows_over": ("MotionNFT_FlowToImage", {
        "flow": "good_flow", "max_magnitude": 0.0, "arrows": True, "arrow_spacing": 24, "legend": False,
        "arrows_over": IMAGE}),
    "flow_to_optical_flow.flow": ("MotionNFT_FlowToOpticalFlow", {"flow": FLOW}),
    "drag_to_flow.image": ("MotionNFT_DragToFlow", {
        "image": IMAGE, "drags": "10,10 -> 20,20", "smoothness": 0.0, "pin_borders": True}),
    "drag_to_flow.mask": ("MotionNFT_DragToFlow", {
        "image": "good_image", "drags": "10,10 -> 20,20", "smoothness": 0.0, "pin_borders": True, "mask": MASK}),
    "judge.edited_image": ("MotionNFT_JudgeEdit", {
        "input_image": "good_image", "edited_image": IMAGE, "instruction": "jump",
        "server_url": "http://127.0.0.1:9/v1", "model": "m", "timeout": 5}),
    "mine.images": ("MotionNFT_MinePairs", {"images": IMAGE, **MINE_DEFAULTS}),
}
KINDS = {  # what the message must say for each kind of bad tensor
    "empty": "empty", "nan": "NaN or infinite", "inf": "NaN or infinite", "zero_size": "empty",
    "one_channel": "got", "four_channel": "got",
}
NOT_APPLICABLE = {("drag_to_flow.mask", "one_channel"), ("drag_to_flow.mask", "four_channel")}  # a MASK has no channels


OUTPUT_NODES = {"MotionNFT_MotionReward", "MotionNFT_JudgeEdit", "MotionNFT_MinePairs"}


def graph_for(case: str, kind: str) -> dict:
    node, inputs = NODES[case]
    graph = {"bad": {"class_type": BAD, "inputs": {"kind": kind}},
             "good": {"class_type": BAD, "inputs": {"kind": "good"}}}
    wired = {}
    for name, value in inputs.items():
        if value in SLOT:
            wired[name] = ["bad", SLOT[value]]
        elif value == "good_image":
            wired[name] = ["good", SLOT[IMAGE]]
        elif value == "good_flow":
            wired[name] = ["good", SLOT[FLOW]]
        else:
            wired[name] = value
    graph["node"] = {"class_type": node, "inputs": wired}
    if node not in OUTPUT_NODES:  # a prompt runs only what an output node needs
        graph["out"] = {"class_type": "PreviewAny", "inputs": {"source": ["node", 0]}}
    return graph


CASES = [(case, kind) for case in NODES for kind in KINDS if (case, kind) not in NOT_APPLICABLE]


@pytest.mark.parametrize("case, kind", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_a_bad_tensor_is_refused_naming_the_input(comfyui: ComfyUIServer, case, kind):
    message = comfyui.run_expecting_error(graph_for(case, kind), timeout=120)
    input_name = case.split(".", 1)[1]
    assert input_name in message, message
    assert KINDS[kind] in message, message
    assert "Traceback" not in message.splitlines()[0]


def test_the_server_stays_up_and_runs_a_good_prompt_after_the_bad_ones(comfyui: ComfyUIServer):
    graph = graph_for("warp.image", "good")
    graph["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["node", 0]}}
    outputs = comfyui.run(graph, timeout=120)
    assert outputs["out"]["images"]
    assert "MotionNFT_OpticalFlow" in comfyui.object_info()


def test_a_missing_flow_weight_file_names_every_folder_searched(comfyui: ComfyUIServer):
    graph = graph_for("optical_flow.image_a", "good")
    graph["node"]["inputs"].update(backend="raft_small", preset="auto")
    message = comfyui.run_expecting_error(graph, timeout=120)
    assert "raft_small" in message and "Folders searched" in message and "optical_flow" in message
