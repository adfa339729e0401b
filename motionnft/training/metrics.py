"""Per-step metrics of a run: ``metrics.csv`` and TensorBoard. Generic: a row is a dict of
numbers (and strings) per optimiser step, with a ``step`` key."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from ..files import atomic_write


class MetricsLog:
    """``metrics.csv`` (one row per step; rows past a resumed step are dropped) + TensorBoard.

    Only the process that writes (``enabled``) keeps rows; floats are stored with 6
    significant digits, so :attr:`rows` read the same after a resume as before it.
    """

    def __init__(self, out: Path, resumed_step: int, enabled: bool):
        self.path = out / "metrics.csv"
        self.rows: list[dict] = []
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resumed_step]
            self._rewrite()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resumed_step + 1)
        except ImportError:
            print("note: tensorboard is not installed; metrics go to metrics.csv only", file=sys.stderr)

    def _rewrite(self) -> None:
        if not self.rows:
            return
        keys = list(self.rows[-1].keys())
        with atomic_write(self.path, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._rewrite()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def series(self, key: str) -> list[tuple[float, float]]:
        """``(step, value)`` of every row that has a value of ``key``."""
        return [(float(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "", "nan")]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def moving_average(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing mean of the last ``window`` ``(x, y)`` points at each x."""
    values = [y for _, y in points]
    return [(x, sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)))
            for i, (x, _) in enumerate(points)]
