"""Run the pack inside a real ComfyUI: the server process and a small HTTP client.

Set ``COMFYUI_DIR`` to a ComfyUI checkout (0.3.64 or newer) whose Python has this pack's
requirements installed. The Python is ``COMFYUI_PYTHON`` if set, else the checkout's
``venv``/``.venv``, else the interpreter running the tests. Each test session starts
that ComfyUI once on a free loopback port with ``--base-directory`` pointing at a
temporary folder whose ``custom_nodes/`` holds a link to this repository, so the user's
own models, custom nodes and outputs are never touched.

Without ``COMFYUI_DIR`` every host test is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "motionnft"
STARTUP_TIMEOUT_S = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "300"))


def comfyui_dir() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value:
        pytest.skip("host tests need a ComfyUI: set COMFYUI_DIR to a ComfyUI checkout (see tests/host/conftest.py)")
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={value} has no main.py: expected a ComfyUI checkout")
    return path


def _comfyui_python(comfyui_dir: Path) -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for venv in ("venv", ".venv"):
        candidate = comfyui_dir / venv / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    return sys.executable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyUIServer:
    """A ComfyUI process on loopback with this pack installed, and a small HTTP client."""

    def __init__(
        self,
        comfyui_dir: Path,
        base_dir: Path,
        extra_custom_nodes: dict[str, Path] | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.comfyui_dir = comfyui_dir
        self.base_dir = base_dir
        self.extra_args = tuple(extra_args)  # more command-line arguments for main.py
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "comfyui.log"
        for name in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (base_dir / name).mkdir(parents=True, exist_ok=True)
        (base_dir / "custom_nodes" / PACK_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
        # Test-only nodes (never shipped in the pack), e.g. reading patched weights back.
        for name, folder in (extra_custom_nodes or {}).items():
            (base_dir / "custom_nodes" / name).symlink_to(folder, target_is_directory=True)
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def start(self) -> None:
        command = [
            _comfyui_python(self.comfyui_dir), "main.py",
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--disable-auto-launch", "--disable-api-nodes",
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Flow weights only from this temporary base: not from the user's torch hub cache
        # or MOTIONNFT_FLOW_WEIGHTS folders.
        env["TORCH_HOME"] = str(self.base_dir / "torch_home")
        env.pop("MOTIONNFT_FLOW_WEIGHTS", None)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, cwd=self.comfyui_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} during startup:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # HTTP -------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read()
                return json.loads(body) if body else {}
        except urllib.error.HTTPError as error:
            raise PromptRejected(error.code, error.read().decode(errors="replace")) from None

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def queue(self, graph: dict) -> str:
        answer = self.post("/prompt", {"prompt": graph, "client_id": self.client_id})
        if answer.get("node_errors"):
            raise PromptRejected(400, json.dumps(answer["node_errors"]))
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        self.post("/interrupt", {})
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, graph: dict, timeout: float = 300) -> dict:
        """Queue an API-format graph, wait, and return its outputs; raise on an execution error."""
        entry = self.wait(self.queue(graph), timeout)
        if entry["status"]["status_str"] != "success":
            raise ExecutionFailed(execution_error(entry))
        return entry["outputs"]

    def run_expecting_error(self, graph: dict, timeout: float = 300) -> str:
        """Queue a graph that must fail while executing; return the error message."""
        entry = self.wait(self.queue(graph), timeout)
        assert entry["status"]["status_str"] == "error", f"expected an execution error, got {entry['status']}"
        return execution_error(entry)

    def output_file(self, item: dict) -> Path:
        """Path of a file listed in a node's ``images`` output."""
        folder = {"output": self.output_dir, "temp": self.base_dir / "temp", "input": self.input_dir}[item["type"]]
        return folder / item.get("subfolder", "") / item["filename"]


class PromptRejected(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class ExecutionFailed(Exception):
    pass


def execution_error(entry: dict) -> str:
    """The execution_error message(s) recorded in a history entry."""
    messages = []
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            messages.append(f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}")
    return "\n".join(messages) or json.dumps(entry.get("status"))


def pack_node_ids() -> set[str]:
    """Every node_id the pack's source declares."""
    import re

    ids = set()
    for source in (REPO_ROOT / "nodes").glob("*.py"):
        ids.update(re.findall(r'node_id="(MotionNFT_\w+)"', source.read_text()))
    return ids
