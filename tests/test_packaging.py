"""The repository's own rules: packaging, dependencies, and the library/host boundary."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_requirements_never_name_torch():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~\[ ;]", line)[0].lower() for line in lines if line}
    assert not names & {"torch", "torchvision", "torchaudio"}


def test_pyproject_declares_the_cli_extras_and_comfy_registry_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["motionnft"] == "motionnft.cli:main"
    assert {"train", "test"} <= set(project["project"]["optional-dependencies"])
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=0.3.64")
    assert "Repository" in project["project"]["urls"]
    torch_pins = [d for d in project["project"]["dependencies"] if d.startswith("torch")]
    assert torch_pins == ["torch>=2.1"]  # a floor, never a pin that would replace a user's torch


def test_the_library_never_imports_comfyui():
    forbidden = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}
    offenders = []
    for source in (ROOT / "motionnft").rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{source.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not offenders


def test_nodes_reach_the_library_by_relative_imports_only():
    # ComfyUI imports the pack under a path-derived name and has its own top-level
    # `nodes` module: absolute imports of ours would pick up the wrong modules.
    for source in (ROOT / "nodes").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(from|import)\s+(motionnft|nodes)\b", text, re.M), source.name


def test_pack_entry_point_serves_the_js_folder():
    text = (ROOT / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./js"' in text and "comfy_entrypoint" in text
    assert sorted(p.name for p in (ROOT / "js").glob("*.js"))


def test_flow_wheel_asset_matches_the_library_colour_coding():
    from motionnft.flow import flow_legend
    from motionnft.image import load_image

    asset = load_image(ROOT / "js" / "assets" / "flow_wheel.png")[0]
    expected = (flow_legend(asset.shape[-1]) * 255).round() / 255
    assert asset.shape == expected.shape
    assert (asset - expected).abs().max() < 1.5 / 255, "regenerate with: python tools/make_js_assets.py"


def test_front_end_modules_parse():
    import shutil
    import subprocess

    import pytest

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: cannot syntax-check js/")
    for script in sorted((ROOT / "js").glob("*.js")):
        check = subprocess.run([node, "--input-type=module", "--check"], input=script.read_text(),
                               capture_output=True, text=True)
        assert check.returncode == 0, f"{script.name}: {check.stderr}"


def test_every_python_file_of_the_pack_compiles():
    # The nodes only import inside ComfyUI, so a syntax error there would pass every other
    # CI test; compile everything instead.
    for source in [ROOT / "__init__.py", *ROOT.glob("nodes/*.py"), *ROOT.glob("motionnft/**/*.py")]:
        compile(source.read_text(), str(source), "exec")


def test_every_node_module_is_registered():
    init = (ROOT / "nodes" / "__init__.py").read_text()
    for source in (ROOT / "nodes").glob("*_nodes.py"):
        assert f"from .{source.stem} import" in init, f"nodes/{source.name} is not imported by nodes/__init__.py"
