"""Fixtures of the host tests; see comfyui_harness.py for how ComfyUI is started."""

from __future__ import annotations

import pytest
from comfyui_harness import ComfyUIServer, comfyui_dir


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory) -> ComfyUIServer:
    """One ComfyUI with this pack for the whole session (skips without COMFYUI_DIR)."""
    server = ComfyUIServer(comfyui_dir(), tmp_path_factory.mktemp("comfyui-base"))
    server.start()
    yield server
    server.stop()
