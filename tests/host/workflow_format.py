"""ComfyUI workflow files: UI format (what users share) -> API format (what /prompt runs).

Only the front end converts UI to API; the tests do it from the server's ``/object_info``
so that a workflow file is checked against the nodes a server really has.
"""

from __future__ import annotations

import json
from pathlib import Path

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Loader nodes whose file combos list a models folder -> that folder.
MODEL_FOLDERS = {
    "UNETLoader": "diffusion_models",
    "DualCLIPLoader": "text_encoders",
    "CLIPLoader": "text_encoders",
    "VAELoader": "vae",
    "LoraLoaderModelOnly": "loras",
    "MotionNFT_LoadLoraKontext": "loras",
    "MotionNFT_LoadLoraQwenImageEdit": "loras",
    "MotionNFT_AnimateImage": "motionnft_animation",
    "MotionNFT_DragToFlow": "motionnft_drag",
    "MotionNFT_FlowDiffusionEdit": "motionnft_drag",
}
# Loaders whose file widget is not named *_name.
MODEL_WIDGETS = {"MotionNFT_AnimateImage": "model", "MotionNFT_DragToFlow": "flowgen",
                 "MotionNFT_FlowDiffusionEdit": "flowdiffusion"}
NO_FILE = "none"  # a file combo's "no weights" choice (Drag to Flow's spline needs none)
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload")
MUTED, BYPASSED = 2, 4


def load_workflow(path: Path) -> dict:
    workflow = json.loads(Path(path).read_text())
    assert workflow.get("version") == 0.4, f"{path}: expected a UI-format workflow, version 0.4"
    return workflow


def input_order(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, config) of a node's inputs in the order the front end builds widgets."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            kind = spec[0]
            config = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, config))
    return out


def is_widget(kind, config: dict) -> bool:
    if config.get("forceInput") or config.get("rawLink"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(kind, config: dict) -> list | None:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return config.get("options")
    return None


def widget_slots(kind, config: dict, name: str) -> int:
    """How many ``widgets_values`` entries the front end writes for this input."""
    extra = 0
    if kind == "INT" and (config.get("control_after_generate") or name in ("seed", "noise_seed")):
        extra = 1  # the "fixed / increment / decrement / randomize" companion
    if any(config.get(flag) for flag in UPLOAD_FLAGS):
        extra = 1  # the upload button's value
    return 1 + extra


def ui_to_api(workflow: dict, object_info: dict) -> tuple[dict, list[str]]:
    """Convert a UI-format workflow; returns (API graph, problems found on the way)."""
    problems: list[str] = []
    links = {link[0]: link for link in workflow.get("links", [])}
    nodes = {node["id"]: node for node in workflow["nodes"]}
    graph: dict[str, dict] = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        info = object_info.get(kind)
        if info is None:
            problems.append(f"node {node['id']}: type {kind!r} is not known to this server")
            continue
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, object] = {}
        position = 0
        for name, input_kind, config in input_order(info):
            if not is_widget(input_kind, config):
                continue
            slots = widget_slots(input_kind, config, name)
            if position >= len(values):
                if name in info["input"].get("required", {}):
                    problems.append(f"node {node['id']} ({kind}): no value for widget {name!r}")
                position += slots
                continue
            value = values[position]
            position += slots
            inputs[name] = value
            problem = check_widget_value(value, input_kind, config)
            if problem:
                problems.append(f"node {node['id']} ({kind}): widget {name!r}: {problem}")
        if position != len(values):
            problems.append(
                f"node {node['id']} ({kind}): {len(values)} widget values for {position} widget slots"
            )
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None:
                problems.append(f"node {node['id']} ({kind}): input {slot['name']!r} uses missing link {link_id}")
                continue
            origin = nodes.get(link[1])
            if origin is None:
                problems.append(f"link {link_id}: origin node {link[1]} missing")
                continue
            inputs[slot["name"]] = [str(link[1]), link[2]]
        for name, input_kind, config in input_order(info):
            if name in info["input"].get("required", {}) and name not in inputs:
                problems.append(f"node {node['id']} ({kind}): required input {name!r} is not connected")
        graph[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return graph, problems


def check_widget_value(value, kind, config: dict) -> str | None:
    options = combo_options(kind, config)
    if options is not None:
        if value not in options:
            return f"{value!r} is not one of its options"
        return None
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if kind == "INT" and int(value) != value:
            return f"{value!r} is not an integer"
        if "min" in config and value < config["min"]:
            return f"{value} is below the minimum {config['min']}"
        if "max" in config and value > config["max"]:
            return f"{value} is above the maximum {config['max']}"
    if kind == "STRING" and not isinstance(value, str):
        return f"{value!r} is not a string"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{value!r} is not a boolean"
    return None


def model_files(workflow: dict, object_info: dict) -> dict[str, list[str]]:
    """Model files a workflow names, by loader node type (see MODEL_FOLDERS)."""
    loaders = {}
    for node in workflow["nodes"]:
        info = object_info.get(node["type"])
        if not info or node["type"] not in MODEL_FOLDERS:
            continue
        values = list(node.get("widgets_values") or [])
        position = 0
        for name, kind, config in input_order(info):
            if not is_widget(kind, config):
                continue
            named = name.endswith(("_name", "_name1", "_name2")) or name == MODEL_WIDGETS.get(node["type"])
            if position < len(values) and named and combo_options(kind, config) is not None \
                    and values[position] != NO_FILE:
                loaders.setdefault(node["type"], []).append(values[position])
            position += widget_slots(kind, config, name)
    return loaders
