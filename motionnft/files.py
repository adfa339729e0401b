"""File helpers shared by every writer in the library."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)  # elsewhere: set and restore (briefly process-wide)
    os.umask(mask)
    return mask


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str) -> list[Path]:
    """Delete this project's temporaries ``<prefix><pid>.*`` in ``folder`` (files or folders)
    whose writer process is gone: what a kill during a write leaves behind. Returns them.

    Only names of that exact form are touched; a temporary of a live process is kept.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        rest = entry.name[len(prefix):] if entry.name.startswith(prefix) else ""
        pid = rest.split(".", 1)[0].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or process_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if a file can be written there: not a folder, and no part
    of its parent path an existing file.

    Raises:
        IsADirectoryError / NotADirectoryError naming ``path`` as given (not a temporary file).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, expected a file to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: cannot write there, {parent} is a file, not a folder")
            break
    return path


def check_output_folder(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if a folder can be created or reused there: not a file, not a
    symbolic link that leads nowhere (missing target or a loop), and no part of its parent path
    an existing file.

    Raises:
        NotADirectoryError / FileExistsError naming ``path`` as given.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.exists():
        raise FileExistsError(f"{path}: is a symbolic link that leads nowhere (a loop or a missing target), "
                              "expected a folder")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: is a file, expected a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: cannot create a folder there, {parent} is a file, not a folder")
            break
    return path


def check_not_an_input(output: str | os.PathLike, inputs, what: str) -> None:
    """Refuse an output file that is one of the inputs (the same file under any name): writing
    it would replace what is being read.

    Raises:
        ValueError naming ``what`` and both paths.
    """
    output = Path(output)
    if not output.exists():
        return
    for given in inputs:
        if given is not None and Path(given).exists() and os.path.samefile(output, given):
            raise ValueError(f"{what} {output}: is the input {given}; choose another output file")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path`` and move it over ``path`` on success.

    A crash or an exception inside the block leaves ``path`` untouched (the old file, or
    no file), never a truncated one. The parent folder is created if missing.
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); give it the permissions a plain open()
        # would have, so files written here are as readable as any other.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of a file's SHA-256: what logs record to notice a changed
    file (an edit scored again on resume, other weights under the same name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_file_stem(name: str, what: str) -> str:
    """``name`` if it can name a file inside a folder (a sample id as ``<id>.png``).

    Raises:
        ValueError naming ``what`` when ``name`` is empty, ``.`` or ``..``, or holds a slash, a
        backslash, a newline or a NUL: any of these could put the file elsewhere.
    """
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\n\r\0"):
        raise ValueError(f"{what} {name!r}: cannot name a file (expected a non-empty name without slashes, "
                         "backslashes, line breaks or NUL, and not '.' or '..')")
    return name


def path_inside(root: str | os.PathLike, relative, what: str) -> Path:
    """``root / relative`` if it stays inside ``root`` once resolved (symbolic links and ``..``
    followed); ``relative`` must be a relative path given as text.

    Raises:
        ValueError naming ``what``: not text, absolute, or resolving outside ``root``.
    """
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"{what}: expected a path relative to {root} as text, got {relative!r}")
    root = Path(root)
    path = root / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{what} {relative!r}: resolves outside {root}; a dataset's files must be inside its folder")
    return path
