"""Replace one marked section of a Markdown file (the benchmarks' ``--write``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motionnft.files import atomic_write  # noqa: E402


def replace_section(path: Path, name: str, section: str, title: str) -> None:
    """Put ``section`` (which starts with ``<!-- name:start -->`` and ends with
    ``<!-- name:end -->``) in place of that section of ``path``, or append it; a missing
    file is created with the heading ``# title``. Written atomically."""
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = path.read_text() if path.exists() else f"# {title}\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    with atomic_write(path, "w") as handle:
        handle.write(text)
