"""Where learned flow backends find their weight files, and how those files are read.

A backend names the files it expects (``FlowBackend.weight_files``, preferred first).
``find_weights`` looks for them, in this order, in:

1. the folders in the ``MOTIONNFT_FLOW_WEIGHTS`` environment variable (``os.pathsep``-separated);
2. the folders registered with ``add_weight_folders`` — the ComfyUI nodes register
   ``models/optical_flow`` (and any ``optical_flow`` entry of ``extra_model_paths.yaml``);
3. torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps
   the RAFT files it downloaded.

Nothing is ever downloaded. When no file is found the error names every folder searched
and every file name that would have been accepted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

WEIGHTS_ENV = "MOTIONNFT_FLOW_WEIGHTS"

FolderSource = str | os.PathLike | Callable[[], Iterable[str | os.PathLike]]

_REGISTERED: list[FolderSource] = []


class WeightsNotFoundError(FileNotFoundError):
    """No weight file for a learned flow backend; the message says where to put one, and ``hint``
    how the caller passes a path (a caller with other names for it uses :meth:`with_hint`)."""

    HINT = "--weights PATH on the command line, weights= in Python"

    def __init__(self, message: str, hint: str = HINT):
        super().__init__(f"{message}or pass its path ({hint}).")
        self.message_start = message

    def with_hint(self, hint: str) -> "WeightsNotFoundError":
        return WeightsNotFoundError(self.message_start, hint)


def add_weight_folders(*sources: FolderSource) -> None:
    """Register folders searched for flow weights (after ``$MOTIONNFT_FLOW_WEIGHTS``).

    A source is a folder, or a callable returning folders that is asked again at every
    search (so a host's folder list can change after registration). Registering the same
    source twice has no effect.
    """
    for source in sources:
        if not callable(source):
            source = str(Path(source).expanduser())
        if source not in _REGISTERED:
            _REGISTERED.append(source)


def remove_weight_folders(*sources: FolderSource) -> None:
    """Undo ``add_weight_folders`` for these sources (unknown ones are ignored)."""
    for source in sources:
        if not callable(source):
            source = str(Path(source).expanduser())
        if source in _REGISTERED:
            _REGISTERED.remove(source)


def _torch_hub_checkpoints() -> Path | None:
    try:
        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # a broken TORCH_HOME must not break the search
        return None


def weight_folders() -> list[Path]:
    """Every folder searched, in search order, without duplicates (existing or not)."""
    folders: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV, "")
    candidates: list[str | os.PathLike] = [p for p in env.split(os.pathsep) if p]
    for source in _REGISTERED:
        candidates.extend(source() if callable(source) else [source])
    hub = _torch_hub_checkpoints()
    if hub is not None:
        candidates.append(hub)
    for candidate in candidates:
        folder = Path(candidate).expanduser()
        if folder not in folders:
            folders.append(folder)
    return folders


def find_weights(
    backend: str,
    expected: Iterable[str],
    weights: str | os.PathLike | None = None,
    folders: Iterable[str | os.PathLike] | None = None,
) -> Path:
    """The weight file a learned backend should load.

    Args:
        backend: the backend's name (for the error message).
        expected: file names the backend accepts when ``weights`` is not given, preferred first.
        weights: ``None`` (take the first expected file found), a path to a file, or a file
            name / relative path looked up in the folders.
        folders: the folders to search; default ``weight_folders()``.
    Raises:
        WeightsNotFoundError naming every folder searched and the file names expected.
    """
    expected = tuple(expected)
    folders = [Path(f) for f in folders] if folders is not None else weight_folders()
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if path.is_absolute() or path.parent != Path("."):
            candidates = [] if path.is_absolute() else [f / path for f in folders]
        else:
            candidates = [f / path for f in folders]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        wanted = f"the weight file {str(weights)!r}"
    else:
        for name in expected:
            for folder in folders:
                if (folder / name).is_file():
                    return folder / name
        wanted = "a weight file"
    searched = "\n".join(f"  - {folder}{'' if folder.is_dir() else ' (does not exist)'}" for folder in folders)
    names = "\n".join(f"  - {name}" for name in expected) or "  (none)"
    raise WeightsNotFoundError(
        f"flow backend {backend!r} needs {wanted}, and none was found.\n"
        f"Folders searched:\n{searched or '  (none)'}\n"
        f"Expected file names (any one):\n{names}\n"
        f"Put one of them in ComfyUI's models/optical_flow folder, in a folder listed in ${WEIGHTS_ENV}, "
    )


def load_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``.pth``/``.pt``/``.ckpt``/``.bin`` or ``.safetensors``), on the CPU.

    Only tensors and plain containers are unpickled (``weights_only``). A checkpoint that
    wraps its weights (``{"model": ...}``, ``{"state_dict": ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.suffix.lower() in (".safetensors", ".sft"):
        try:
            from safetensors.torch import load_file
        except ImportError as error:  # pragma: no cover - safetensors ships with ComfyUI and diffusers
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package") from error
        return dict(load_file(str(path), device="cpu"))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    return unwrap_state_dict(loaded, str(path))


def unwrap_state_dict(loaded, origin: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (bare, or under ``model``/``state_dict``)."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{origin}: expected a state dict of tensors, got {type(loaded).__name__}")
    return dict(loaded)
