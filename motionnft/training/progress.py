"""Progress bars of a training run (tqdm). Generic."""

from __future__ import annotations


def progress_bar(total: int, description: str, enabled: bool = True, *, leave: bool = False, unit: str = "it",
                 initial: int = 0):
    """A tqdm bar (a silent one when ``enabled`` is false, e.g. on processes other than the main one)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=description, leave=leave, disable=not enabled, unit=unit, initial=initial)
