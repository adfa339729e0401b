"""Benchmarks write their latest results into a Markdown file, each between its own markers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motionnft.files import atomic_write  # noqa: E402


def write_section(path: Path, name: str, section: str, title: str = "Benchmarks") -> None:
    """Replace ``<!-- name:start -->`` ... ``<!-- name:end -->`` in ``path`` by ``section`` (which
    carries the markers), or append it; a missing file is created with the heading ``# title``.
    Written atomically."""
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = path.read_text() if path.exists() else f"# {title}\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    with atomic_write(path, "w") as handle:
        handle.write(text)
