"""Motion-edit datasets: (input image, instruction, target image) triplets.

Two layouts are read, one is written:

**Folder layout** (written by the miner, read by the trainer and the evaluator)::

    DATASET/
      metadata.jsonl        one JSON object per line, one line per sample
      images/<id>_input.png
      images/<id>_target.png

Each line holds at least ``id``, ``prompt``, ``input_image`` and ``target_image`` (paths
relative to the folder); any other keys (``category``, ``source``, ``metrics``, …) are kept
in :attr:`EditSample.extra`. An empty ``prompt`` means "not written yet".

**MotionEdit Hugging Face layout** (already on disk; nothing is downloaded): parquet files
(``data/*.parquet``, as the Hub stores them) or a ``datasets`` ``save_to_disk`` folder of
``.arrow`` files, with columns ``id``, ``prompt``, ``input_image``, ``target_image`` (image
columns as ``{"bytes", "path"}`` structs, raw bytes or paths) and optionally ``category``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .files import atomic_write, check_file_stem, path_inside
from .image import decode_image, save_image

METADATA_FILE = "metadata.jsonl"
IMAGES_DIR = "images"
REQUIRED_COLUMNS = ("id", "prompt", "input_image", "target_image")


@dataclass
class EditSample:
    """One triplet; images are decoded only when asked for."""

    id: str
    prompt: str
    input_source: Path | bytes
    target_source: Path | bytes
    category: str | None = None
    extra: dict = field(default_factory=dict)

    def input_image(self) -> torch.Tensor:
        """``(1, 3, H, W)`` float in [0, 1]."""
        return decode_image(self.input_source, f"{self.id}: input_image")

    def target_image(self) -> torch.Tensor:
        """``(1, 3, H, W)`` float in [0, 1]."""
        return decode_image(self.target_source, f"{self.id}: target_image")


class EditDataset(Sequence[EditSample]):
    """A loaded dataset: a sequence of :class:`EditSample` with where it came from."""

    def __init__(self, samples: list[EditSample], root: Path, layout: str):
        self.samples = samples
        self.root = root
        self.layout = layout

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]

    def __repr__(self) -> str:
        return f"EditDataset({len(self)} samples, {self.layout} layout, {self.root})"


def open_dataset(path: str | os.PathLike) -> EditDataset:
    """Open a dataset in the folder layout or the Hugging Face parquet/arrow layout.

    Raises:
        FileNotFoundError naming every place looked at when no dataset is found.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"dataset not found: {root} does not exist")
    if root.is_dir() and (root / METADATA_FILE).is_file():
        return EditDataset(_read_folder(root), root, "folder")
    parquet = [root] if root.suffix == ".parquet" else sorted(root.rglob("*.parquet")) if root.is_dir() else []
    if parquet:
        return EditDataset(_read_table_files(parquet, "parquet"), root, "parquet")
    arrow = [root] if root.suffix == ".arrow" else sorted(root.rglob("*.arrow")) if root.is_dir() else []
    if arrow:
        return EditDataset(_read_table_files(arrow, "arrow"), root, "arrow")
    raise FileNotFoundError(
        f"no dataset at {root}: looked for {root / METADATA_FILE} (folder layout), "
        f"{root}/**/*.parquet (Hugging Face parquet) and {root}/**/*.arrow (datasets save_to_disk)"
    )


def _read_folder(root: Path) -> list[EditSample]:
    samples = []
    for number, record in read_jsonl_records(root / METADATA_FILE):
        if not isinstance(record, dict):
            raise ValueError(f"{root / METADATA_FILE} line {number}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in REQUIRED_COLUMNS if key not in record]
        if missing:
            raise ValueError(f"{root / METADATA_FILE} line {number}: missing {', '.join(missing)}")
        extra = {k: v for k, v in record.items() if k not in REQUIRED_COLUMNS and k != "category"}
        where = f"{root / METADATA_FILE} line {number}"
        samples.append(
            EditSample(
                id=check_file_stem(str(record["id"]), f"{where}: id"),
                prompt=str(record["prompt"] or ""),
                input_source=path_inside(root, record["input_image"], f"{where}: input_image"),
                target_source=path_inside(root, record["target_image"], f"{where}: target_image"),
                category=record.get("category"),
                extra=extra,
            )
        )
    return samples


def read_jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every complete line of a JSON-lines file; a torn last line
    (an append cut short by a crash) is ignored."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no newline after it: an append that was cut short
                return
            raise ValueError(f"{path} line {number}: not valid JSON: {error}") from error


def _read_table_files(files: list[Path], kind: str) -> list[EditSample]:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            f"reading the Hugging Face {kind} layout needs pyarrow: pip install pyarrow "
            "(or pip install 'motionnft[train]')"
        ) from None
    samples = []
    for file in files:
        if kind == "parquet":
            table = pyarrow.parquet.read_table(file)
        else:
            with open(file, "rb") as handle:
                try:
                    table = pyarrow.ipc.open_stream(handle).read_all()
                except pyarrow.ArrowInvalid:
                    handle.seek(0)
                    table = pyarrow.ipc.open_file(handle).read_all()
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{file}: missing column(s) {', '.join(missing)}; found {', '.join(table.column_names)} "
                f"(expected {', '.join(REQUIRED_COLUMNS)})"
            )
        for row in table.to_pylist():
            extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k != "category"
                     and not isinstance(v, (bytes, dict))}
            samples.append(
                EditSample(
                    id=check_file_stem(str(row["id"]), f"{file}: id"),
                    prompt=str(row["prompt"] or ""),
                    input_source=_table_image(row["input_image"], file, row["id"], "input_image"),
                    target_source=_table_image(row["target_image"], file, row["id"], "target_image"),
                    category=row.get("category"),
                    extra=extra,
                )
            )
    return samples


