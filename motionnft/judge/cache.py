"""The judge's answers on disk, so a rerun (or a resumed run) does not ask the server again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..files import atomic_write


class JudgeCache:
    """Answers on disk, one small JSON file per request, keyed by a hash of
    (model, rendered prompt, hashes of the images sent, generation settings).

    Files are written atomically, so concurrent writers and interrupted runs never leave
    a truncated entry; an unreadable entry counts as a miss and is overwritten.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser()

    @staticmethod
    def key(model: str, prompt: str, image_hashes: Sequence[str], settings: Mapping) -> str:
        blob = json.dumps({"model": model, "prompt": prompt, "images": list(image_hashes),
                           "settings": dict(settings)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError):
            return None

    def put(self, key: str, value: dict) -> None:
        with atomic_write(self._path(key), "w") as handle:
            json.dump(value, handle)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.is_dir() else 0
