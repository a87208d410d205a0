"""Append-only, long-format records (step, metric, i, j, value) that pandas reads without TensorBoard."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import torch

COLUMNS = ("step", "metric", "i", "j", "value")


class RecordWriter:
    """Appends rows to RUN_DIR/records/NAME.csv, flushing each batch so a cut-off run stays readable."""

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.path = Path(run_dir) / "records" / f"{name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([COLUMNS])

    def _append(self, rows: Iterable[Iterable]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)

    def scalar(self, step: int, metric: str, value: float, i: int | str = "", j: int | str = "") -> None:
        self._append([(step, metric, i, j, f"{float(value):.8g}")])

    def vector(
        self, step: int, metric: str, values: torch.Tensor, index: Iterable[int] | None = None
    ) -> None:
        """One row per entry; i is the entry's index (or the given labels, e.g. timesteps)."""
        values = values.detach().float().cpu().tolist()
        index = list(range(len(values))) if index is None else list(index)
        self._append((step, metric, int(i), "", f"{v:.8g}") for i, v in zip(index, values, strict=True))

    def matrix(self, step: int, metric: str, values: torch.Tensor) -> None:
        """One row per entry (i, j) of a 2-D tensor."""
        values = values.detach().float().cpu()
        self._append(
            (step, metric, i, j, f"{values[i, j].item():.8g}")
            for i in range(values.shape[0])
            for j in range(values.shape[1])
        )


def write_intervals(run_dir: str | Path, name: str, edges: torch.Tensor) -> None:
    """RUN_DIR/records/intervals.csv: the intervals a callback used, rows (name, k, start, end)."""
    path = Path(run_dir) / "records" / "intervals.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    edges = [int(e) for e in edges]
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(("name", "k", "start", "end"))
        w.writerows((name, k, edges[k], edges[k + 1]) for k in range(len(edges) - 1))