def _table_image(value, file: Path, sample_id, column: str) -> Path | bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value)
        return path if path.is_absolute() else file.parent / path
    raise ValueError(f"{file}: sample {sample_id}: column {column} holds no image bytes or path")


class DatasetWriter:
    """Appends samples to a folder-layout dataset, crash-safely and resumably.

    Images are written atomically before their metadata line; a line is appended in one
    write and flushed to disk, so an interrupted run leaves a valid dataset (at worst a
    torn last line, which is repaired on the next open) and a rerun can skip the ids
    already present. One writer at a time: a second one on the same folder is refused.

    Use as a context manager::

        with DatasetWriter("my_dataset") as writer:
            if sample_id not in writer:
                writer.add(sample_id, prompt, input_image, target_image, source={...}, metrics={...})
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._ids: set[str] = set()
        self._handle = None
        self.missing_images: list[str] = []
        """Ids of the samples whose image files were gone when the writer opened: dropped, to be made again."""

    def __enter__(self) -> "DatasetWriter":
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / IMAGES_DIR).mkdir(exist_ok=True)
        metadata = self.root / METADATA_FILE
        self._handle = open(metadata, "ab+")
        self._lock()
        self._repair_torn_tail()
        records = [record for _, record in read_jsonl_records(metadata)]
        self.missing_images = [r.get("id") for r in records if not self._images_present(r)]
        if self.missing_images:
            self._rewrite([r for r in records if r.get("id") not in set(self.missing_images)])
        self._ids = {record.get("id") for record in records} - set(self.missing_images)
        return self

    def _images_present(self, record: dict) -> bool:
        """The record's files are all there (images, and the flow and mask it names)."""
        named = ("input_image", "target_image") + tuple(k for k in ("flow", "mask") if k in record)
        return all(isinstance(record.get(key), str) and (self.root / record[key]).is_file() for key in named)

    def _rewrite(self, records: list[dict]) -> None:
        """Replace metadata.jsonl by ``records`` (atomically), then hold the new file as the old."""
        with atomic_write(self.root / METADATA_FILE) as handle:
            handle.write(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records))
        self._handle.close()
        self._handle = open(self.root / METADATA_FILE, "ab+")
        self._lock()

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _lock(self) -> None:
        try:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except BlockingIOError:
            self._handle.close()
            self._handle = None
            raise RuntimeError(f"{self.root} is being written by another process") from None

    def _repair_torn_tail(self) -> None:
        handle = self._handle
        handle.seek(0)
        data = handle.read()
        if data and not data.endswith(b"\n"):
            tail = data[data.rfind(b"\n") + 1 :]
            try:
                json.loads(tail)  # complete, only its newline was lost: keep it
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            except json.JSONDecodeError:
                handle.truncate(len(data) - len(tail))
            handle.flush()
            os.fsync(handle.fileno())
        handle.seek(0, os.SEEK_END)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, sample_id: str, prompt: str, input_image: torch.Tensor, target_image: torch.Tensor,
            flow: torch.Tensor | None = None, mask: torch.Tensor | None = None, **fields) -> None:
        """Write one sample: images ``(3, H, W)``/``(1, 3, H, W)`` in [0, 1]; ``fields`` are JSON-able.

        ``flow`` ``(2, H, W)`` pixels (input -> target, the input's size) is written as
        ``images/<id>_flow.flo`` and ``mask`` ``(H, W)`` / ``(1, H, W)`` in [0, 1] (1 = moving) as
        ``images/<id>_mask.png``; the record names them (``flow``, ``mask``).
        """
        if self._handle is None:
            raise RuntimeError("DatasetWriter.add outside its 'with' block")
        if sample_id in self._ids:
            raise ValueError(f"sample id {sample_id!r} is already in {self.root}")
        check_file_stem(sample_id, "sample id")
        reserved = set(REQUIRED_COLUMNS) & set(fields)
        if reserved:
            raise ValueError(f"fields {sorted(reserved)} are set by add() itself")
        relative_input = f"{IMAGES_DIR}/{sample_id}_input.png"
        relative_target = f"{IMAGES_DIR}/{sample_id}_target.png"
        save_image(input_image, self.root / relative_input)
        save_image(target_image, self.root / relative_target)
        record = {"id": sample_id, "prompt": prompt, "input_image": relative_input,
                  "target_image": relative_target, **fields}
        if flow is not None:
            from .flow.flo import write_flo

            record["flow"] = f"{IMAGES_DIR}/{sample_id}_flow.flo"
            write_flo(self.root / record["flow"], flow)
        if mask is not None:
            record["mask"] = f"{IMAGES_DIR}/{sample_id}_mask.png"
            plane = mask.reshape(1, 1, *mask.shape[-2:]).float()
            save_image(plane.expand(-1, 3, -1, -1), self.root / record["mask"])
        self._handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._ids.add(sample_id)


def write_metadata(root: str | os.PathLike, records: list[dict]) -> Path:
    """Rewrite a folder dataset's metadata atomically (e.g. after filling in prompts)."""
    path = Path(root) / METADATA_FILE
    with atomic_write(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path

