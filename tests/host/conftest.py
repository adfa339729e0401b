"""Fixtures of the host tests; see comfyui_harness.py for how ComfyUI is started."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_harness import ComfyUIServer, comfyui_dir

# Nodes only the host tests use, linked into the temporary custom_nodes folder.
HOST_TEST_NODES = {"motionnft_host_test_nodes": Path(__file__).resolve().parent / "host_test_nodes"}


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory) -> ComfyUIServer:
    """One ComfyUI with this pack for the whole session (skips without COMFYUI_DIR)."""
    server = ComfyUIServer(comfyui_dir(), tmp_path_factory.mktemp("comfyui-base"), extra_custom_nodes=HOST_TEST_NODES)
    server.start()
    yield server
    server.stop()
