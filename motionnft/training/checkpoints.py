"""Checkpoints of a run folder: written atomically, read without running code, found for resume.

Generic: a checkpoint is a folder ``RUN/checkpoints/step-NNNNNN/`` holding one state file
(a dict of tensors and plain containers: numbers, strings, lists, dicts; what
``torch.load(weights_only=True)`` reads) plus any files the trainer writes into it (e.g.
the LoRA). ``RUN/checkpoints/latest`` names the newest one; older ones beyond ``keep``
are deleted. What goes into the state (weights, optimiser, data cursor, RNG states) is the
trainer's business.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..files import atomic_write, check_file_stem, remove_stale_temporaries

STATE_FILE = "trainer_state.pt"


def write_run_config(run_dir: Path, text: str, name: str = "config.toml") -> None:
    """Create the run folder and write its resolved configuration (atomically)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / name, "w") as handle:
        handle.write(text)


class Checkpoints:
    """The checkpoints of one run folder, ``run_dir / "checkpoints"``."""

    def __init__(self, run_dir: str | os.PathLike, keep: int, state_file: str = STATE_FILE):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoints to keep: expected an integer >= 1, got {keep!r}")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep = keep
        self.state_file = state_file

    def save(self, step: int, state: dict, files: dict[str, Callable[[Path], object]] | None = None) -> Path:
        """Write ``step-NNNNNN/``: each ``files[name](path)`` writes one file, then ``state`` is
        saved; the folder appears only complete (temp folder + rename), ``latest`` then names
        it, and checkpoints beyond ``keep`` are deleted. A step already saved is kept as is."""
        final = self.root / f"step-{step:06d}"
        if final.is_dir():
            return final
        remove_stale_temporaries(self.root, ".step.")  # a save cut short by a kill
        temporary = self.root / f".step.{os.getpid()}.{step:06d}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
        for name, write in (files or {}).items():
            write(temporary / name)
        with atomic_write(temporary / self.state_file) as handle:
            torch.save(state, handle)
        os.replace(temporary, final)
        with atomic_write(self.root / "latest", "w") as handle:
            handle.write(final.name + "\n")
        kept = sorted(p for p in self.root.glob("step-*") if p.is_dir())
        for old in kept[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def find(self, resume: str | os.PathLike | None) -> Path | None:
        """The checkpoint to resume from: None for ``None``/``""``; ``"auto"``: this run's latest
        (None if there is none); a run folder: its latest; else a checkpoint folder."""
        if resume in (None, "", False):
            return None
        if resume == "auto":
            latest = self.root / "latest"
            if not latest.is_file():
                return None
            return self._latest(self.root)
        path = Path(resume)
        if (path / "checkpoints" / "latest").is_file():
            return self._latest(path / "checkpoints")
        if not (path / self.state_file).is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path} (looked for {path / self.state_file} and "
                                    f"{path / 'checkpoints' / 'latest'})")
        return path

    @staticmethod
    def _latest(root: Path) -> Path:
        """The checkpoint ``root/latest`` names: a folder of ``root`` itself, never a path elsewhere."""
        name = (root / "latest").read_text().strip()
        check_file_stem(name, f"{root / 'latest'}: checkpoint name")
        return root / name

    def load(self, path: Path, required: set[str], what: str) -> dict:
        """The state saved in checkpoint ``path``, read with ``torch.load(weights_only=True)``:
        a file that would run code when unpickled is refused, never executed.

        Raises:
            FileNotFoundError without the state file; ValueError naming the file when it holds
            other objects, or is not a dict with the ``required`` keys (``what`` names what
            such a state holds, for the message).
        """
        state_file = path / self.state_file
        if not state_file.is_file():
            raise FileNotFoundError(f"no trainer state in {path} (looked for {state_file})")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message ends with the unpickler's reason, e.g. "Unsupported global: GLOBAL os.system ..."
            found = re.search(r"Unsupported global: GLOBAL (\S+)|WeightsUnpickler error: ([^\n]+)", str(error))
            first = next((g for g in found.groups() if g), "") if found else type(error).__name__
            first = f"it names {first}" if found and found.group(1) else first
            raise ValueError(
                f"refusing to load {state_file}: it holds objects other than tensors and plain containers, which "
                f"unpickling could use to run code ({first}). A {self.state_file} this version of motionnft wrote "
                "holds none: the file comes from elsewhere or from an older version (numpy RNG state as an "
                "array); start over (--resume none) or use a checkpoint you wrote") from None
        except Exception as error:  # noqa: BLE001 - text, truncated or another format: the unpickler raises anything
            raise ValueError(f"{state_file}: not a trainer state torch.save wrote ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else 'no detail'}); start over (--resume none) "
                             "or resume from another checkpoint") from None
        if not isinstance(state, dict) or not required <= set(state):
            raise ValueError(f"{state_file} is not {what}")
        return state
