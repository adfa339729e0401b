"""Where a system's edits come from: a folder of files, or a producer (e.g. a model + LoRA) that fills one.

Every source maps a dataset sample to the file holding its edit, ``<folder>/<sample id>.<suffix>``:
that file (and its :func:`~motionnft.files.file_digest`) is what the evaluation log records, so a resumed run
scores only new or changed edits.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data import EditSample
from ..files import atomic_write, check_file_stem
from ..image import check_image_batch, save_image

EDIT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class EditSource(abc.ABC):
    """One system's edits of a dataset's samples: the plug-in point for producers of edits."""

    name: str

    @abc.abstractmethod
    def find(self, sample: EditSample) -> Path | None:
        """The file holding this system's edit of ``sample`` if it exists now (no work done)."""

    def obtain(self, sample: EditSample) -> Path | None:
        """The edit's file, producing it first if this source can; None if there is none."""
        return self.find(sample)

    @abc.abstractmethod
    def describe(self) -> dict:
        """What this source is (for reports)."""


class EditFolder(EditSource):
    """Edits as files ``<folder>/<sample id>.<png|jpg|jpeg|webp>`` (suffix in any case)."""

    def __init__(self, name: str, folder: str | os.PathLike):
        self.name = _system_name(name)
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"edits of {self.name!r}: folder not found: {self.folder}")
        self._index: dict[str, Path] = {}
        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() not in EDIT_SUFFIXES or not path.is_file():
                continue
            if path.stem in self._index:
                raise ValueError(
                    f"edits of {self.name!r}: two files for sample {path.stem!r}: "
                    f"{self._index[path.stem].name} and {path.name}; keep one"
                )
            self._index[path.stem] = path

    def find(self, sample: EditSample) -> Path | None:
        return self._index.get(sample.id)

    def unmatched(self, sample_ids) -> list[str]:
        """Image files of the folder whose name matches no sample id."""
        ids = set(sample_ids)
        return sorted(path.name for stem, path in self._index.items() if stem not in ids)

    def describe(self) -> dict:
        return {"kind": "folder", "folder": str(self.folder)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {str(self.folder)!r})"


EditProducer = Callable[[EditSample], torch.Tensor]
"""``producer(sample) -> (1, 3, H, W)`` float in [0, 1]: the edit of ``sample.input_image()``
following ``sample.prompt``."""

BatchEditProducer = Callable[..., Sequence[torch.Tensor]]
"""``producer(samples, progress=None) -> [(1, 3, H, W), ...]``, one edit per sample, with
``batched = True`` and ``batch_size`` attributes (e.g. :class:`motionnft.generate.EditGenerator`);
``progress(step, steps)``, if given, is called as a batch advances."""

PRODUCER_FILE = "produced_by.json"
"""What made a :class:`ProducedEdits` folder's edits (its ``description``), kept beside them."""


class ProducedEdits(EditFolder):
    """Edits made on demand by ``producer`` and kept as ``<folder>/<id>.png``.

    Edits already in the folder are reused, so an interrupted evaluation resumes without
    producing them again. This is how a model (e.g. a base model + LoRA sampler) is
    evaluated: wrap its sampling in a producer. :meth:`produce` makes every missing edit
    up front, in batches when the producer is batched (:data:`BatchEditProducer`); the
    evaluator otherwise makes them one at a time as it reaches them.

    A ``description`` (default: the producer's ``describe()``, if it has one) is kept in
    ``<folder>/produced_by.json``; a folder whose edits were made with another
    description is refused, so two systems are never mixed in one folder.
    """

    def __init__(self, name: str, folder: str | os.PathLike, producer: EditProducer | BatchEditProducer,
                 description: dict | None = None, batch_size: int | None = None):
        if description is None and callable(getattr(producer, "describe", None)):
            description = producer.describe()
        self.description = dict(description or {})
        folder = Path(folder).expanduser()
        check_produced_folder(folder, self.description)
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__(name, folder)
        self.producer = producer
        self.batched = bool(getattr(producer, "batched", False))
        self.batch_size = int(batch_size or getattr(producer, "batch_size", 1))
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.description:
            with atomic_write(self.folder / PRODUCER_FILE, "w") as handle:
                json.dump(self.description, handle, indent=2, default=str)

    def _make(self, samples: list[EditSample], progress=None) -> list[torch.Tensor]:
        if self.batched:
            images = list(self.producer(samples, progress=progress))
        else:
            images = [self.producer(sample) for sample in samples]
        if len(images) != len(samples):
            raise ValueError(f"the producer of {self.name!r} returned {len(images)} edits for {len(samples)} samples")
        return images

    def _keep(self, sample: EditSample, image: torch.Tensor) -> Path:
        image = check_image_batch(f"edit of {sample.id} by {self.name!r}", image)
        path = save_image(image[:1], self.folder / f"{check_file_stem(sample.id, 'sample id')}.png")
        self._index[sample.id] = path
        return path

    def obtain(self, sample: EditSample) -> Path | None:
        path = self.find(sample)
        if path is None:
            path = self._keep(sample, self._make([sample])[0])
        return path

    def produce(self, samples: Sequence[EditSample], show_progress: bool = False) -> tuple[int, int]:
        """Make every missing edit of ``samples``, ``batch_size`` at a time; returns ``(made, existing)``.

        Each edit is written (atomically) as soon as its batch is done, so an interruption
        (Ctrl-C) loses at most the batch in progress and a rerun makes only what is missing.
        """
        from tqdm import tqdm

        samples = list(samples)
        todo = [s for s in samples if self.find(s) is None]
        bar = tqdm(total=len(todo), desc=f"editing ({self.name})", unit="edit", disable=not show_progress,
                   dynamic_ncols=True)

        def progress(step: int, steps: int) -> None:
            bar.set_postfix_str(f"step {step}/{steps}", refresh=True)

        try:
            for start in range(0, len(todo), self.batch_size):
                batch = todo[start:start + self.batch_size]
                for sample, image in zip(batch, self._make(batch, progress if show_progress else None)):
                    self._keep(sample, image)
                    bar.update(1)
        finally:
            bar.close()
        return len(todo), len(samples) - len(todo)

    def describe(self) -> dict:
        return {"kind": "produced", "folder": str(self.folder), **self.description}


def check_produced_folder(folder: str | os.PathLike, description: dict) -> None:
    """Refuse ``folder`` if its ``produced_by.json`` says its edits were made otherwise than ``description``.

    Raises:
        ValueError naming the settings that differ and both values.
    """
    path = Path(folder).expanduser() / PRODUCER_FILE
    if not description or not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable ({error}); delete it if the edits beside it are yours") from None
    now = json.loads(json.dumps(description, default=str))
    if before != now:
        differing = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                     if before.get(k) != now.get(k)]
        raise ValueError(
            f"{Path(folder)} holds edits made with other settings ({'; '.join(differing)}): choose another "
            f"output folder, or delete its edits and {PRODUCER_FILE} to make them again"
        )


def _system_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "\n\r|"):
        raise ValueError(f"system name {name!r}: expected a non-empty name without '|' or line breaks")
    return name.strip()



