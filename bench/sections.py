"""Benchmarks write their results into a Markdown file between named markers."""

from __future__ import annotations

import re
from pathlib import Path

from motionnft.files import atomic_write


def replace_section(path: Path, name: str, section: str) -> None:
    """Put ``section`` (which starts/ends with ``<!-- name:start/end -->``) into ``path``.

    An existing section of that name is replaced in place; otherwise it is appended.
    The file is written atomically.
    """
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    with atomic_write(path, "w") as handle:
        handle.write(text)
